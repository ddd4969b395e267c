"""API keys over gRPC and HTTP against the real server: refusals, rotation without a
restart, per-key run and spend limits, and the key id in logs, metrics and traces."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc
from rlm_service.auth import RELOAD_CHECK_SECONDS, digest_of
from rlm_service.server import Server
from rlm_service.telemetry.logs import CloudLoggingFormatter
from rlm_service.telemetry.tracing import setup_tracing, shutdown_tracing
from tests.conftest import repl
from tests.fakes.gemini import FakeGemini

ALICE, BOB, CAROL = "alice-secret-key-1", "bob-secret-key-2", "carol-secret-key-3"
DAVE = "dave-secret-key-4"
# Priced so one small run costs about a dollar: more than bob may spend per window.
PRICES = {"fake-root": {"input": 1500.0, "output": 1500.0, "cached": 0.0}}


def write_keys(path: Path, lines: list[str]) -> None:
    # Written elsewhere and renamed into place, as docs/security.md tells operators.
    tmp = path.with_suffix(".tmp")
    tmp.write_text("# id:sha256(key)\n" + "\n".join(lines) + "\n")
    os.replace(tmp, path)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    write_keys(path, [f"alice:{digest_of(ALICE)}",
                      f"bob:{digest_of(BOB)} max_runs=1",
                      f"dave:{digest_of(DAVE)} max_usd=0.5  # one run is more than that"])
    return path


@pytest.fixture
async def authed(start_server, keys_file: Path) -> Server:
    server: Server = await start_server(api_keys_file=str(keys_file),
                                        model_prices_json=PRICES)
    return server


@pytest.fixture
async def channel(authed: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{authed.port}") as ch:
        yield ch


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def complete(channel: grpc.aio.Channel, prompt: str, key: str | None,
                   **fields: object) -> rlm_pb2.CompletionResponse:
    stub = rlm_pb2_grpc.RLMServiceStub(channel)
    return await stub.Complete(make_request(prompt, "ctx", **fields),
                               metadata=bearer(key) if key else None, timeout=30)


@pytest.mark.parametrize(("metadata", "code", "needle"), [
    ((), grpc.StatusCode.UNAUTHENTICATED, "needs an API key"),
    ((("authorization", "Basic YWxpY2U6eA=="),), grpc.StatusCode.UNAUTHENTICATED, "Bearer"),
    ((("authorization", "Bearer "),), grpc.StatusCode.UNAUTHENTICATED, "Bearer"),
    (bearer("not-a-key"), grpc.StatusCode.PERMISSION_DENIED, "not valid"),
    (bearer(digest_of(ALICE)), grpc.StatusCode.PERMISSION_DENIED, "not valid"),
])
async def test_grpc_refusals(channel: grpc.aio.Channel, fake_gemini: FakeGemini,
                             metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode,
                             needle: str) -> None:
    stub = rlm_pb2_grpc.RLMServiceStub(channel)
    for call in (stub.Complete(make_request("q", "c"), metadata=metadata),
                 stub.StreamCompletion(make_request("q", "c"), metadata=metadata)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            if isinstance(call, grpc.aio.UnaryStreamCall):
                [e async for e in call]
            else:
                await call
        assert info.value.code() == code
        assert needle in (info.value.details() or "")
        assert ALICE not in (info.value.details() or "")
    assert not fake_gemini.requests


async def test_a_valid_key_runs_and_health_stays_open(channel: grpc.aio.Channel,
                                                      fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-AUTH-OK", [repl("FINAL('welcome')")])
    assert (await complete(channel, "MARK-AUTH-OK", ALICE)).answer == "welcome"
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def _list_services(channel: grpc.aio.Channel, key: str | None) -> list[str]:
    call = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
      metadata=bearer(key) if key else None, timeout=10)
    return [s.name async for r in call for s in r.list_services_response.service]


async def test_reflection_needs_a_key(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _list_services(channel, None)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "rlm.v1.RLMService" in await _list_services(channel, ALICE)


async def test_reflection_can_be_turned_off(start_server) -> None:
    server = await start_server(grpc_reflection=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _list_services(ch, None)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_keys_rotate_without_a_restart(authed: Server, channel: grpc.aio.Channel,
                                             keys_file: Path, fake_gemini: FakeGemini,
                                             caplog: pytest.LogCaptureFixture) -> None:
    fake_gemini.script("MARK-ROT", [repl("FINAL('rotated')")])
    assert (await complete(channel, "MARK-ROT", ALICE)).answer == "rotated"
    write_keys(keys_file, [f"carol:{digest_of(CAROL)}"])
    await asyncio.sleep(RELOAD_CHECK_SECONDS + 0.1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await complete(channel, "MARK-ROT", ALICE)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await complete(channel, "MARK-ROT", CAROL)).answer == "rotated"
    # A broken file keeps the keys in force (and never echoes the file's text).
    keys_file.write_text(f"carol:{CAROL}\n")
    await asyncio.sleep(RELOAD_CHECK_SECONDS + 0.1)
    assert (await complete(channel, "MARK-ROT", CAROL)).answer == "rotated"
    assert any("not reloaded" in r.getMessage() for r in caplog.records)
    assert not any(CAROL in r.getMessage() for r in caplog.records)


async def test_a_bad_keys_file_stops_start_up(start_server, tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_text("alice:raw-key-not-a-digest\n")
    with pytest.raises(ValueError, match="entry 1") as info:
        await start_server(api_keys_file=str(path))
    assert "raw-key" not in str(info.value)


async def test_keys_from_the_secret_variable(start_server, fake_gemini: FakeGemini) -> None:
    server = await start_server(api_keys=f"ci:{digest_of(CAROL)},other:{digest_of(BOB)}")
    fake_gemini.script("MARK-SECRET", [repl("FINAL('from env')")])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        assert (await complete(ch, "MARK-SECRET", CAROL)).answer == "from env"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await complete(ch, "MARK-SECRET", ALICE)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_per_key_concurrent_runs(channel: grpc.aio.Channel,
                                       fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-SLOW", [repl("import time; time.sleep(1.5); FINAL('slow')")])
    fake_gemini.script("MARK-FAST", [repl("FINAL('fast')")])
    first = asyncio.create_task(complete(channel, "MARK-SLOW", BOB))
    for _ in range(200):
        if fake_gemini.requests:
            break
        await asyncio.sleep(0.02)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await complete(channel, "MARK-FAST", BOB)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'bob' already has 1 runs in progress" in (info.value.details() or "")
    # Another key is not held back by bob's limit.
    assert (await complete(channel, "MARK-FAST", ALICE)).answer == "fast"
    assert (await first).answer == "slow"
    # The slot is free again once the run ended.
    assert (await complete(channel, "MARK-FAST", BOB)).answer == "fast"


async def test_per_key_spend_window(channel: grpc.aio.Channel, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-SPEND", [repl("FINAL('spent')")])
    first = await complete(channel, "MARK-SPEND", DAVE)
    assert first.final.total_usage.cost_usd >= 0.5, first.final.total_usage
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await complete(channel, "MARK-SPEND", DAVE)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'dave' has spent $" in (info.value.details() or "")
    value = REGISTRY.get_sample_value("rlm_key_cost_usd_total", {"key_id": "dave"})
    assert value is not None and value >= first.final.total_usage.cost_usd - 1e-9
    assert (await complete(channel, "MARK-SPEND", ALICE)).answer == "spent"


class _JsonLines(logging.Handler):
    """Formats at emit time, in the request's context, as production logging does."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(CloudLoggingFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def json_logs() -> Iterator[_JsonLines]:
    handler = _JsonLines()
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_key_id_in_logs_metrics_and_traces(authed: Server, channel: grpc.aio.Channel,
                                                 fake_gemini: FakeGemini,
                                                 json_logs: _JsonLines) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("rlm-auth-test", exporter=exporter)
    try:
        before = REGISTRY.get_sample_value("rlm_auth_requests_total",
                                           {"key_id": "alice", "outcome": "ok"}) or 0
        # Few calls are allowed, so the run stops on a budget and logs it.
        fake_gemini.script("MARK-TAG", [repl("print(1)"), repl("print(2)")])
        await complete(channel, "MARK-TAG", ALICE, max_llm_calls=1)
        after = REGISTRY.get_sample_value("rlm_auth_requests_total",
                                          {"key_id": "alice", "outcome": "ok"})
        assert after == before + 1
        spans = [s for s in exporter.get_finished_spans()
                 if s.attributes and s.attributes.get("rpc.method") == "Complete"]
        assert spans and spans[-1].attributes is not None
        assert spans[-1].attributes.get("rlm.api_key.id") == "alice"
    finally:
        shutdown_tracing()
    tagged = [line for line in json_logs.lines if line.get("api_key_id") == "alice"]
    assert tagged, json_logs.lines
    assert all(ALICE not in json.dumps(line) for line in json_logs.lines)


