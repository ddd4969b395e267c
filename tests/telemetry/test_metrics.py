"""The metrics endpoint, the metric names, and the dashboard built on them."""

from __future__ import annotations

import json
import re
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm_service.telemetry import metrics, observe_model_call, start_metrics_server
from rlm_service.telemetry.metrics import MetricsServer
from tests.dashboard import dashboard_queries, metric_names

pytestmark = pytest.mark.timeout(30)

EXPECTED = {
    "grpc_server_started_total": "counter",
    "grpc_server_handled_total": "counter",
    "grpc_server_handling_seconds": "histogram",
    "grpc_server_msg_received_total": "counter",
    "grpc_server_msg_sent_total": "counter",
    "rlm_requests_total": "counter",
    "rlm_request_duration_seconds": "histogram",
    "rlm_request_iterations": "histogram",
    "rlm_model_calls_total": "counter",
    "rlm_model_call_duration_seconds": "histogram",
    "rlm_tokens_total": "counter",
    "rlm_cost_usd_total": "counter",
    "rlm_repl_blocks_total": "counter",
    "rlm_repl_block_duration_seconds": "histogram",
    "rlm_active_requests": "gauge",
    "rlm_sandbox_pool_idle": "gauge",
    "rlm_sandbox_busy": "gauge",
    "rlm_run_queue_depth": "gauge",
    "rlm_run_rejections_total": "counter",
    "rlm_budget_stops_total": "counter",
    "rlm_model_retries_total": "counter",
}


@pytest.fixture
def metrics_server() -> Iterator[MetricsServer]:
    server = start_metrics_server("127.0.0.1", 0)
    try:
        yield server
    finally:
        server.close()


def scrape(server: MetricsServer) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        body: bytes = resp.read()
        return body.decode()


def metrics_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "prometheus-metrics"]


def exposed_families(text: str) -> dict[str, str]:
    """Family name -> type, from the ``# TYPE`` lines (``# HELP`` must match).

    In the text format counter families are named with their ``_total``.
    """
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    helps = set(re.findall(r"^# HELP (\S+) ", text, re.M))
    assert set(types) <= helps
    return types


def test_scrape_has_every_metric(metrics_server: MetricsServer) -> None:
    assert metrics_server.port > 0 and metrics_server.running
    types = exposed_families(scrape(metrics_server))
    for name, kind in EXPECTED.items():
        assert types.get(name) == kind, name


def test_close_frees_port_and_thread() -> None:
    server = start_metrics_server("[::1]" if socket.has_ipv6 else "127.0.0.1", 0)
    port, threads = server.port, metrics_threads()
    server.close()
    server.close()  # idempotent
    assert len(metrics_threads()) == len(threads) - 1
    assert not server.running
    with socket.socket(socket.AF_INET6 if server.host == "::1" else socket.AF_INET) as s:
        assert s.connect_ex((server.host, port)) != 0
    # The port is free again: binding it succeeds.
    again = start_metrics_server(server.host, port)
    try:
        assert again.port == port
    finally:
        again.close()


def test_observe_model_call_and_labels(metrics_server: MetricsServer) -> None:
    def value(name: str, labels: dict[str, str]) -> float:
        from prometheus_client import REGISTRY

        return REGISTRY.get_sample_value(name, labels) or 0.0

    labels = {"model": "test-model-x"}
    before_calls = value("rlm_model_calls_total", {**labels, "depth": "1", "outcome": "ok"})
    before_tokens = value("rlm_tokens_total", {**labels, "kind": "thinking"})
    before_cost = value("rlm_cost_usd_total", labels)
    observe_model_call(
        "test-model-x", 1, "ok", 0.25, prompt_tokens=10, thinking_tokens=7, cost_usd=0.5
    )
    assert value("rlm_model_calls_total", {**labels, "depth": "1", "outcome": "ok"}) == (
        before_calls + 1
    )
    assert value("rlm_tokens_total", {**labels, "kind": "thinking"}) == before_tokens + 7
    assert value("rlm_cost_usd_total", labels) == before_cost + 0.5
    text = scrape(metrics_server)
    assert 'rlm_model_call_duration_seconds_bucket{le="0.25",model="test-model-x"}' in text
    # Fixed outcome series exist before the first run finishes.
    for outcome in metrics.REQUEST_OUTCOMES:
        assert f'rlm_requests_total{{outcome="{outcome}"}}' in text
    # Runs up to Cloud Run's one-hour request limit stay inside the buckets.
    assert 'rlm_request_duration_seconds_bucket{le="3600.0"}' in text


def test_metric_name_parser() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(foo_bucket{a="x{y}"}[$__rate_interval])))'
        " / on(job) group_left bar_total offset 5m * 3600"
    )
    assert metric_names(expr) == {"foo_bucket", "bar_total"}
    assert metric_names('label_values(baz_total{x="1"}, grpc_method)') == {"baz_total"}


def test_dashboard_uses_only_exposed_metrics(
    repo_root: Path, metrics_server: MetricsServer
) -> None:
    types = exposed_families(scrape(metrics_server))
    allowed: set[str] = set()
    for family, kind in types.items():
        if kind == "counter":
            allowed.add(family if family.endswith("_total") else f"{family}_total")
        elif kind == "histogram":
            allowed |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
        else:
            allowed.add(family)
    ours = {n for n in allowed if n.startswith(("rlm_", "grpc_server_"))}

    exprs = dashboard_queries(repo_root / "deploy/grafana/rlm-dashboard.json")
    assert len(exprs) >= 20
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= ours, (expr, names - ours)
        used |= names
    # Every metric family the service exports appears on the dashboard.
    for name, kind in EXPECTED.items():
        stem = name if kind != "histogram" else f"{name}_bucket"
        assert stem in used or name in used, name


def test_dashboard_shape(repo_root: Path) -> None:
    dash = json.loads((repo_root / "deploy/grafana/rlm-dashboard.json").read_text())
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    exprs = " ".join(dashboard_queries(repo_root / "deploy/grafana/rlm-dashboard.json"))
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(grpc_server_handling" in exprs
        assert f"histogram_quantile({quantile}, sum by (le) (rate(rlm_request_duration" in exprs
