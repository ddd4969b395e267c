"""Prometheus metrics of the service, all on prometheus_client's default REGISTRY.

Counters are declared without the ``_total`` suffix because prometheus_client
appends it on exposition; the names below are therefore the exposed names minus
``_total``. The ``grpc_server_*`` family follows go-grpc-prometheus so existing
dashboards and alerts written for it work unchanged.

Label values must stay low-cardinality: model names, fixed outcome words and
depths only, never request ids or prompts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Final, Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

__all__ = [
    "GRPC_LABELS",
    "REQUEST_OUTCOMES",
    "MetricsServer",
    "RequestOutcome",
    "grpc_server_handled",
    "grpc_server_handling_seconds",
    "grpc_server_msg_received",
    "grpc_server_msg_sent",
    "grpc_server_started",
    "observe_model_call",
    "rlm_active_requests",
    "rlm_budget_stops",
    "rlm_cost_usd",
    "rlm_http_request_duration_seconds",
    "rlm_http_requests",
    "rlm_model_call_duration_seconds",
    "rlm_model_calls",
    "rlm_model_retries",
    "rlm_repl_block_duration_seconds",
    "rlm_repl_blocks",
    "rlm_request_duration_seconds",
    "rlm_request_iterations",
    "rlm_requests",
    "rlm_run_queue_depth",
    "rlm_run_rejections",
    "rlm_sandbox_busy",
    "rlm_sandbox_escaped_processes",
    "rlm_sandbox_pool_idle",
    "rlm_tokens",
    "start_metrics_server",
]

RequestOutcome = Literal["answered", "forced", "budget", "error", "cancelled", "shutdown"]
REQUEST_OUTCOMES: Final[tuple[RequestOutcome, ...]] = (
    "answered",
    "forced",
    "budget",
    "error",
    "cancelled",
    "shutdown",
)
REPL_OUTCOMES: Final[tuple[str, ...]] = ("ok", "error", "timeout")

GRPC_LABELS: Final[tuple[str, ...]] = ("grpc_type", "grpc_service", "grpc_method")

# A streaming completion can legitimately run for up to an hour (Cloud Run's
# request timeout), so the RPC and request buckets reach 3600 s; the low end keeps
# resolution for health checks and fast failures.
_RPC_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
)  # fmt: skip
_REQUEST_BUCKETS: Final = (
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0,
    1200.0, 1800.0, 2700.0, 3600.0,
)  # fmt: skip
_ITERATION_BUCKETS: Final = (1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200)
_MODEL_CALL_BUCKETS: Final = (
    0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_REPL_BUCKETS: Final = (
    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

# --- gRPC server (recorded by telemetry/rpc_metrics.py) ------------------------
grpc_server_started = Counter(
    "grpc_server_started",
    "RPCs started on the server.",
    GRPC_LABELS,
)
grpc_server_handled = Counter(
    "grpc_server_handled",
    "RPCs completed on the server, by gRPC status code.",
    (*GRPC_LABELS, "grpc_code"),
)
grpc_server_handling_seconds = Histogram(
    "grpc_server_handling_seconds",
    "Time from the handler starting to its completion, in seconds.",
    GRPC_LABELS,
    buckets=_RPC_BUCKETS,
)
grpc_server_msg_received = Counter(
    "grpc_server_msg_received",
    "Request messages received by the server.",
    GRPC_LABELS,
)
grpc_server_msg_sent = Counter(
    "grpc_server_msg_sent",
    "Response messages sent by the server.",
    GRPC_LABELS,
)

# --- HTTP face (the Go service's names, so its Grafana dashboard keeps working) --
rlm_http_requests = Counter(
    "rlm_http_requests",
    "HTTP requests on the HTTP face by method, route template and status code.",
    ("method", "path", "code"),
)
rlm_http_request_duration_seconds = Histogram(
    "rlm_http_request_duration_seconds",
    "Time to answer an HTTP request (a whole stream for SSE), in seconds.",
    ("method", "path"),
    buckets=_RPC_BUCKETS,
)

# --- requests (one client request: its runs at every depth together) -------
rlm_requests = Counter(
    "rlm_requests",
    "Finished requests by outcome: answered, forced, budget, error, cancelled, shutdown. "
    "One per request, however many runs (depths) it used.",
    ("outcome",),
)
rlm_request_duration_seconds = Histogram(
    "rlm_request_duration_seconds",
    "Wall-clock duration of requests, from arrival to the last event, in seconds.",
    buckets=_REQUEST_BUCKETS,
)
rlm_request_iterations = Histogram(
    "rlm_request_iterations",
    "Root-model turns used by a request that ended with an answer (its depth-0 run).",
    buckets=_ITERATION_BUCKETS,
)
rlm_active_requests = Gauge("rlm_active_requests", "Requests in progress.")
rlm_run_queue_depth = Gauge("rlm_run_queue_depth", "Requests waiting for a run slot.")
rlm_run_rejections = Counter(
    "rlm_run_rejections",
    "Requests refused at once for want of a run slot (RESOURCE_EXHAUSTED / 429), by "
    "reason: queue_full, deadline.",
    ("reason",),
)
rlm_budget_stops = Counter(
    "rlm_budget_stops",
    "Requests stopped by a limit: max_iterations, max_llm_calls, max_total_tokens, "
    "max_cost_usd, timeout.",
    ("limit",),
)

# --- model calls ------------------------------------------------------------
rlm_model_calls = Counter(
    "rlm_model_calls",
    "Model calls by model, run depth (0 = root) and outcome (ok or an error kind).",
    ("model", "depth", "outcome"),
)
rlm_model_call_duration_seconds = Histogram(
    "rlm_model_call_duration_seconds",
    "Latency of model calls including retries, in seconds.",
    ("model",),
    buckets=_MODEL_CALL_BUCKETS,
)
rlm_tokens = Counter(
    "rlm_tokens",
    "Tokens used by model and kind: prompt, output, thinking, cached.",
    ("model", "kind"),
)
rlm_cost_usd = Counter("rlm_cost_usd", "Estimated model cost in US dollars.", ("model",))
rlm_model_retries = Counter(
    "rlm_model_retries",
    "Retried model calls by model and reason.",
    ("model", "reason"),
)

# --- REPL sandbox -----------------------------------------------------------
rlm_repl_blocks = Counter(
    "rlm_repl_blocks",
    "Code blocks executed in the REPL by outcome: ok, error, timeout.",
    ("outcome",),
)
rlm_repl_block_duration_seconds = Histogram(
    "rlm_repl_block_duration_seconds",
    "Execution time of REPL code blocks, in seconds.",
    buckets=_REPL_BUCKETS,
)
rlm_sandbox_pool_idle = Gauge("rlm_sandbox_pool_idle", "Pre-started sandboxes waiting for a run.")
rlm_sandbox_busy = Gauge("rlm_sandbox_busy", "Sandboxes currently assigned to a run.")
rlm_sandbox_escaped_processes = Counter(
    "rlm_sandbox_escaped_processes",
    "Sandbox processes found alive after their REPL was closed, and killed by the reaper.")

# --- operator tools -------------------------------------------------------------
rlm_tool_calls = Counter(
    "rlm_tool_calls",
    "HTTP tool calls made for REPL code, by tool and outcome: ok, refused (arguments, "
    "limit, allow-list), error (the endpoint failed, timed out or answered too much).",
    ("tool", "outcome"),
)
rlm_tool_call_duration_seconds = Histogram(
    "rlm_tool_call_duration_seconds",
    "Duration of HTTP tool calls that reached the endpoint, in seconds.",
    ("tool",),
    buckets=_REPL_BUCKETS,
)

# Zero-valued series for the fixed label sets make rate() and absent()-based
# alerts work before the first event of each kind.
for _request_outcome in REQUEST_OUTCOMES:
    rlm_requests.labels(outcome=_request_outcome)
for _reason in ("queue_full", "deadline"):
    rlm_run_rejections.labels(reason=_reason)
for _repl_outcome in REPL_OUTCOMES:
    rlm_repl_blocks.labels(outcome=_repl_outcome)


def observe_model_call(
    model: str,
    depth: int,
    outcome: str,
    duration_seconds: float,
    *,
    prompt_tokens: int = 0,
    output_tokens: int = 0,
    thinking_tokens: int = 0,
    cached_tokens: int = 0,
    cost_usd: float = 0.0,
) -> None:
    """Record one finished model call (all model metrics in one place)."""
    rlm_model_calls.labels(model=model, depth=str(depth), outcome=outcome).inc()
    rlm_model_call_duration_seconds.labels(model=model).observe(duration_seconds)
    for kind, count in (
        ("prompt", prompt_tokens),
        ("output", output_tokens),
        ("thinking", thinking_tokens),
        ("cached", cached_tokens),
    ):
        if count > 0:
            rlm_tokens.labels(model=model, kind=kind).inc(count)
    if cost_usd > 0:
        rlm_cost_usd.labels(model=model).inc(cost_usd)


@dataclass(eq=False)
class MetricsServer:
    """The /metrics HTTP endpoint; ``close()`` stops its thread and frees the port."""

    host: str
    port: int
    _httpd: WSGIServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _closed: bool = field(default=False, repr=False)

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        # shutdown() waits for serve_forever() to return; server_close() then
        # releases the listening socket so the port is really free.
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return not self._closed and self._thread.is_alive()


def start_metrics_server(host: str, port: int) -> MetricsServer:
    """Serve the default REGISTRY at ``http://host:port/metrics`` in a daemon thread.

    ``port`` 0 picks a free port (see ``MetricsServer.port``). ``host`` accepts
    the gRPC-style ``[::]`` spelling used by Settings.host.
    """
    addr = host.strip()
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    if not addr:
        addr = "0.0.0.0"
    httpd, thread = start_http_server(port, addr=addr, registry=REGISTRY)
    thread.name = "prometheus-metrics"
    return MetricsServer(host=addr, port=int(httpd.server_port), _httpd=httpd, _thread=thread)
