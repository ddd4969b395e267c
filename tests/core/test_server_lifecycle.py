"""Server start and stop: a failed start undoes itself, stop drains on an event, is
idempotent, and ``async with Server(...)`` does both."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rlm_client import make_request
from rlm_service.server import Server
from tests.fakes.gemini import FakeGemini
from tests.support.events import final_of, repl
from tests.support.procs import assert_gone, guest_pids, trees
from tests.support.servers import open_stub
from tests.support.settings import make_settings
from tests.support.subprocess_server import StartProc, port_open, runtime_dirs


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


async def test_a_failed_start_takes_down_what_it_started(fake_gemini: FakeGemini,
                                                         busy_port: int) -> None:
    # The HTTP face comes up after gRPC, the callback server and the REPL pool.
    server = Server(make_settings(fake_gemini, http_port=busy_port))
    with pytest.raises(OSError, match="address already in use"):
        await server.start()
    repls = trees(server.repl_pids())
    assert server.port and server.runtime_dir is not None
    assert not port_open(server.port)
    assert not port_open(server.metrics_port)
    assert not server.runtime_dir.exists()
    assert_gone(repls)
    await server.stop()  # nothing left to stop
    with pytest.raises(RuntimeError, match="starts once"):
        await server.start()


async def test_async_with_and_idempotent_stop(fake_gemini: FakeGemini) -> None:
    async with Server(make_settings(fake_gemini)) as server:
        assert port_open(server.port)
        repls = trees(server.repl_pids("idle"))
        assert repls
    assert not port_open(server.port)
    assert_gone(repls)
    # Again, and twice at once: each call waits for the one shutdown, which is done.
    await asyncio.gather(server.stop(), server.stop(grace=0))


async def test_stop_waits_for_a_run_only_as_long_as_it_runs(fake_gemini: FakeGemini) -> None:
    server = Server(make_settings(fake_gemini, shutdown_grace_seconds=30.0))
    await server.start()
    try:
        fake_gemini.script("MARK-DRAIN", [repl("import time\ntime.sleep(1.0)\nFINAL('done')")])
        async with open_stub(server) as stub:
            call = stub.StreamCompletion(make_request("MARK-DRAIN go", "ctx"))
            events = [await call.read()]  # run_started: the run is in flight
            engine = server.engine
            assert engine is not None and engine.active
            started = time.monotonic()
            stopping = asyncio.create_task(server.stop())
            while (event := await call.read()) is not grpc.aio.EOF:
                events.append(event)
            await stopping
            took = time.monotonic() - started
    finally:
        await server.stop(grace=0)
    assert final_of(events).answer == "done"
    # Ended by the run finishing (about 1 s), not by the 30 s grace running out.
    assert took < 10.0, took


def test_rlm_server_with_a_taken_port_exits_cleanly(server_proc: StartProc, busy_port: int,
                                                    world_tmp: Path) -> None:
    proc = server_proc(ready=False, HTTP_PORT=str(busy_port))
    assert proc.wait_exit(timeout=60) != 0
    assert any("rlm-server: could not start:" in line and "address already in use" in line
               for line in proc.stderr), proc.stderr
    assert not any("Traceback" in line for line in proc.stderr), proc.stderr
    assert not runtime_dirs(world_tmp)
    assert not guest_pids(under=world_tmp)
