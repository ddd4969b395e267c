"""Server-side spend ceilings: defaults for requests that set no caps, limits no request
may pass (refused like max_iterations), and a run that loops on llm_query is stopped."""

from __future__ import annotations

import math

import aiohttp
import grpc
import pytest
from pydantic import ValidationError

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc
from rlm_service.server import Server
from tests.conftest import collect, final_of, make_settings, of_kind, repl
from tests.fakes.gemini import FakeGemini

CEILINGS = {"default_max_llm_calls": 6, "max_llm_calls_limit": 50,
            "default_max_total_tokens": 100_000, "max_total_tokens_limit": 1_000_000,
            "default_max_cost_usd": 1.5, "max_cost_usd_limit": 10.0}


@pytest.fixture
async def capped(start_server) -> Server:
    server: Server = await start_server(**CEILINGS)
    return server


async def _limits(server: Server, fake: FakeGemini, marker: str,
                  **fields: object) -> rlm_pb2.Limits:
    fake.script(marker, [repl("FINAL('ok')")])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        events = await collect(rlm_pb2_grpc.RLMServiceStub(channel), marker, "c", **fields)
    assert final_of(events).answer == "ok"
    [started] = of_kind(events, "run_started")
    limits: rlm_pb2.Limits = started.limits
    return limits


async def test_defaults_apply_when_the_request_sets_no_caps(capped: Server,
                                                            fake_gemini: FakeGemini) -> None:
    limits = await _limits(capped, fake_gemini, "MARK-DEFAULTS")
    assert (limits.max_llm_calls, limits.max_total_tokens, limits.max_cost_usd) == (
        6, 100_000, 1.5)


async def test_a_request_may_lower_or_raise_within_the_limit(capped: Server,
                                                             fake_gemini: FakeGemini) -> None:
    lower = await _limits(capped, fake_gemini, "MARK-LOWER", max_llm_calls=2,
                          max_total_tokens=5_000, max_cost_usd=0.25)
    assert (lower.max_llm_calls, lower.max_total_tokens, lower.max_cost_usd) == (2, 5_000, 0.25)
    upper = await _limits(capped, fake_gemini, "MARK-UPPER", max_llm_calls=50,
                          max_total_tokens=1_000_000, max_cost_usd=10)
    assert (upper.max_llm_calls, upper.max_total_tokens, upper.max_cost_usd) == (
        50, 1_000_000, 10)


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("max_llm_calls", 51, "max_llm_calls may be at most 50 on this server (MAX_LLM_CALLS_LIMIT)"),
    ("max_total_tokens", 1_000_001, "max_total_tokens may be at most 1e+06"),
    ("max_cost_usd", 10.01, "max_cost_usd may be at most 10 on this server (MAX_COST_USD_LIMIT)"),
    ("max_cost_usd", float("inf"), "max_cost_usd must be a finite number"),
    ("max_llm_calls", -1, "max_llm_calls must be a finite number >= 0"),
])
async def test_past_the_limit_is_refused(capped: Server, fake_gemini: FakeGemini, field: str,
                                         value: float, needle: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{capped.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rlm_pb2_grpc.RLMServiceStub(channel).Complete(
                make_request("q", "c", **{field: value}))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (info.value.details() or "")
    if math.isfinite(value):  # JSON has no Infinity
        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{capped.http_port}/completion",
                json={"prompt": "q", field: value}) as response:
            assert response.status == 400
            assert needle in (await response.json())["error"]
    assert not fake_gemini.requests


async def test_an_endless_llm_query_loop_stops_at_the_default(capped: Server,
                                                              fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-LOOP", [repl("while True:\n    llm_query('again')")])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{capped.port}") as channel:
        events = await collect(rlm_pb2_grpc.RLMServiceStub(channel), "MARK-LOOP", "c")
    final = final_of(events)
    assert final.stop_reason == rlm_pb2.STOP_REASON_MAX_LLM_CALLS
    assert final.total_usage.calls <= 6
    assert len(fake_gemini.requests) <= 6


async def test_a_zero_limit_means_no_ceiling(start_server, fake_gemini: FakeGemini) -> None:
    server = await start_server(max_llm_calls_limit=0, default_max_llm_calls=0)
    limits = await _limits(server, fake_gemini, "MARK-NOCAP", max_llm_calls=2_000_000_000)
    assert limits.max_llm_calls == 2_000_000_000
    limits = await _limits(server, fake_gemini, "MARK-NOCAP-DEFAULT")
    assert limits.max_llm_calls == 0  # 0 = no cap in the ledger


@pytest.mark.parametrize("overrides", [
    {"default_max_llm_calls": 11, "max_llm_calls_limit": 10},
    {"default_max_cost_usd": 0, "max_cost_usd_limit": 10},
    {"default_max_total_tokens": -1},
    {"max_cost_usd_limit": float("nan")},
])
def test_inconsistent_ceiling_settings_fail_at_start(fake_gemini: FakeGemini,
                                                     overrides: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        make_settings(fake_gemini, **overrides)
