"""Backpressure: a full run queue, or a wait past the deadline, is refused at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import grpc
import pytest

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc
from rlm_service.server import Server
from tests.conftest import StartServer, collect, final_of, repl
from tests.fakes.gemini import FakeGemini


async def _busy(stub: rlm_pb2_grpc.RLMServiceStub,
                marker: str) -> asyncio.Task[list[rlm_pb2.CompletionEvent]]:
    return asyncio.create_task(collect(stub, f"{marker} go"))


async def _wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.02)


async def _metric(server: Server, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{server.metrics_port}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


async def test_a_full_queue_is_refused_at_once_with_a_retry_hint(
        start_server: StartServer, fake_gemini: FakeGemini) -> None:
    server = await start_server(max_concurrent_runs=1, max_queued_runs=1)
    fake_gemini.script("MARK-SLOW", [repl("import time\ntime.sleep(3)"), "FINAL(slow)"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = rlm_pb2_grpc.RLMServiceStub(channel)
        running = await _busy(stub, "MARK-SLOW")
        await _wait_until(lambda: server.engine is not None and len(server.engine.active) == 1)
        queued = await _busy(stub, "MARK-SLOW")
        await _wait_until(lambda: server.servicer is not None and server.servicer.slots.waiting == 1)
        assert await _metric(server, "rlm_run_queue_depth") == 1
        started = time.monotonic()
        call = stub.StreamCompletion(make_request("one too many"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [e async for e in call]
        assert time.monotonic() - started < 1.0
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at capacity" in str(info.value.details())
        trailers = dict(info.value.trailing_metadata() or ())
        assert int(trailers["retry-after"]) >= 1
        # The HTTP face says the same with 429 and Retry-After.
        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{server.http_port}/completion",
                json={"prompt": "one too many"}) as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) >= 1
            assert "at capacity" in (await response.json())["error"]
        assert await _metric(server, 'rlm_run_rejections_total{reason="queue_full"}') == 2
        # The runs admitted before still finish.
        assert final_of(await running).answer == "slow"
        assert final_of(await queued).answer == "slow"


async def test_a_wait_past_the_deadline_is_refused_at_once(
        start_server: StartServer, fake_gemini: FakeGemini) -> None:
    server = await start_server(max_concurrent_runs=1, max_queued_runs=10)
    fake_gemini.script("MARK-SLOW", [repl("import time\ntime.sleep(2)"), "FINAL(slow)"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = rlm_pb2_grpc.RLMServiceStub(channel)
        # One run finished teaches the server how long runs take (about 2 s here).
        assert final_of(await collect(stub, "MARK-SLOW first")).answer == "slow"
        running = await _busy(stub, "MARK-SLOW")
        await _wait_until(lambda: server.engine is not None and len(server.engine.active) == 1)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [e async for e in stub.StreamCompletion(make_request("in a hurry"), timeout=1.0)]
        assert time.monotonic() - started < 0.9
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "after this request's deadline" in str(info.value.details())
        # A request with time enough waits in line and runs.
        assert final_of(await collect(stub, "MARK-SLOW patient")).answer == "slow"
        await running
