"""Side by side: the same trajectories through our service and through rlms.

For each fake latency and scenario: our server at its shipped defaults
(16 sub-calls at once per request), our server 64 wide (only where width
matters), and rlms 0.1.3 (16 at once per batch, 4 child threads; neither is a
constructor option). Each system gets one untimed warm-up run first.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import ours, rlms_side
from bench.procs import FakeProc, ServerProc
from bench.trajectories import BATCH200, FANOUT, ONE, SIDE_BY_SIDE, Scenario
from rlm_service._gen.rlm.v1 import rlm_pb2_grpc

WIDE = {"BATCH_CONCURRENCY": 64, "MAX_CONCURRENT_MODEL_CALLS": 64}
# Width of one batch on each system, for the ideal.
WIDTH = {"ours": 16, "ours-64": 64, "rlms": 16}
WIDE_SCENARIOS = {BATCH200.name, FANOUT.name}


@dataclass
class Row:
    scenario: str
    latency: float
    system: str
    ideal: float
    times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


def reps_for(latency: float, scenario: Scenario, quick: bool) -> int:
    if quick:
        return 1
    if latency >= 1.0:
        return 1
    return 3 if latency > 0 else 5


async def _ours(server: ServerProc, scenario: Scenario, reps: int, warm: bool) -> Row:
    row = Row(scenario.name, 0.0, "", 0.0)
    async with ours.channel(server.target) as ch:
        stub = rlm_pb2_grpc.RLMServiceStub(ch)
        if warm:
            await ours.run_once(stub, ONE)
        for _ in range(reps):
            run = await ours.run_once(stub, scenario)
            row.times.append(run.total)
            if run.error:
                row.errors.append(run.error)
            await asyncio.sleep(0.2)  # the pool refills its REPLs between runs
    return row


def run_family(fake: FakeProc, server: ServerProc, latencies: list[float], quick: bool
               ) -> list[Row]:
    """``server`` runs the shipped defaults; the wide one is started here (not in quick
    mode). rlms runs every scenario of one latency in one worker process."""
    rows: list[Row] = []
    servers = {"ours": server}
    try:
        if not quick:
            servers["ours-64"] = ServerProc(fake.url, **WIDE)
        for latency in latencies:
            fake.set_latency(latency)
            warm = latency < 1.0  # at 1 s a warm-up run costs more than it tells
            jobs: list[tuple[Scenario, int]] = []
            for scenario in SIDE_BY_SIDE:
                reps = reps_for(latency, scenario, quick)
                jobs.append((scenario, reps))
                for system in servers:
                    if system == "ours-64" and scenario.name not in WIDE_SCENARIOS:
                        continue
                    _say(f"{scenario.name} L={latency} {system} x{reps}")
                    row = asyncio.run(_ours(servers[system], scenario, reps, warm))
                    rows.append(_finish(row, scenario, latency, system))
            _say(f"all scenarios L={latency} rlms")
            for (scenario, _), res in zip(jobs, rlms_side.run_many(jobs, fake.url, warm),
                                          strict=True):
                row = Row(scenario.name, latency, "rlms", 0.0, res.times, res.errors)
                rows.append(_finish(row, scenario, latency, "rlms"))
    finally:
        if "ours-64" in servers:
            servers["ours-64"].stop()
    order = {s.name: i for i, s in enumerate(SIDE_BY_SIDE)}
    return sorted(rows, key=lambda r: (r.latency, order[r.scenario]))


def _finish(row: Row, scenario: Scenario, latency: float, system: str) -> Row:
    row.latency = latency
    row.system = system
    row.ideal = scenario.ideal(latency, WIDTH[system])
    return row


def _say(text: str) -> None:
    print(f"  side by side: {text}", file=sys.stderr, flush=True)


def to_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [{**asdict(r), "median": r.median} for r in rows]
