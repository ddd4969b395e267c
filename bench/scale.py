"""Scale on one instance (issue 16's targets), against ``rlm-server`` at its shipped settings.

Three measurements, each against the fake Gemini API in its own process:

* ``concurrent``: 32 five-turn runs at once with the model at 1 s a call; p95 of the
  run time against the 5 s critical path (target at most 1.10x).
* ``throughput``: one-turn runs (no sub-call) back to back on 32 streams at zero
  model latency for a fixed time, and the same with a sub-call (3 turns and one
  ``llm_query``); runs per second (target at least 40 for short runs, 2 cores).
* ``fanout``: a 200-way ``llm_query_batched`` at 100 ms; median against the ideal
  at the shipped per-request width (target at most 1.15x).

Fair sharing (a small run beside a 2,000-way batch) is checked by
tests/scale/test_fair_sharing.py and not timed here yet.

Usage: ``.venv/bin/python -m bench.scale [--only concurrent fanout] [--json out.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ours
from bench.ours_alone import pct
from bench.procs import FakeProc, ServerProc
from bench.trajectories import BATCH200, ONE, STREAM, TURNS5, Scenario
from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from rlm_service.config import Settings

MEASURES = ("concurrent", "throughput", "fanout")


def shipped(name: str) -> int:
    default = Settings.model_fields[name].default
    assert isinstance(default, int)
    return default


def _say(text: str) -> None:
    print(f"[scale] {text}", file=sys.stderr, flush=True)


async def _many(target: str, scenario: Scenario, n: int) -> list[ours.Run]:
    async with ours.channel(target) as ch:
        stub = rlm_pb2_grpc.RLMServiceStub(ch)
        await ours.run_once(stub, ONE)  # the channel and the server's clients warmed up
        return list(await asyncio.gather(*(ours.run_once(stub, scenario) for _ in range(n))))


def concurrent(fake: FakeProc, server: ServerProc, streams: int = 32) -> dict[str, Any]:
    fake.set_latency(1.0)
    runs = asyncio.run(_many(server.target, TURNS5, streams))
    ok = [r.total for r in runs if r.ok]
    path = TURNS5.ideal(1.0, 1)
    return {"streams": streams, "failed": len(runs) - len(ok), "critical_path_s": path,
            "p50_s": statistics.median(ok), "p95_s": pct(ok, 0.95), "max_s": max(ok),
            "p95_ratio": pct(ok, 0.95) / path, "target_ratio": 1.10,
            "errors": sorted({r.error for r in runs if r.error})[:3]}


async def _sustained(target: str, scenario: Scenario, streams: int, seconds: float
                     ) -> dict[str, Any]:
    done: list[float] = []
    errors: list[str] = []
    async with ours.channel(target) as ch:
        stub = rlm_pb2_grpc.RLMServiceStub(ch)
        await ours.run_once(stub, scenario)
        end = time.perf_counter() + seconds

        async def stream() -> None:
            while time.perf_counter() < end:
                run = await ours.run_once(stub, scenario)
                (errors.append(run.error) if run.error else done.append(run.total))

        started = time.perf_counter()
        await asyncio.gather(*(stream() for _ in range(streams)))
        wall = time.perf_counter() - started
    return {"scenario": scenario.name, "streams": streams, "runs": len(done),
            "failed": len(errors), "errors": sorted(set(errors))[:3],
            "runs_per_s": len(done) / wall, "p50_s": statistics.median(done),
            "p95_s": pct(done, 0.95)}


def throughput(fake: FakeProc, server: ServerProc, seconds: float) -> list[dict[str, Any]]:
    fake.set_latency(0.0)
    return [asyncio.run(_sustained(server.target, s, 32, seconds)) for s in (ONE, STREAM)]


def fanout(fake: FakeProc, server: ServerProc, reps: int = 5) -> dict[str, Any]:
    fake.set_latency(0.1)
    width = min(shipped("batch_concurrency"),
                shipped("max_concurrent_model_calls") - shipped("model_call_reserve"))

    async def go() -> list[ours.Run]:
        async with ours.channel(server.target) as ch:
            stub = rlm_pb2_grpc.RLMServiceStub(ch)
            await ours.run_once(stub, BATCH200)
            return [await ours.run_once(stub, BATCH200) for _ in range(reps)]

    runs = asyncio.run(go())
    times = [r.total for r in runs if r.ok]
    ideal = BATCH200.ideal(0.1, width)
    return {"width": width, "ideal_s": ideal, "median_s": statistics.median(times),
            "min_s": min(times), "ratio": statistics.median(times) / ideal,
            "failed": reps - len(times), "target_ratio": 1.15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=MEASURES)
    parser.add_argument("--seconds", type=float, default=15.0, help="throughput window")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    which = args.only or list(MEASURES)
    out: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": os.getloadavg(),
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with FakeProc() as fake, ServerProc(fake.url) as server:
        if "concurrent" in which:
            _say("32 concurrent 5-turn runs at 1 s")
            out["concurrent"] = r = concurrent(fake, server)
            _say(f"p95 {r['p95_s']:.2f} s = {r['p95_ratio']:.3f}x the {r['critical_path_s']} s "
                 f"path (p50 {r['p50_s']:.2f}, max {r['max_s']:.2f}, failed {r['failed']})")
        if "throughput" in which:
            out["throughput"] = rows = throughput(fake, server, args.seconds)
            for row in rows:
                _say(f"{row['scenario']}: {row['runs_per_s']:.1f} runs/s on 32 streams "
                     f"(p50 {row['p50_s'] * 1000:.0f} ms, failed {row['failed']})")
        if "fanout" in which:
            out["fanout"] = r = fanout(fake, server)
            _say(f"200-way at 100 ms, {r['width']} wide: {r['median_s']:.3f} s = "
                 f"{r['ratio']:.3f}x the ideal {r['ideal_s']:.2f} s")
    out["load_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    _say(f"load {out['load_before'][0]:.1f} -> {out['load_after'][0]:.1f}")


if __name__ == "__main__":
    main()
