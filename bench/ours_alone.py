"""Ours alone: start latency, large contexts, concurrent streams, per-call overhead.

Every family runs our real server as a subprocess against the fake in its own
process; figures are taken at the client (the gRPC stream) and from /proc.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

from bench import ours, rlms_side
from bench.procs import FakeProc, PeakSampler, ServerProc
from bench.trajectories import CONTEXT, ONE, PER_CALL, STREAM, STREAM_MODEL_CALLS
from rlm_service._gen.rlm.v1 import rlm_pb2_grpc

MIB = 1 << 20


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"median": statistics.median(values), "p95": pct(values, 0.95), "min": min(values),
            "max": max(values), "n": len(values)}


def _say(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


# --- first event / first root turn, pooled and cold ---------------------------------

async def _startup(target: str, runs: int, pooled: bool) -> dict[str, Any]:
    first: list[float] = []
    root: list[float] = []
    errors: list[str] = []
    async with ours.channel(target) as ch:
        stub = rlm_pb2_grpc.RLMServiceStub(ch)
        for i in range(runs + 1):
            # With a pool, give it time to refill so each run meets a warm REPL.
            await asyncio.sleep(0.5 if pooled else 0.05)
            run = await ours.run_once(stub, ONE)
            if i == 0:
                continue  # warms the channel and the server's SDK client
            if run.error:
                errors.append(run.error)
            if run.first_event is not None:
                first.append(run.first_event * 1000)
            if run.first_root_turn is not None:
                root.append(run.first_root_turn * 1000)
    return {"first_event_ms": summary(first), "first_root_turn_ms": summary(root),
            "errors": errors}


def startup(fake: FakeProc, server: ServerProc, runs: int) -> dict[str, Any]:
    """``server`` runs the shipped defaults (a pool of 2); a second one has no pool."""
    fake.set_latency(0.0)
    _say(f"startup: pooled x{runs}")
    out: dict[str, Any] = {"pooled": asyncio.run(_startup(server.target, runs, pooled=True))}
    _say(f"startup: cold x{runs}")
    with ServerProc(fake.url, SANDBOX_POOL_SIZE=0) as cold:
        out["cold"] = asyncio.run(_startup(cold.target, runs, pooled=False))
    return out


# --- large contexts -----------------------------------------------------------------

def make_context(size: int) -> str:
    line = "2026-11-25 12:00:01 user=4711 action=view item=widget-0042 status=ok\n"
    return (line * (size // len(line) + 1))[:size]


async def _context_run(target: str, context: str) -> ours.Run:
    async with ours.channel(target) as ch:
        return await ours.run_once(rlm_pb2_grpc.RLMServiceStub(ch), CONTEXT, context=context)


def contexts(fake: FakeProc, sizes_mib: list[int]) -> list[dict[str, Any]]:
    fake.set_latency(0.0)
    rows = []
    for mib in sizes_mib:
        _say(f"context: {mib} MiB")
        context = make_context(mib * MIB)
        with ServerProc(fake.url, SANDBOX_POOL_SIZE=1,
                        SANDBOX_BLOCK_TIMEOUT_SECONDS=600) as server:
            with PeakSampler(server.pid) as sampler:
                run = asyncio.run(_context_run(server.target, context))
            server_kb = sampler.server_kb()
        del context
        ok = run.ok and run.answer == str(mib * MIB)
        rows.append({
            "mib": mib, "ok": ok, "error": run.error or ("" if ok else f"answer {run.answer!r}"),
            "first_output_s": run.first_output, "total_s": run.total,
            "server_peak_mib": server_kb / 1024, "repl_peak_mib": sampler.guest_kb / 1024,
            "server_rss_per_context": server_kb / 1024 / mib,
            "repl_rss_per_context": sampler.guest_kb / 1024 / mib,
        })
    return rows


# --- concurrent streams -------------------------------------------------------------

async def _streams(target: str, streams: int, runs_each: int, model_path: float
                   ) -> dict[str, Any]:
    overheads: list[float] = []
    errors: list[str] = []

    async def one_stream(stub: rlm_pb2_grpc.RLMServiceAsyncStub) -> None:
        for _ in range(runs_each):
            run = await ours.run_once(stub, STREAM)
            if run.error:
                errors.append(run.error)
            else:
                overheads.append((run.total - model_path) * 1000)

    async with ours.channel(target) as ch:
        stub = rlm_pb2_grpc.RLMServiceStub(ch)
        await ours.run_once(stub, ONE)
        started = time.perf_counter()
        await asyncio.gather(*(one_stream(stub) for _ in range(streams)))
        wall = time.perf_counter() - started
    done = len(overheads)
    return {"streams": streams, "runs": streams * runs_each, "ok": done,
            "errors": len(errors), "error_samples": sorted(set(errors))[:3],
            "p50_overhead_ms": statistics.median(overheads) if overheads else None,
            "p95_overhead_ms": pct(overheads, 0.95) if overheads else None,
            "runs_per_s": done / wall, "wall_s": wall}


def concurrency(fake: FakeProc, server: ServerProc, streams: list[int], runs_each: int,
                latency: float) -> list[dict[str, Any]]:
    fake.set_latency(latency)
    model_path = STREAM_MODEL_CALLS * latency
    rows = []
    for n in streams:
        _say(f"concurrency: {n} streams x{runs_each}")
        row = asyncio.run(_streams(server.target, n, runs_each, model_path))
        row["model_path_s"] = model_path
        rows.append(row)
    return rows


# --- per-call overhead of llm_query ---------------------------------------------------

async def _per_call(target: str, n: int) -> ours.Run:
    async with ours.channel(target) as ch:
        return await ours.run_once(rlm_pb2_grpc.RLMServiceStub(ch), PER_CALL,
                                   prompt=f"{PER_CALL.prompt()} n={n}")


def per_call(fake: FakeProc, server: ServerProc, n: int) -> dict[str, Any]:
    _say(f"per-call: {n} llm_query")
    fake.set_latency(0.0)
    fake.reset()
    run = asyncio.run(_per_call(server.target, n))
    stats = fake.stats()
    if not run.ok:
        return {"error": run.error}
    out = _overhead(run.answer, stats)
    out["n"] = n
    # The same loop through rlms, for scale (its REPL runs the same code).
    _say(f"per-call: {n} llm_query through rlms")
    rlms_side.ensure_venv()
    fake.reset()
    res = rlms_side.run_many([(PER_CALL, 1)], fake.url, prompt_suffix=f" n={n}")[0]
    stats = fake.stats()
    if res.errors or not res.answers[0].startswith("["):
        out["rlms"] = {"error": (res.errors or [res.answers[0][:200]])[0]}
    else:
        out["rlms"] = _overhead(res.answers[0], stats)
    return out


def _overhead(durations_json: str, stats: dict[str, Any]) -> dict[str, Any]:
    in_repl = [d * 1000 for d in json.loads(durations_json)]
    # Mean over every request the fake saw: the sub-calls, the warm-up and root turns.
    fake_ms = stats["handler_seconds"] * 1000 / max(1, stats["requests"])
    overhead = [d - fake_ms for d in in_repl]
    return {"llm_query_ms": summary(in_repl), "fake_ms_per_request": fake_ms,
            "overhead_ms": summary(overhead), "overhead_samples": overhead}
