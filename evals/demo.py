"""``make demo``: the whole service on the offline scripted model, no key, no network.

Starts ``rlm-server`` with ``RLM_BACKEND=scripted``, writes a few MB of log
lines with one planted fact, and runs ``rlm run`` on them: the root writes
code that inspects the context, chunks it, calls ``llm_query_batched`` over
the chunks inside the real sandbox and answers with ``FINAL_VAR``. On a
terminal the ``rlm`` live view draws it. Exits 0 when the planted fact comes
back as the answer.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evals.service import LocalService, ServiceError

CLUSTERS = ("vega-3", "vega-7", "orion-2", "lyra-5", "cygnus-1")
SERVICES = ("api", "billing", "auth", "search", "scheduler", "ingest")
MESSAGES = (
    "request served in {ms} ms", "cache miss for key user:{n}", "heartbeat ok",
    "retrying upstream call ({k} of 3)", "connection pool at {n}% capacity",
    "job {n} finished", "slow query took {ms} ms", "token refreshed for client {n}",
)
QUESTION = "What is the recovery code for cluster vega-7?"
FACT = "ops-notes: after the failover the recovery code for cluster vega-7 is: 4417-KESTREL"
ANSWER = "4417-KESTREL"
# The `rlm` command, run by the interpreter in use (a venv need not be on PATH).
RLM = [sys.executable, "-c", "from rlm_client.cli import main; main()"]

HOW_TO_GEMINI = """\
That was the offline scripted model: rules, not a language model. To run on Gemini for real:

  GEMINI_API_KEY=... make run          # the service on :8080, in one terminal
  .venv/bin/rlm run "{question}" --context-file {context}    # in another
"""


def make_logs(path: Path, target_bytes: int, seed: int = 7) -> int:
    """Writes log lines with FACT planted somewhere in the middle; returns the line count."""
    rng = random.Random(seed)
    start = 1_767_225_600  # 2026-01-01T00:00:00Z
    written, lines = 0, 0
    planted = False
    with path.open("w", encoding="utf-8") as f:
        while written < target_bytes:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + lines * 3))
            if not planted and written > target_bytes * rng.uniform(0.3, 0.7):
                line = f"{stamp} INFO  cluster=vega-7 {FACT}\n"
                planted = True
            else:
                message = rng.choice(MESSAGES).format(ms=rng.randint(2, 900),
                                                      n=rng.randint(1, 99_999),
                                                      k=rng.randint(1, 3))
                line = (f"{stamp} {rng.choice(('INFO ', 'INFO ', 'WARN ', 'DEBUG'))} "
                        f"cluster={rng.choice(CLUSTERS)} service={rng.choice(SERVICES)} "
                        f"{message}\n")
            f.write(line)
            written += len(line)
            lines += 1
    return lines


def final_answer(saved: Path) -> str | None:
    for line in saved.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if "final_answer" in event:
            return str(event["final_answer"].get("answer", ""))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=4.0, help="size of the log context")
    parser.add_argument("--delay", type=float, default=0.15,
                        help="seconds each scripted model call takes, so the view can show it")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rlm-demo-") as tmp:
        work = Path(tmp)
        context = work / "service.log"
        lines = make_logs(context, int(args.megabytes * 1024 * 1024))
        print(f"demo: wrote {context.stat().st_size / 1e6:.1f} MB of logs ({lines:,} lines) "
              "with one planted fact", flush=True)
        print("demo: starting rlm-server on the offline scripted model "
              "(RLM_BACKEND=scripted, no key, no network)", flush=True)
        settings = {"RLM_BACKEND": "scripted", "RLM_SUB_BACKEND": "scripted",
                    "SCRIPTED_DELAY_SECONDS": str(args.delay), "LOG_LEVEL": "INFO"}
        try:
            with LocalService(settings, work / "server.log") as service:
                saved = work / "run.jsonl"
                print(f"demo: rlm run {QUESTION!r} --context-file service.log\n", flush=True)
                code = subprocess.call([*RLM, "run", QUESTION,
                                        "--context-file", str(context), "--server",
                                        service.address, "--save", str(saved),
                                        "--max-iterations", "6", "--timeout", "50"])
                if "offline scripted model" not in service.log_tail(200):
                    print("demo: the server log does not name the offline scripted model",
                          file=sys.stderr)
                    return 1
        except ServiceError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        answer = final_answer(saved)
        if code != 0 or answer is None or ANSWER not in answer:
            print(f"demo: FAILED (rlm exit {code}, answer {answer!r}, expected {ANSWER})",
                  file=sys.stderr)
            return 1
        print(f"\ndemo: the answer {answer!r} is the planted fact. "
              "Server log said: offline scripted model.")
    print(HOW_TO_GEMINI.format(question=QUESTION, context="your.log"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
