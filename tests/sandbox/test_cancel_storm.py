"""The soak in short: a cancel storm and mixed runs against ``rlm-server`` leak nothing.

Runs ``bench/soak.py`` (the real server entry point in a subprocess, the fake Gemini
API): 300 runs each cancelled 0-30 ms after their first event, so cancels land while a
REPL starts, loads its context, is handed over by the pool, runs a block or closes; then
60 runs with 10% cancelled. Afterwards the server's fds, run dirs and sandbox processes
must be back where they were, and nothing may be left after it stops. (The 1,000-run
version is ``make soak``; its figures are in docs/performance.md.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("phase", "runs"), [("storm", 200), ("mixed", 60)])
def test_soak_leaves_nothing(phase: str, runs: int) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--phases", phase, "--runs", str(runs)],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)
    report_text = done.stdout.rsplit("soak:", 1)[0]
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    report = json.loads(report_text)
    row = report[phase]
    assert sum(row["outcomes"].values()) == runs, row
    assert row["stray_processes"] == 0 and row["escaped"] == 0, row
    assert row["run_dirs"] <= 2 and row["fds"] <= report["after_warmup"]["fds"] + 8, report
    assert report["after_stop"]["sandbox_processes"] == 0, report
