"""Per-REPL cgroups: one memory budget for all of a REPL's processes, and nothing left after."""

from __future__ import annotations

import asyncio
import os
import textwrap
import uuid
from pathlib import Path

import grpc
import pytest

from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from rlm_service.server import Server
from tests.conftest import StartServer, collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

MEMORY_MB = 1024


def service_cgroups(server: Server) -> list[Path]:
    """The cgroup folders of this server's sandbox: not those of other servers that ran
    earlier in the same test process and share its pid."""
    assert server.sandbox is not None and server.sandbox.cgroups is not None
    return [p for p in server.sandbox.cgroups.tree.bases if p.is_dir()]


# Four children each touch 320 MB: every one is inside RLIMIT_AS (1 GiB a process, the
# interpreter's own mappings included), but together they pass the REPL's 1 GiB cgroup,
# so the kernel kills at least one. A child refused by RLIMIT_AS exits 3 instead.
HOG = textwrap.dedent("""
    import os, signal, time
    kids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                block = bytearray(320 * 1024 * 1024)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(3)
            except MemoryError:
                code = 3
            finally:
                os._exit(code)
        kids.append(pid)
    codes = [os.waitpid(k, 0)[1] for k in kids]
    killed = sum(os.WIFSIGNALED(c) and os.WTERMSIG(c) == signal.SIGKILL for c in codes)
    print('killed', killed, 'of', len(kids), 'codes', codes)
""")


async def test_one_memory_budget_for_all_processes_and_cleanup(
        start_server: StartServer, fake_gemini: FakeGemini) -> None:
    server = await start_server(sandbox_memory_mb=MEMORY_MB, sandbox_pool_size=0,
                                sandbox_pool_max=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = rlm_pb2_grpc.RLMServiceStub(channel)
        marker = f"CG-{uuid.uuid4().hex}"
        fake_gemini.script(marker, [repl(HOG), repl("FINAL('still here')")])
        events = await asyncio.wait_for(collect(stub, f"{marker} go", "ctx"), 60)
    if "cgroups" not in events[0].run_started.sandbox_layers:
        # Root on a host with a writable cgroup tree (CI) must get the layer.
        assert os.geteuid() != 0 or (not os.access("/sys/fs/cgroup", os.W_OK) and not any(
            os.access(p, os.W_OK) for p in Path("/sys/fs/cgroup").iterdir()))
        pytest.skip("this host lets the service create no cgroups (not root, or read-only)")
    block = of_kind(events, "code_block")[0]
    out = block.stdout
    assert "killed" in out, block
    killed = int(out.split("killed", 1)[1].split()[0])
    assert killed >= 1, out
    assert final_of(events).answer == "still here"
    bases = service_cgroups(server)
    assert bases, "the service made no cgroup folder"
    # The run is over: its REPL's cgroups are gone (only the base folders remain).
    deadline = asyncio.get_running_loop().time() + 5
    while left := [p for base in bases for p in base.glob("repl-*")]:
        assert asyncio.get_running_loop().time() < deadline, left
        await asyncio.sleep(0.05)
    await server.stop(grace=0)
    assert not any(p.exists() for p in bases)


async def test_two_services_in_one_process_keep_their_own_cgroups(
        start_server: StartServer, fake_gemini: FakeGemini) -> None:
    first = await start_server(sandbox_pool_size=1)
    second = await start_server(sandbox_pool_size=1)
    await first.stop(grace=0)
    marker = f"CG2-{uuid.uuid4().hex}"
    fake_gemini.script(marker, [repl("FINAL(str(len(context)))")])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        events = await asyncio.wait_for(
            collect(rlm_pb2_grpc.RLMServiceStub(channel), f"{marker} go", "abcd"), 60)
    assert final_of(events).answer == "4"
