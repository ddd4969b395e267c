"""A cancel storm leaks nothing: no sandbox process, run dir, cgroup or fd outlives its run.

Runs are cancelled a random 0-30 ms after their first event, so cancels land while a
REPL starts, loads its context, is handed over by the pool, runs a block or closes.
(The 1,000-run version is ``bench/soak.py``.)
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from pathlib import Path

import grpc
import pytest

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from tests.conftest import StartServer, repl
from tests.fakes.gemini import FakeGemini

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]

RUNS = 150
CONCURRENCY = 12
POOL = 2


def processes_under(root: Path) -> dict[int, str]:
    """Live processes whose command line names a path under ``root`` (every REPL's
    bwrap, its init and its interpreter name their run directory or socket)."""
    found = {}
    needle = str(root).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if needle in cmd:
                found[int(entry)] = cmd.replace(b"\0", b" ").decode(errors="replace")
    return found


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle(check: object, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check() and asyncio.get_running_loop().time() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.05)


async def one_run(stub: rlm_pb2_grpc.RLMServiceStub, marker: str, rng: random.Random) -> str:
    call = stub.StreamCompletion(make_request(f"{marker} go", "c" * rng.choice((10, 200_000))))
    try:
        async for _ in call:
            await asyncio.sleep(rng.uniform(0, 0.03))
            call.cancel()
            break
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "cancelled"


async def test_cancel_storm_leaves_nothing(start_server: StartServer, fake_gemini: FakeGemini,
                                           tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    server = await start_server(runtime_dir=str(runtime), sandbox_pool_size=POOL,
                                sandbox_pool_max=POOL)
    marker = f"STORM-{uuid.uuid4().hex}"
    fake_gemini.script(marker, [
        repl("x = sum(range(300_000))\nprint(llm_query('hi'), len(context))"),
        repl("FINAL('done')"),
    ])
    rng = random.Random(1234)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = rlm_pb2_grpc.RLMServiceStub(channel)
        await one_run(stub, marker, rng)  # warm: channel, pool and imports
        await settle(lambda: len(processes_under(runtime / "runs")) <= 3 * POOL)
        fds_before = open_fds()
        gate = asyncio.Semaphore(CONCURRENCY)

        async def gated() -> str:
            async with gate:
                return await one_run(stub, marker, rng)

        outcomes = await asyncio.gather(*(gated() for _ in range(RUNS)))
        assert set(outcomes) <= {"cancelled", "CANCELLED"}, outcomes

        def quiet() -> bool:
            dirs = {p.name for p in (runtime / "runs").iterdir()}
            return len(dirs) <= POOL and all(
                any(d in cmd for d in dirs) for cmd in processes_under(runtime / "runs").values())

        await settle(quiet)
        dirs = sorted(p.name for p in (runtime / "runs").iterdir())
        # Only the pool's idle REPLs remain, each with its own run dir.
        assert len(dirs) <= POOL, dirs
        strays = {pid: cmd for pid, cmd in processes_under(runtime / "runs").items()
                  if not any(d in cmd for d in dirs)}
        assert not strays, strays
        await settle(lambda: open_fds() <= fds_before + 4)
        assert open_fds() <= fds_before + 4, (fds_before, os.listdir("/proc/self/fd"))
    await server.stop(grace=0)
    await settle(lambda: not processes_under(runtime))
    assert not processes_under(runtime)
    assert not list((runtime / "runs").iterdir()) if (runtime / "runs").exists() else True
    cgroups = [p for p in Path("/sys/fs/cgroup").rglob(f"rlm-{os.getpid()}")]
    assert not cgroups, cgroups
