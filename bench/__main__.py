"""The benchmark suite: every family, then docs/performance.md and one PNG per family.

    .venv/bin/python -m bench [--quick] [--out DIR] [--only FAMILY ...] [--note TEXT]

``make bench`` runs it (``make bench-quick`` with ``--quick``). With ``--out``
the report, the plots (``DIR/img``) and ``bench-results.json`` go there
instead of docs/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench import ours_alone, plots, report, rlms_side, side_by_side
from bench.procs import ROOT, FakeProc, ServerProc
from bench.trajectories import SIDE_BY_SIDE

FAMILIES = ("side_by_side", "startup", "contexts", "concurrency", "per_call")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "cpu": cpu, "ram_gib": round(ram, 1), "kernel": platform.release(),
            "python": platform.python_version(), "load_start": _load()}


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick: bool = args.quick
    families = args.only or list(FAMILIES)
    results: dict[str, Any] = {"quick": quick, "machine": machine(), "note": args.note,
                               "family_seconds": {}}
    started = time.perf_counter()
    mark = started

    def done(family: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        results["family_seconds"][family] = round(now - mark, 1)
        mark = now

    if "side_by_side" in families or "per_call" in families:
        rlms_side.ensure_venv()
        v = rlms_side.versions()
        results["machine"].update(rlms=v["rlms"], rlms_genai=v["google-genai"])
    else:
        results["machine"].update(rlms="not run", rlms_genai="-")
    # One fake and one server at the shipped defaults serve every family that does not
    # need settings of its own. The long block timeout is for the per-call loop.
    with FakeProc() as fake, ServerProc(fake.url, SANDBOX_BLOCK_TIMEOUT_SECONDS=600) as server:
        done("start")
        if "side_by_side" in families:
            print("side by side", file=sys.stderr, flush=True)
            rows = side_by_side.run_family(fake, server, [0.1] if quick else [0.0, 0.1, 1.0],
                                           quick)
            results["side_by_side"] = side_by_side.to_json(rows)
            done("side_by_side")
        if "startup" in families:
            results["startup"] = ours_alone.startup(fake, server, 3 if quick else 30)
            done("startup")
        if "contexts" in families:
            results["contexts"] = ours_alone.contexts(fake, [1, 10] if quick
                                                      else [1, 10, 100, 256])
            done("contexts")
        if "concurrency" in families:
            results["concurrency"] = ours_alone.concurrency(
                fake, server, [1, 8] if quick else [1, 8, 32, 64], 2 if quick else 3,
                latency=0.1)
            done("concurrency")
        if "per_call" in families:
            results["per_call"] = ours_alone.per_call(fake, server, 50 if quick else 400)
            done("per_call")
    results["wall_s"] = time.perf_counter() - started
    results["machine"]["load_end"] = _load()
    return results


def write(results: dict[str, Any], out: Path) -> None:
    img = out / "img"
    if "side_by_side" in results:
        for scenario in SIDE_BY_SIDE:
            plots.side_by_side(results["side_by_side"], scenario.name,
                               img / f"bench-{scenario.name}.png")
    if "startup" in results:
        plots.startup(results["startup"], img / "bench-startup.png")
    if "contexts" in results:
        plots.contexts(results["contexts"], img / "bench-contexts.png")
    if "concurrency" in results:
        plots.concurrency(results["concurrency"], img / "bench-concurrency.png")
    if "per_call" in results:
        plots.per_call(results["per_call"], img / "bench-percall.png")
    report.write(out / "performance.md", report.render(results))
    (out / "bench-results.json").write_text(json.dumps(results, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short form, under 2 minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "docs",
                        help="where performance.md, img/ and bench-results.json go")
    parser.add_argument("--only", nargs="+", choices=FAMILIES, help="run only these families")
    parser.add_argument("--note", default="", help="a line for the report (e.g. the load)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C, so the fake and the servers started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = run(args)
    write(results, args.out)
    print(f"wrote {args.out / 'performance.md'} in {results['wall_s']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
