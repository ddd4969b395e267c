"""`make demo` and `make eval ARGS=--quick`, as the Makefile runs them: real
subprocesses, a real rlm-server on the scripted backend, no key, no network."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import API_KEY, repl
from tests.fakes.gemini import FakeGemini

ROOT = Path(__file__).resolve().parents[2]
# Nothing from the developer's shell may point the run at a real model.
ENV = {k: v for k, v in os.environ.items()
       if not k.startswith(("GEMINI_", "OPENAI_", "GOOGLE_", "RLM_", "SANDBOX_", "PORT",
                            "METRICS_", "HTTP_", "OTEL_"))}


def _makefile_recipe(target: str) -> str:
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.M)
    assert m, f"no {target} target"
    return m[1]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_make_demo_answers_with_the_planted_fact_within_a_minute() -> None:
    assert "-m evals.demo" in _makefile_recipe("demo")
    started = time.monotonic()
    done = _run(["-m", "evals.demo"], timeout=90)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert elapsed < 60
    out = done.stdout + done.stderr
    assert "offline scripted model" in out
    # The rlm command's own output: the answer, and the plain-line view of the steps.
    assert re.search(r"^4417-KESTREL$", done.stdout, re.M)
    # Inspect, then chunk + batched sub-calls (one found the fact), then FINAL_VAR.
    assert re.search(r"\d+ chunks of up to 200,000 characters; 1 had a candidate", done.stderr)
    assert "recovery code for cluster vega-7 is: 4417-KESTREL" in done.stderr
    assert 'FINAL_VAR(\\"result\\")' in done.stderr or 'FINAL_VAR("result")' in done.stderr
    assert "answered · 3 iterations" in done.stderr
    assert "GEMINI_API_KEY=... make run" in done.stdout


def test_make_eval_quick_offline(tmp_path: Path) -> None:
    assert "-m evals $(ARGS)" in _makefile_recipe("eval")
    done = _run(["-m", "evals", "--quick", "--results-dir", str(tmp_path),
                 "--doc", str(tmp_path / "evals.md")], timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "offline scripted model: plumbing, not model quality" in done.stdout
    data = json.loads((tmp_path / "scripted-quick.json").read_text())
    assert data["note"] == "offline scripted model: plumbing, not model quality"
    assert set(data["families"]) == {"s-niah", "oolong", "oolong-pairs"}
    for task in data["tasks"]:
        assert task["stop_reason"] == "answered" and not task["error"]
        assert task["iterations"] == 3 and task["sub_calls"] >= 2
        assert 0.0 <= task["score"] <= 1.0 and task["latency_seconds"] > 0
    # The scripted needle search is exact; a wrong answer would be a plumbing fault.
    assert all(t["score"] == 1.0 for t in data["tasks"] if t["family"] == "s-niah")
    doc = (tmp_path / "evals.md").read_text()
    assert "| s-niah | 2 |" in doc and "plumbing, not model quality" in doc


def test_eval_online_without_yes_stops_at_the_cost_estimate(tmp_path: Path) -> None:
    env = {**ENV, "GEMINI_API_KEY": "not-a-real-key"}
    done = subprocess.run([sys.executable, "-m", "evals", "--limit", "1",
                           "--results-dir", str(tmp_path), "--doc", str(tmp_path / "d.md")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 1
    assert re.search(r"estimated cost up to \$\d+\.\d\d", done.stdout)
    assert "--yes" in done.stdout
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


def test_on_a_terminal_the_demo_draws_the_live_view() -> None:
    master, slave = pty.openpty()
    env = {**ENV, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    proc = subprocess.Popen([sys.executable, "-m", "evals.demo", "--megabytes", "1",
                             "--delay", "0.3"], cwd=ROOT, env=env, stdin=slave, stdout=slave,
                            stderr=slave, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    end = time.monotonic() + 90
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    assert code == 0, screen[-3000:]
    # rich's panels and the sub-call tree, mid-run and at the end.
    assert "output (tail)" in screen and "running block" in screen
    assert re.search(r"llm_query x\d+: \d+ in flight", screen)
    assert "4417-KESTREL" in screen and "offline scripted model" in screen


def test_eval_online_runs_on_a_gemini_endpoint_after_the_estimate(tmp_path: Path) -> None:
    """The online path, pointed at the fake Gemini, whose scripted root reads the needle
    with a regex: the real backend, SDK and wire format, scored like any model."""
    with FakeGemini() as fake:
        fake.script("special magic number", [
            repl("print(len(context))"),
            repl("import re\nresult = re.search(r'numbers for \\S+ is: (\\d+)', context)[1]\n"
                 "FINAL_VAR('result')"),
        ])
        env = {**ENV, "GEMINI_API_KEY": API_KEY, "GEMINI_BASE_URL": fake.base_url}
        done = subprocess.run(
            [sys.executable, "-m", "evals", "--quick", "--family", "s-niah", "--limit", "1",
             "--yes", "--results-dir", str(tmp_path), "--doc", str(tmp_path / "d.md")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
        calls = len(fake.requests)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"estimated cost up to \$0\.\d\d", done.stdout)
    assert "plumbing, not model quality" not in done.stdout
    data = json.loads((tmp_path / "gemini-quick.json").read_text())
    (task,) = data["tasks"]
    assert data["root_model"] == "gemini-2.5-flash" and data["note"] == ""
    assert task["score"] == 1.0 and task["stop_reason"] == "answered"
    assert task["iterations"] == 2 and task["sub_calls"] == 0 and calls == 2
    assert task["cost_usd"] > 0  # priced from the catalog
