"""The Python client picks a detached run back up after its connection drops: a
real TCP proxy between client and server is cut mid-run."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from rlm_client import AsyncRLMClient, RLMClient
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc
from tests.conftest import repl
from tests.fakes.gemini import FakeGemini
from tests.fakes.tcp_proxy import TcpProxy

STEPS = [
    repl("import time\ntime.sleep(0.3)\nn = 1\nprint('one')"),
    repl("time.sleep(0.3)\nn += 1\nprint('two')"),
    repl("FINAL(f'n={n}')"),
]


def _check(events: list[rlm_pb2.CompletionEvent], proxy: TcpProxy) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].final_answer.answer == "n=2"
    assert proxy.connections >= 2  # it did reconnect


async def test_async_client_reconnects_after_a_drop(start_server,
                                                    fake_gemini: FakeGemini) -> None:
    server = await start_server()
    fake_gemini.script("MARK-RECONNECT-A", list(STEPS))
    with TcpProxy(server.port) as proxy:
        events = []
        async with AsyncRLMClient(f"127.0.0.1:{proxy.port}") as client:
            async for event in client.stream("MARK-RECONNECT-A go", "ctx",
                                              detach_grace_seconds=20):
                events.append(event)
                if event.HasField("root_turn") and event.root_turn.iteration == 1:
                    await asyncio.to_thread(proxy.drop)
        _check(events, proxy)
    # One run, not a restarted one: three root turns in all.
    assert len([r for r in fake_gemini.requests if "MARK-RECONNECT-A" in r.first_user_text]) == 3


async def test_sync_client_reconnects_after_a_drop(start_server,
                                                   fake_gemini: FakeGemini) -> None:
    server = await start_server()
    fake_gemini.script("MARK-RECONNECT-S", list(STEPS))

    def consume(port: int, proxy: TcpProxy) -> list[rlm_pb2.CompletionEvent]:
        seen = []
        with RLMClient(f"127.0.0.1:{port}") as client:
            for event in client.stream("MARK-RECONNECT-S go", "ctx", detach_grace_seconds=20):
                seen.append(event)
                if event.HasField("root_turn") and event.root_turn.iteration == 1:
                    proxy.drop()
        return seen

    with TcpProxy(server.port) as proxy:
        events = await asyncio.to_thread(consume, proxy.port, proxy)
        _check(events, proxy)


async def test_without_grace_a_drop_is_an_error(start_server, fake_gemini: FakeGemini) -> None:
    server = await start_server()
    fake_gemini.script("MARK-RECONNECT-N", list(STEPS))
    with TcpProxy(server.port) as proxy:
        async with AsyncRLMClient(f"127.0.0.1:{proxy.port}") as client:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for event in client.stream("MARK-RECONNECT-N go", "ctx"):
                    if event.HasField("root_turn"):
                        await asyncio.to_thread(proxy.drop)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_leaving_the_stream_early_cancels_a_detachable_run(
        start_server, fake_gemini: FakeGemini) -> None:
    server = await start_server()
    fake_gemini.script("MARK-LEAVE", [repl("import time\ntime.sleep(60)\nFINAL('no')")])
    async with AsyncRLMClient(f"127.0.0.1:{server.port}") as client:
        stream = client.stream("MARK-LEAVE go", "ctx", detach_grace_seconds=60)
        started = None
        async for event in stream:
            if event.HasField("run_started"):
                started = event.run_started
            if event.HasField("root_turn"):
                break
        await stream.aclose()  # type: ignore[attr-defined]
    assert started is not None
    engine = server.engine
    assert engine is not None and not engine.active
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        info = await rlm_pb2_grpc.RLMServiceStub(channel).GetRun(
            rlm_pb2.RunRef(run_id=started.request_id, run_token=started.run_token))
    assert info.state == rlm_pb2.RUN_STATE_CANCELLED
