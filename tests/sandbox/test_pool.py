"""The REPL pool grows ahead of a burst of arrivals and shrinks back when idle."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid

import grpc
import pytest

from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from tests.conftest import StartServer, collect, final_of, repl
from tests.fakes.gemini import FakeGemini
from tests.support.procs import guest_pids, settled

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]


def idle_gauge(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("rlm_sandbox_pool_idle "):
                return float(line.split()[1])
    raise AssertionError("no rlm_sandbox_pool_idle gauge")


async def test_pool_grows_with_arrivals_and_shrinks_when_idle(
        start_server: StartServer, fake_gemini: FakeGemini) -> None:
    server = await start_server(sandbox_pool_size=1, sandbox_pool_max=5,
                                sandbox_pool_idle_seconds=1.0, metrics_port=0)
    marker = f"POOL-{uuid.uuid4().hex}"
    fake_gemini.script(marker, [repl("FINAL(str(len(context)))")])
    seen = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = rlm_pb2_grpc.RLMServiceStub(channel)
        for _ in range(4):  # waves of arrivals, a few a second
            events = await asyncio.gather(*(collect(stub, f"{marker} go", "abc")
                                            for _ in range(6)))
            assert {final_of(e).answer for e in events} == {"3"}
            await asyncio.sleep(0.3)
            seen.append(await asyncio.to_thread(idle_gauge, server.metrics_port))
    # The pool pre-started more than its floor of 1 while runs kept coming ...
    deadline = asyncio.get_running_loop().time() + 5
    while max(seen) <= 1 and asyncio.get_running_loop().time() < deadline:
        seen.append(await asyncio.to_thread(idle_gauge, server.metrics_port))
        await asyncio.sleep(0.2)
    assert 1 < max(seen) <= 5, seen
    # ... and, with no arrivals, closes what sits idle beyond it.
    deadline = asyncio.get_running_loop().time() + 20
    while (idle := await asyncio.to_thread(idle_gauge, server.metrics_port)) != 1:
        assert asyncio.get_running_loop().time() < deadline, idle
        await asyncio.sleep(0.2)
    assert idle == 1


async def test_a_repl_that_finishes_starting_after_close_is_closed_too(
        start_server: StartServer) -> None:
    server = await start_server(sandbox_pool_size=0, sandbox_pool_max=0)
    pool, sandbox = server._pool, server.sandbox
    assert pool is not None and sandbox is not None
    acquiring = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)  # a REPL start takes tens of ms: it is under way now
    assert not acquiring.done()
    await pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        await acquiring
    # Nothing of it is left: no guest process, no run dir, no REPL cgroup.
    assert await settled(lambda: not guest_pids(sandbox.runtime_dir), 5)
    assert not list((sandbox.runtime_dir / "runs").iterdir())
    if sandbox.cgroups is not None:
        assert not [p for b in sandbox.cgroups.tree.bases for p in b.glob("repl-*")]