def _url(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


async def test_http_face(authed: Server, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-HTTP-AUTH", [repl("FINAL('over http')")])
    body = {"prompt": "MARK-HTTP-AUTH", "context": "c"}
    async with aiohttp.ClientSession() as http:
        for path in ("/completion", "/v1/completions:stream"):
            async with http.post(_url(authed, path), json=body) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert "API key" in (await response.json())["error"]
            async with http.post(_url(authed, path), json=body,
                                 headers={"Authorization": "Bearer wrong"}) as response:
                assert response.status == 403
        async with http.post(_url(authed, "/completion"), json=body,
                             headers={"Authorization": f"Bearer {ALICE}"}) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["response"] == "over http"
        for path in ("/healthz", "/openapi.json", "/"):
            async with http.get(_url(authed, path)) as response:
                assert response.status == 200, path


async def test_http_books_spend_and_limits_runs(authed: Server, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-HTTP-SLOW", [repl("import time; time.sleep(1.5); FINAL('slow')")])
    fake_gemini.script("MARK-HTTP-FAST", [repl("FINAL('fast')")])
    headers = {"Authorization": f"Bearer {BOB}"}
    async with aiohttp.ClientSession() as http:
        async def post(prompt: str) -> tuple[int, dict[str, object]]:
            async with http.post(_url(authed, "/completion"), headers=headers,
                                 json={"prompt": prompt, "context": "c"}) as response:
                return response.status, await response.json()

        first = asyncio.create_task(post("MARK-HTTP-SLOW"))
        for _ in range(200):
            if fake_gemini.requests:
                break
            await asyncio.sleep(0.02)
        status, body = await post("MARK-HTTP-SLOW")
        assert status == 429 and "runs in progress" in str(body["error"])
        status, body = await first
        assert status == 200
        # dave's first run costs more than his window allows: the next is refused.
        headers["Authorization"] = f"Bearer {DAVE}"
        status, body = await post("MARK-HTTP-FAST")
        assert status == 200
        status, body = await post("MARK-HTTP-FAST")
        assert status == 429 and "has spent" in str(body["error"])
