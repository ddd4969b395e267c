"""Sandbox benchmark: run start latency, llm_query overhead and idle REPL memory.

Starts the real server in-process against the fake Gemini API (latency 0) and
reports median and p95 of:

* time from sending a request to its first event, with a warm REPL pool
  (``SANDBOX_POOL_SIZE`` default) and with ``sandbox_pool_size=0``; the first
  ``root_turn`` event is reported too, since ``run_started`` is sent before the
  REPL is acquired and the context loaded;
* one ``llm_query`` round trip from REPL code to the fake model and back, minus
  the same model call made directly with the service's own Gemini backend (SDK,
  HTTP and the fake's handling), i.e. what the sandbox, the Unix-socket gRPC
  callback and the engine add;
* the memory of one idle pooled REPL: VmRSS (and PSS) of the guest Python
  process, and of the two bubblewrap processes separately.

Usage: ``.venv/bin/python -m bench.sandbox_bench [-n 30] [--calls 200] [--json out.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from rlm_service.config import Settings
from rlm_service.models import GenerateOptions, Message
from rlm_service.server import Server
from tests.conftest import SUB_MODEL, make_settings, process_tree, repl
from tests.fakes.gemini import FakeGemini

TARGETS = {
    "first_event_pooled_ms": 50.0,
    "first_event_unpooled_ms": 300.0,
    "llm_query_overhead_ms": 1.0,
    "idle_repl_guest_rss_mb": 40.0,
}


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {"median": statistics.median(ordered), "p95": p95, "min": ordered[0],
            "max": ordered[-1], "n": len(ordered)}


async def wait_pool_full(server: Server, timeout: float = 30.0) -> None:
    pool = server._pool
    assert pool is not None
    deadline = time.monotonic() + timeout
    while pool.idle < pool.size and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    # Let the freshly started REPLs finish importing and settle.
    await asyncio.sleep(0.05)


async def first_event_latency(fake: FakeGemini, runs: int, **overrides: Any) -> dict[str, Any]:
    server = Server(make_settings(fake, **overrides))
    await server.start()
    first: list[float] = []
    root_turn: list[float] = []
    total: list[float] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = rlm_pb2_grpc.RLMServiceStub(channel)
            marker = f"BENCH-{uuid.uuid4().hex}"
            fake.script(marker, [repl("FINAL(len(context))")])
            for i in range(runs + 2):
                await wait_pool_full(server)
                started = time.perf_counter()
                t_first = t_root = None
                async for event in stub.StreamCompletion(make_request(f"{marker} go", "ctx")):
                    now = time.perf_counter()
                    if t_first is None:
                        t_first = now
                    if t_root is None and event.HasField("root_turn"):
                        t_root = now
                done = time.perf_counter()
                assert t_first is not None and t_root is not None
                if i >= 2:  # the first two warm up the channel and the SDK client
                    first.append((t_first - started) * 1000)
                    root_turn.append((t_root - started) * 1000)
                    total.append((done - started) * 1000)
    finally:
        await server.stop(grace=0)
    return {"first_event_ms": stats(first), "first_root_turn_ms": stats(root_turn),
            "whole_run_ms": stats(total)}


LLM_QUERY_CODE = """
import time
llm_query('warm up')
durations = []
for i in range({calls}):
    t = time.perf_counter()
    llm_query('bench ' + str(i))
    durations.append(time.perf_counter() - t)
