"""The reference library's side: its own venv, and one worker process per measurement."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import API_KEY, ROOT, clean_env
from bench.trajectories import ONE, Scenario

RLMS_VERSION = "0.1.3"
VENV = ROOT / ".venv-rlms"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / f".rlms-{RLMS_VERSION}"
WORKER = Path(__file__).with_name("rlms_worker.py")


def ensure_venv() -> None:
    """Creates .venv-rlms with rlms from PyPI, once."""
    if STAMP.exists():
        return
    print(f"installing rlms {RLMS_VERSION} into {VENV}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv",
                    "--clear", str(VENV)], check=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"rlms=={RLMS_VERSION}"], check=True)
    STAMP.touch()


def versions() -> dict[str, str]:
    code = ("import importlib.metadata as m, json;"
            "print(json.dumps({p: m.version(p) for p in ('rlms', 'google-genai')}))")
    out = subprocess.run([str(PYTHON), "-c", code], capture_output=True, text=True, check=True)
    found: dict[str, str] = json.loads(out.stdout)
    return found


@dataclass
class RlmsResult:
    times: list[float]
    answers: list[str]
    errors: list[str] = field(default_factory=list)


def run_many(jobs: list[tuple[Scenario, int]], fake_url: str, warmup: bool = True,
             context: Any = "ctx", timeout: float = 1800.0, prompt_suffix: str = ""
             ) -> list[RlmsResult]:
    """Each (scenario, reps) in one worker process, in order."""
    spec = {"api_key": API_KEY, "warmup": ONE.prompt() if warmup else None,
            "jobs": [{"prompt": s.prompt() + prompt_suffix, "context": context,
                      "max_depth": s.max_depth,
                      "reps": reps} for s, reps in jobs]}
    env = clean_env()
    env.update({"GOOGLE_GEMINI_BASE_URL": fake_url, "GEMINI_API_KEY": API_KEY,
                "PYTHONUNBUFFERED": "1"})
    proc = subprocess.run([str(PYTHON), str(WORKER), json.dumps(spec)], env=env,
                          cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH-RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"rlms worker failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    out = []
    for (scenario, _), data in zip(jobs, json.loads(line.removeprefix("BENCH-RESULT ")),
                                   strict=True):
        result = RlmsResult(times=data["times"], answers=data["answers"], errors=data["errors"])
        for got in result.answers:
            if scenario.expected and got != scenario.expected:
                result.errors.append(f"wrong answer {got[:80]!r}, expected {scenario.expected!r}")
        out.append(result)
    return out
