"""``make eval``: long-context evals through the real service.

Offline (no GEMINI_API_KEY) the service runs on the scripted backend, which
checks the generators, the service, the scorers and the report; its scores say
nothing about any model. With GEMINI_API_KEY (or --backend) the same tasks run
on a real model, after a cost estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from evals import cost, report, suite
from evals.runner import Record, run_all
from evals.service import LocalService, ServiceError
from rlm_service.config import Settings

OFFLINE = ("scripted", "replay")
ROOT = Path(__file__).resolve().parents[1]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make eval ARGS=...", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="five small tasks (seconds, offline)")
    p.add_argument("--backend", choices=("scripted", "gemini", "openai", "replay"),
                   help="default: gemini when GEMINI_API_KEY is set, else scripted")
    p.add_argument("--root-model", default="", help="default: the backend's default model")
    p.add_argument("--sub-model", default="")
    p.add_argument("--family", action="append", choices=("s-niah", "oolong", "oolong-pairs"),
                   help="only these families (repeatable)")
    p.add_argument("--limit", type=_positive, help="at most this many tasks per family")
    p.add_argument("--max-cost", type=float, default=2.0,
                   help="US dollar cap per task, enforced by the service (online)")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="seconds per task (default 120 offline, 900 online)")
    p.add_argument("--server", metavar="HOST:PORT",
                   help="use a running service instead of starting one")
    p.add_argument("--yes", action="store_true", help="spend without asking (online)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "evals" / "results")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "evals.md")
    return p


def _confirm(dollars: float, unknown: list[str], yes: bool) -> bool:
    print(f"eval: estimated cost up to ${dollars:.2f}"
          + (f" (no price known for {', '.join(unknown)}: counted as $0)" if unknown else ""))
    if yes:
        return True
    if not sys.stdin.isatty():
        print("eval: rerun with --yes to spend that (or lower it with --limit N)")
        return False
    return input("eval: proceed? [y/N] ").strip().lower() in {"y", "yes"}


def _progress(record: Record) -> None:
    flag = f"  {record.error}" if record.error else ""
    print(f"  {record.task_id:<34} score {record.score:.3f}  {record.stop_reason:<9} "
          f"{record.iterations} it  {record.sub_calls:>3} sub-calls  "
          f"{record.latency_seconds:6.2f} s  ${record.cost_usd:.4f}{flag}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    backend = args.backend or ("gemini" if os.environ.get("GEMINI_API_KEY") else "scripted")
    offline = backend in OFFLINE
    try:
        settings = Settings(rlm_backend=backend, rlm_sub_backend=backend)
    except ValidationError as exc:
        print(f"eval: invalid settings: {exc}", file=sys.stderr)
        return 2
    name = settings.rlm_backend
    if not offline and not settings.backend_configured(name):
        print(f"eval: the {backend} backend has no key or endpoint configured", file=sys.stderr)
        return 2
    models = (args.root_model or settings.default_model(name, sub=False),
              args.sub_model or settings.default_model(name, sub=True))
    tasks = suite.select(suite.quick_suite() if args.quick else suite.full_suite(),
                         set(args.family or ()), args.limit)
    print(f"eval: {len(tasks)} tasks on backend {backend} (root {models[0]}, sub {models[1]})")
    if offline:
        print(f"eval: {report.OFFLINE_NOTE}")
    elif not _confirm(*cost.estimate(tasks, *models, settings), args.yes):
        return 1
    fields = {"root_model": args.root_model, "sub_model": args.sub_model,
              "max_iterations": 12, "max_cost_usd": 0.0 if offline else args.max_cost}
    timeout = args.timeout or (120.0 if offline else 900.0)
    try:
        if args.server:
            records = run_all(args.server, tasks, fields, timeout, _progress)
        else:
            with tempfile.TemporaryDirectory(prefix="rlm-eval-") as tmp, LocalService(
                    {"RLM_BACKEND": backend, "RLM_SUB_BACKEND": backend},
                    Path(tmp) / "server.log") as service:
                records = run_all(service.address, tasks, fields, timeout, _progress)
    except ServiceError as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 1
    data = report.results(records, backend=backend, models=models, offline=offline,
                          suite="quick" if args.quick else "full")
    path = report.write_json(data, args.results_dir)
    report.write_doc(data, args.doc)
    print(report.table(data))
    print(f"eval: results in {path} and {args.doc}")
    if offline:
        print(f"eval: {report.OFFLINE_NOTE}")
    failed = [r for r in records if r.error]
    if failed:
        print(f"eval: {len(failed)} tasks failed: {json.dumps([r.task_id for r in failed])}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
