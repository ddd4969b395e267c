"""The live /metrics endpoint of a real server moves by exactly what real runs did."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rlm_service.server import Server
from tests.conftest import ROOT_MODEL, SUB_MODEL, StartServer, collect, final_of, of_kind, repl
from tests.dashboard import dashboard_queries, metric_names
from tests.fakes._common import tokens_for
from tests.fakes.gemini import FakeGemini
from tests.ops.conftest import PROJECT_ROOT, samples, scrape, value
from tests.recursion import open_stub

POOL = 2
STREAM = {"grpc_service": "rlm.v1.RLMService", "grpc_method": "StreamCompletion"}


async def metrics_text(port: int) -> str:
    return await asyncio.to_thread(scrape, port)


async def test_counters_move_by_exactly_the_runs(start_server: StartServer,
                                                 fake_gemini: FakeGemini) -> None:
    server = await start_server(sandbox_pool_size=POOL)
    assert server.metrics_port > 0
    fake_gemini.thinking_tokens = 5
    fake_gemini.cached_tokens = 2
    # Run A: a raising block, then a text answer (2 root turns, 2 iterations).
    fake_gemini.script("MARK-MA", [repl("raise ValueError('boom')"), "All good.\nFINAL(fixed)"])
    # Run B: one ok block with a sub-call (1 root turn at depth 0, 1 sub call at depth 1).
    fake_gemini.script("MARK-MB", [repl("r = llm_query('sub question')\nFINAL(r)")])

    before = samples(await metrics_text(server.metrics_port))
    fake_gemini.reset_stats()
    async with open_stub(server) as stub:
        events_a = await collect(stub, "MARK-MA first", "ctx a")
        events_b = await collect(stub, "MARK-MB second", "ctx b")
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await collect(stub, "   ", "ctx")
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    final_a, final_b = final_of(events_a), final_of(events_b)
    assert final_a.answer == "fixed" and final_a.iterations == 2
    assert final_b.iterations == 1 and not final_b.forced
    blocks = of_kind(events_a, "code_block") + of_kind(events_b, "code_block")
    assert [bool(b.error) for b in blocks] == [True, False]

    after = samples(await metrics_text(server.metrics_port))

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Runs and RPCs.
    assert delta("rlm_requests_total", outcome="answered") == 2
    for outcome in ("forced", "budget", "error", "cancelled", "shutdown"):
        assert delta("rlm_requests_total", outcome=outcome) == 0, outcome
    assert delta("grpc_server_started_total", **STREAM) == 3
    assert delta("grpc_server_handled_total", **STREAM, grpc_code="OK") == 2
    assert delta("grpc_server_handled_total", **STREAM, grpc_code="INVALID_ARGUMENT") == 1
    assert delta("grpc_server_handled_total", **STREAM) == 3
    assert delta("grpc_server_handling_seconds_count", **STREAM) == 3
    assert delta("grpc_server_msg_received_total", **STREAM) == 3
    assert delta("grpc_server_msg_sent_total", **STREAM) == len(events_a) + len(events_b)
    assert delta("rlm_request_iterations_count") == 2
    assert delta("rlm_request_iterations_sum") == 3
    assert delta("rlm_request_duration_seconds_count") == 2
    assert value(after, "rlm_active_requests") == 0

    # Model calls by model and depth: A 2 root turns, B 1 root turn + 1 llm_query.
    assert delta("rlm_model_calls_total", model=ROOT_MODEL, depth="0", outcome="ok") == 3
    assert delta("rlm_model_calls_total", model=SUB_MODEL, depth="1", outcome="ok") == 1
    assert delta("rlm_model_calls_total") == 4
    assert delta("rlm_model_call_duration_seconds_count", model=ROOT_MODEL) == 3
    assert delta("rlm_model_call_duration_seconds_count", model=SUB_MODEL) == 1

    # Tokens, computed from what the fake received (its usage is deterministic) and
    # cross-checked against the usage the runs reported.
    for model in (ROOT_MODEL, SUB_MODEL):
        reqs = fake_gemini.calls_for(model)
        expected_prompt = sum(tokens_for(r.prompt_chars) for r in reqs)
        assert delta("rlm_tokens_total", model=model, kind="prompt") == expected_prompt, model
        assert delta("rlm_tokens_total", model=model, kind="thinking") == 5 * len(reqs)
        assert delta("rlm_tokens_total", model=model, kind="cached") == 2 * len(reqs)
        reported = [u.usage for f in (final_a, final_b) for u in f.usage if u.model == model]
        assert sum(u.prompt_tokens for u in reported) == expected_prompt
        assert delta("rlm_tokens_total", model=model, kind="output") == sum(
            u.output_tokens for u in reported) > 0
    assert len(fake_gemini.requests) == 4

    # REPL blocks by outcome.
    assert delta("rlm_repl_blocks_total", outcome="error") == 1
    assert delta("rlm_repl_blocks_total", outcome="ok") == 1
    assert delta("rlm_repl_blocks_total", outcome="timeout") == 0
    assert delta("rlm_repl_block_duration_seconds_count") == 2

    # The pool gauge (refreshed every second) settles at the pool size when idle.
    async def idle_gauge() -> float:
        return value(await metrics_text(server.metrics_port), "rlm_sandbox_pool_idle")

    for _ in range(60):
        idle = await idle_gauge()
        if idle == POOL:
            break
        await asyncio.sleep(0.1)
    assert idle == POOL
    assert value(await metrics_text(server.metrics_port), "rlm_sandbox_busy") == 0


# --- the dashboard only uses what the live server exposes ---------------------------------

def live_names(text: str) -> set[str]:
    """Names a query may use: each # TYPE family plus its exposition suffixes."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names |= {s.name for s in family.samples}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type in ("histogram", "summary"):
            names |= {f"{family.name}{s}" for s in ("_bucket", "_sum", "_count")}
    # The raw # TYPE lines too (prometheus_client strips _total from counter families).
    names |= set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    return names


async def test_dashboard_only_uses_live_metric_names(server: Server) -> None:
    # Labelled families without series yet still have their # TYPE line.
    text = await metrics_text(server.metrics_port)
    live = live_names(text)
    queries = dashboard_queries(PROJECT_ROOT / "deploy/grafana/rlm-dashboard.json")
    assert len(queries) >= 10
    used: set[str] = set()
    for query in queries:
        names = metric_names(query)
        assert names, query
        assert names <= live, (query, sorted(names - live))
        used |= names
    # And the panels cover the service's own metric families.
    for family in ("rlm_requests_total", "rlm_model_calls_total", "rlm_tokens_total",
                   "rlm_repl_blocks_total", "rlm_sandbox_pool_idle",
                   "grpc_server_handled_total", "rlm_request_iterations_bucket"):
        assert family in used, family
