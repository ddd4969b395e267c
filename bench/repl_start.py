"""REPL start-up CPU: what one sandboxed REPL costs the machine, per run.

Runs one-turn runs one after another against an in-process server with no REPL pool
(every run starts its own REPL) and the fake Gemini API at latency 0. Reports, per
run, the CPU of the REPL's processes (bubblewrap, the cgroup join and the guest
Python) and the CPU of the server process itself (the run, the spawn, the fake), each
as the median of batches. The bench moves itself into a cgroup of its own and reads
its CPU accounting, minus ``RUSAGE_SELF``: ``RUSAGE_CHILDREN`` misses REPL processes
that are killed rather than reaped by their parent. Two trajectories: a run whose code calls no model, and one that makes a
single ``llm_query`` (which loads the guest's gRPC client).

Usage: ``.venv/bin/python -m bench.repl_start [-n 40] [--batch 5] [--json out.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from rlm_service.server import Server
from tests.conftest import make_settings, repl
from tests.fakes.gemini import FakeGemini

TARGET_CPU_MS = 40.0
TRAJECTORIES = {
    "no sub-call": "FINAL(len(context))",
    "one llm_query": "FINAL(llm_query('x'))",
}


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime + r.ru_stime) * 1000


class CpuGroup:
    """A cgroup holding this process and everything it starts, for its CPU total."""

    def __init__(self) -> None:
        v1 = Path("/sys/fs/cgroup/cpuacct")
        self.v1 = v1.is_dir()
        parent = v1 if self.v1 else Path("/sys/fs/cgroup") / Path(
            Path("/proc/self/cgroup").read_text().split("::", 1)[1].strip()).relative_to("/")
        self.parent = parent
        self.path = parent / f"rlm-bench-{os.getpid()}"

    def __enter__(self) -> CpuGroup:
        self.path.mkdir()
        (self.path / "cgroup.procs").write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc: object) -> None:
        (self.parent / "cgroup.procs").write_text(str(os.getpid()))
        self.path.rmdir()

    def ms(self) -> float:
        if self.v1:
            return int((self.path / "cpuacct.usage").read_text()) / 1e6
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e3


async def measure(fake: FakeGemini, group: CpuGroup, code: str, runs: int, batch: int) -> dict[str, Any]:
    server = Server(make_settings(fake, sandbox_pool_size=0, sandbox_pool_max=0))
    await server.start()
    children: list[float] = []
    own: list[float] = []
    wall: list[float] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = rlm_pb2_grpc.RLMServiceStub(channel)
            marker = f"BENCH-START-{uuid.uuid4().hex}"
            fake.script(marker, [repl(code)])
            await stub.Complete(make_request(f"{marker} go", "ctx"))  # warm up
            for _ in range(max(1, runs // batch)):
                c0, s0, t0 = group.ms(), _self_cpu(), time.perf_counter()
                for _ in range(batch):
                    await stub.Complete(make_request(f"{marker} go", "ctx"))
                # The REPL is closed (and reaped) in the run's teardown, which may end
                # just after the reply: wait until no REPL is left.
                while server.sandbox is not None and list(
                        (server.sandbox.runtime_dir / "runs").iterdir()):
                    await asyncio.sleep(0.005)
                mine = _self_cpu() - s0
                children.append((group.ms() - c0 - mine) / batch)
                own.append(mine / batch)
                wall.append((time.perf_counter() - t0) * 1000 / batch)
    finally:
        await server.stop(grace=0)
    return {"repl_cpu_ms": statistics.median(children),
            "repl_cpu_ms_min": min(children),
            "server_cpu_ms": statistics.median(own),
            "wall_ms": statistics.median(wall), "runs": len(children) * batch}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=40, help="runs per trajectory")
    parser.add_argument("--batch", type=int, default=5, help="runs per CPU sample")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    with CpuGroup() as group, FakeGemini() as fake:
        for name, code in TRAJECTORIES.items():
            results[name] = r = await measure(fake, group, code, args.n, args.batch)
            print(f"{name:>14}: REPL CPU {r['repl_cpu_ms']:6.1f} ms (min "
                  f"{r['repl_cpu_ms_min']:.1f}) | server CPU {r['server_cpu_ms']:6.1f} ms | "
                  f"wall {r['wall_ms']:6.1f} ms | {r['runs']} runs")
    results["load_after"] = os.getloadavg()
    r = results["no sub-call"]
    verdict = "meets" if r["repl_cpu_ms"] <= TARGET_CPU_MS else "misses"
    print(f"REPL start {r['repl_cpu_ms']:.1f} ms CPU {verdict} the {TARGET_CPU_MS:.0f} ms "
          f"target; load {results['load_before'][0]:.1f} -> {results['load_after'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
