"""Property-based fuzzing of CompletionRequest through a real channel: random bytes,
mutated real messages and random valid-ish messages. Whatever arrives, the answer is
a deliberate status (never UNKNOWN or INTERNAL), nothing logs an ERROR, and the server
stays healthy."""

from __future__ import annotations

import math
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlm_client import make_request
from rlm_service.server import Server
from tests.edge._support import COMPLETE, STREAM, call_raw, noisy_records

# Statuses a request may deliberately end with; UNKNOWN and INTERNAL mean a crash.
ALLOWED = {None, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED,
           grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

json_leaf = (st.none() | st.booleans() | st.text(max_size=20)
             | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**6, 10**6))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=30)
model_name = st.sampled_from(["", "fake-root", "fake-sub", "a/../../x", "x" * 200, "m//n",
                              "models/fake-root", "bad name", "ü"])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A serialized CompletionRequest with field values drawn across their whole range."""
    request = make_request(
        draw(st.text(max_size=50)), draw(json_value),
        max_iterations=draw(st.integers(-5, 3)),
        max_depth=draw(st.integers(-1, 6)),
        max_llm_calls=draw(st.integers(-2, 20_000)),
        max_total_tokens=draw(st.integers(-2, 2**40)),
        max_cost_usd=draw(st.floats(allow_nan=True, allow_infinity=True)),
        timeout_seconds=draw(st.floats(-1, 1e7) | st.just(math.nan)) if draw(st.booleans()) else 5.0,
        root_model=draw(model_name), sub_model=draw(model_name))
    if draw(st.booleans()):
        request.root_options.temperature = draw(st.floats(allow_nan=True, allow_infinity=True))
    if draw(st.booleans()):
        request.sub_options.thinking_budget = draw(st.integers(-(2**31), 2**31 - 1))
    return request.SerializeToString()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(requests()))
    for _ in range(draw(st.integers(1, 4))):
        if raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw)


@pytest.fixture
async def fuzz_server(start_server) -> Server:
    # One cheap turn per valid run: the fake's default reply has no answer, so a run
    # is one turn plus the forced final call.
    server: Server = await start_server(default_max_iterations=1, max_iterations_limit=2,
                                        max_timeout_seconds=10)
    return server


async def _assert_healthy(server: Server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="rlm.v1.RLMService"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def _fuzz_one(server: Server, raw: bytes, method: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        error = await call_raw(channel, method, raw, timeout=20)
    code = error.code() if error is not None else None
    assert code in ALLOWED, (code, error.details() if error else "", raw[:200])
    if error is not None:
        assert "Traceback" not in (error.details() or "")


@FUZZ
@given(raw=st.binary(max_size=300), stream=st.booleans())
async def test_random_bytes(fuzz_server: Server, raw: bytes, stream: bool,
                            caplog: pytest.LogCaptureFixture) -> None:
    await _fuzz_one(fuzz_server, raw, STREAM if stream else COMPLETE)
    assert not noisy_records(caplog.records)


@FUZZ
@given(raw=mutated())
async def test_mutated_messages(fuzz_server: Server, raw: bytes,
                                caplog: pytest.LogCaptureFixture) -> None:
    await _fuzz_one(fuzz_server, raw, STREAM)
    assert not noisy_records(caplog.records)


@FUZZ
@given(raw=requests())
async def test_valid_ish_messages(fuzz_server: Server, raw: bytes,
                                  caplog: pytest.LogCaptureFixture) -> None:
    await _fuzz_one(fuzz_server, raw, COMPLETE)
    assert not noisy_records(caplog.records)


async def test_server_is_healthy_after_fuzzing(fuzz_server: Server) -> None:
    # The properties above share a server per test; here all three kinds hit one.
    for raw in (b"\x0a\xff", b"\x12\x02\x19\x00", make_request("", None).SerializeToString()):
        await _fuzz_one(fuzz_server, raw, STREAM)
    await _assert_healthy(fuzz_server)


@FUZZ
@given(body=st.dictionaries(
    st.sampled_from(["prompt", "context", "max_iterations", "max_llm_calls", "max_cost_usd",
                     "root_model", "root_options", "timeout_seconds", "extra"]),
    json_value, max_size=6))
async def test_http_bodies(fuzz_server: Server, body: dict[str, Any],
                           caplog: pytest.LogCaptureFixture) -> None:
    import json

    data = json.dumps(body, allow_nan=True).encode()
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{fuzz_server.http_port}/completion", data=data,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=20)) as response:
        text = await response.text()
        assert response.status in (200, 400, 429, 504), (response.status, text, body)
        if response.status != 200:
            assert "Traceback" not in text
    assert not noisy_records(caplog.records)
