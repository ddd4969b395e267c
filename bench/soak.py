"""Soak: does anything leak when runs finish, fail or are cancelled at any instant?

Runs the real ``rlm-server`` entry point as a subprocess (its own runtime dir) against
the fake Gemini API, in two phases:

* ``mixed``: N runs, 16 at a time, of which 10% are cancelled at a random point;
* ``storm``: N runs, each cancelled 0-30 ms after its first event.

After each phase it lets the server settle and reports, against the figures after the
warm-up: the server's open fds and RSS, the run dirs, sandbox processes that belong to
no run dir, and the server's ``rlm_sandbox_escaped_processes_total``. Leaks must be 0
and fds and RSS flat. ``tests/sandbox/test_cancel_storm.py`` is the short form in CI.

    .venv/bin/python -m bench.soak [--runs 1000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from tests.fakes.gemini import FakeGemini
from tests.support.procs import cmdlines

MARK = "SOAK-MARK"
POOL = 2
# Keep-alive connections to the model API and gRPC come and go with concurrency; a
# leaked REPL holds five fds (socket pair, two pipes, the seccomp memfd), so a leak
# shows well past this.
FD_SLACK = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def sandbox_processes(runs: Path) -> dict[int, str]:
    """Processes whose command line names a path under ``runs`` (every REPL's bwrap)."""
    needle = str(runs).encode()
    return {pid: cmd.decode(errors="replace") for pid, cmd in cmdlines().items()
            if needle in cmd}


def escaped(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("rlm_sandbox_escaped_processes_total "):
                return float(line.split()[1])
    return 0.0


class Snapshot:
    def __init__(self, pid: int, runs: Path, metrics_port: int) -> None:
        self.fds = len(os.listdir(f"/proc/{pid}/fd"))
        self.rss_mb = proc_status(pid, "VmRSS") / 1024
        dirs = {p.name for p in runs.iterdir()}
        self.run_dirs = len(dirs)
        self.processes = len(sandbox_processes(runs))
        self.strays = sum(not any(d in cmd for d in dirs)
                          for cmd in sandbox_processes(runs).values())
        self.escaped = escaped(metrics_port)

    def row(self) -> dict[str, Any]:
        return {"fds": self.fds, "rss_mb": round(self.rss_mb, 1), "run_dirs": self.run_dirs,
                "sandbox_processes": self.processes,
                "stray_processes": self.strays, "escaped": self.escaped}


async def one(stub: rlm_pb2_grpc.RLMServiceStub, rng: random.Random,
              cancel_after: float | None) -> str:
    # The generated stubs are typed for the sync API; this is a grpc.aio call.
    call: Any = stub.StreamCompletion(make_request(f"{MARK} go", "c" * rng.choice((10, 100_000))))
    try:
        async for _ in call:
            if cancel_after is not None:
                await asyncio.sleep(cancel_after)
                call.cancel()
                return "cancelled"
        return "done"
    except grpc.aio.AioRpcError as exc:
        return "cancelled" if exc.code() == grpc.StatusCode.CANCELLED else exc.code().name


async def phase(port: int, runs: int, storm: bool, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    gate = asyncio.Semaphore(16)
    outcomes: dict[str, int] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rlm_pb2_grpc.RLMServiceStub(channel)

        async def gated() -> None:
            async with gate:
                after = (rng.uniform(0, 0.03) if storm else
                         rng.uniform(0, 0.3) if rng.random() < 0.1 else None)
                o = await one(stub, rng, after)
                outcomes[o] = outcomes.get(o, 0) + 1

        await asyncio.gather(*(gated() for _ in range(runs)))
    return outcomes


def settle(pid: int, runs: Path, metrics_port: int, seconds: float = 30.0) -> Snapshot:
    deadline = time.monotonic() + seconds
    while True:
        snap = Snapshot(pid, runs, metrics_port)
        # Settled: the pool is full again (so its fds count in every snapshot alike) and
        # nothing is left of the runs.
        if (snap.run_dirs == POOL and not snap.strays) or time.monotonic() > deadline:
            return snap
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="100 runs a phase")
    ap.add_argument("--phases", default="mixed,storm", help="which phases, in order")
    args = ap.parse_args()
    runs_per_phase = 100 if args.quick else args.runs
    tmp = Path(tempfile.mkdtemp(prefix="rlm-soak-"))
    port, metrics_port = free_port(), free_port()
    with FakeGemini() as fake:
        fake.script(MARK, ["```repl\nx = sum(range(200_000))\nprint(llm_query('hi'))\n```",
                           "```repl\nFINAL('done ' + str(len(context)))\n```"])
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GEMINI_", "RLM_", "SANDBOX_", "OTEL_"))}
        env.update(PORT=str(port), METRICS_PORT=str(metrics_port), HTTP_PORT="-1",
                   HOST="127.0.0.1", GEMINI_API_KEY="soak-key", GEMINI_BASE_URL=fake.base_url,
                   GEMINI_MODEL_NAME="fake-root", GEMINI_SUB_MODEL_NAME="fake-sub",
                   SANDBOX_POOL_SIZE=str(POOL), SANDBOX_POOL_MAX=str(POOL),
                   RUNTIME_DIR=str(tmp / "rt"),
                   LOG_LEVEL="WARNING")
        server = subprocess.Popen([str(Path(sys.executable).parent / "rlm-server")], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        runs_dir = tmp / "rt" / "runs"
        try:
            deadline = time.monotonic() + 60
            while True:  # the metrics port opens last
                try:
                    escaped(metrics_port)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.1)
            asyncio.run(phase(port, 20, storm=False, seed=0))  # warm-up
            base = settle(server.pid, runs_dir, metrics_port)
            report: dict[str, Any] = {"runs_per_phase": runs_per_phase,
                                      "after_warmup": base.row()}
            for name in args.phases.split(","):
                storm = name == "storm"
                t0 = time.monotonic()
                outcomes = asyncio.run(phase(port, runs_per_phase, storm, seed=len(name)))
                t1 = time.monotonic()
                snap = settle(server.pid, runs_dir, metrics_port)
                report[name] = {"seconds": round(t1 - t0, 1), "outcomes": outcomes,
                                "settle_seconds": round(time.monotonic() - t1, 1),
                                **snap.row()}
            server.send_signal(signal.SIGTERM)
            server.wait(30)
            time.sleep(0.5)
            report["after_stop"] = {"sandbox_processes": len(sandbox_processes(tmp)),
                                    "runtime_dir_left": (tmp / "rt").exists()}
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=2))
    phases = args.phases.split(",")
    ok = report["after_stop"]["sandbox_processes"] == 0 and all(
        not report[p]["stray_processes"] and not report[p]["escaped"]
        and report[p]["fds"] - base.fds <= FD_SLACK and report[p]["run_dirs"] <= POOL
        for p in phases)
    print("soak:", "OK" if ok else "LEAK")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