FINAL(repr(durations))
"""


async def llm_query_overhead(fake: FakeGemini, calls: int) -> dict[str, Any]:
    server = Server(make_settings(fake, sandbox_block_timeout_seconds=600))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = rlm_pb2_grpc.RLMServiceStub(channel)
            marker = f"BENCH-LQ-{uuid.uuid4().hex}"
            fake.script(marker, [repl(LLM_QUERY_CODE.format(calls=calls))])
            reply = await stub.Complete(make_request(f"{marker} go", "ctx"))
            in_repl = [d * 1000 for d in json.loads(reply.answer.replace("'", '"'))]
            # The same model call, made directly with the service's own backend.
            assert server.engine is not None
            backend = server.engine.backend_for(sub=True)
            direct: list[float] = []
            for i in range(calls + 1):
                t = time.perf_counter()
                await backend.generate(SUB_MODEL, [Message("user", f"bench {i}")],
                                       GenerateOptions())
                if i:
                    direct.append((time.perf_counter() - t) * 1000)
    finally:
        await server.stop(grace=0)
    s_repl, s_direct = stats(in_repl), stats(direct)
    return {
        "llm_query_ms": s_repl,
        "direct_model_call_ms": s_direct,
        "overhead_ms": {
            "median": s_repl["median"] - s_direct["median"],
            "mean": statistics.fmean(in_repl) - statistics.fmean(direct),
            "p95": s_repl["p95"] - s_direct["p95"],
        },
    }


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["Pss"] = int(line.split()[1])
    except OSError:
        pass
    return out


async def idle_repl_memory(fake: FakeGemini) -> dict[str, Any]:
    server = Server(make_settings(fake, sandbox_pool_size=Settings.model_fields[
        "sandbox_pool_size"].default))
    await server.start()
    try:
        await wait_pool_full(server)
        await asyncio.sleep(1.0)
        assert server._pool is not None
        samples: list[dict[str, Any]] = []
        for r in server._pool._idle:
            guest = {"VmRSS": 0, "Pss": 0}
            bwrap = {"VmRSS": 0, "Pss": 0}
            procs = []
            for pid in sorted(process_tree(r.proc.pid)):
                with open(f"/proc/{pid}/comm") as f:
                    comm = f.read().strip()
                st = _status(pid)
                procs.append({"pid": pid, "comm": comm, **st})
                target = bwrap if comm == "bwrap" else guest
                for k in ("VmRSS", "Pss"):
                    target[k] += st.get(k, 0)
            samples.append({"guest_rss_mb": guest["VmRSS"] / 1024,
                            "guest_pss_mb": guest["Pss"] / 1024,
                            "bwrap_rss_mb": bwrap["VmRSS"] / 1024,
                            "bwrap_pss_mb": bwrap["Pss"] / 1024, "processes": procs})
    finally:
        await server.stop(grace=0)
    keys = ("guest_rss_mb", "guest_pss_mb", "bwrap_rss_mb", "bwrap_pss_mb")
    medians: dict[str, Any] = {k: statistics.median(float(s[k]) for s in samples) for k in keys}
    return {"repls": samples, **medians}


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {"nproc": os.cpu_count(), "cpu": model, "ram_gb": round(mem_kb / 1024 ** 2, 1),
            "kernel": os.uname().release, "python": sys.version.split()[0],
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine()}
    with FakeGemini() as fake:
        fake.latency = 0.0
        default_pool = Settings.model_fields["sandbox_pool_size"].default
        results["pooled"] = await first_event_latency(fake, args.runs,
                                                      sandbox_pool_size=default_pool)
        results["unpooled"] = await first_event_latency(fake, args.runs, sandbox_pool_size=0)
        results["llm_query"] = await llm_query_overhead(fake, args.calls)
        results["idle_repl"] = await idle_repl_memory(fake)

    m = results["machine"]
    print(f"machine: {m['nproc']} x {m['cpu']}, {m['ram_gb']} GB RAM, kernel {m['kernel']}, "
          f"Python {m['python']}, {m['date']}")
    rows = [
        ("first event, pool warm (ms)", results["pooled"]["first_event_ms"],
         TARGETS["first_event_pooled_ms"]),
        ("first root_turn, pool warm (ms)", results["pooled"]["first_root_turn_ms"], None),
        ("whole 1-turn run, pool warm (ms)", results["pooled"]["whole_run_ms"], None),
        ("first event, pool 0 (ms)", results["unpooled"]["first_event_ms"],
         TARGETS["first_event_unpooled_ms"]),
        ("first root_turn, pool 0 (ms)", results["unpooled"]["first_root_turn_ms"], None),
        ("whole 1-turn run, pool 0 (ms)", results["unpooled"]["whole_run_ms"], None),
        ("llm_query from REPL (ms)", results["llm_query"]["llm_query_ms"], None),
        ("same call, backend direct (ms)", results["llm_query"]["direct_model_call_ms"], None),
        ("llm_query overhead (ms)", results["llm_query"]["overhead_ms"],
         TARGETS["llm_query_overhead_ms"]),
    ]
    print(f"{'measure':36} {'median':>9} {'p95':>9}   target")
    for name, s, target in rows:
        verdict = "" if target is None else (
            f"< {target:g}  {'ok' if s['median'] < target else 'MISSED'}")
        print(f"{name:36} {s['median']:9.2f} {s['p95']:9.2f}   {verdict}")
    idle = results["idle_repl"]
    verdict = "ok" if idle["guest_rss_mb"] < TARGETS["idle_repl_guest_rss_mb"] else "MISSED"
    print(f"{'idle REPL guest python RSS (MB)':36} {idle['guest_rss_mb']:9.1f} {'':9}   "
          f"< {TARGETS['idle_repl_guest_rss_mb']:g}  {verdict}")
    print(f"{'idle REPL guest python PSS (MB)':36} {idle['guest_pss_mb']:9.1f}")
    print(f"{'idle REPL bwrap x2 RSS (MB)':36} {idle['bwrap_rss_mb']:9.1f}")
    print(f"{'idle REPL bwrap x2 PSS (MB)':36} {idle['bwrap_pss_mb']:9.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    asyncio.run(main())
