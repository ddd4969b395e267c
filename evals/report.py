"""Per-family statistics, the JSON results file and the table in docs/evals.md."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals.runner import Record

OFFLINE_NOTE = "offline scripted model: plumbing, not model quality"
START, END = "<!-- eval-results:start -->", "<!-- eval-results:end -->"


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3), inclusive method; a single value is all three."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def summarise(records: Sequence[Record]) -> dict[str, dict[str, float]]:
    families: dict[str, list[Record]] = {}
    for record in records:
        families.setdefault(record.family, []).append(record)
    out = {}
    for family, group in families.items():
        scores = [r.score for r in group]
        q1, median, q3 = quartiles(scores)
        out[family] = {
            "tasks": len(group), "mean": statistics.fmean(scores), "q1": q1,
            "median": median, "q3": q3,
            "mean_cost_usd": statistics.fmean(r.cost_usd for r in group),
            "mean_latency_seconds": statistics.fmean(r.latency_seconds for r in group),
            "mean_iterations": statistics.fmean(r.iterations for r in group),
            "mean_sub_calls": statistics.fmean(r.sub_calls for r in group),
        }
    return out


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def results(records: Sequence[Record], *, backend: str, models: tuple[str, str],
            offline: bool, suite: str) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "backend": backend, "root_model": models[0], "sub_model": models[1], "suite": suite,
        "note": OFFLINE_NOTE if offline else "", "families": summarise(records),
        "tasks": [r.to_dict() for r in records],
    }


def write_json(data: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{data['backend']}-{data['suite']}.json"
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def table(data: dict[str, Any]) -> str:
    lines = [
        f"Run {data['date']} on {data['machine']}; backend `{data['backend']}` "
        f"(root `{data['root_model']}`, sub `{data['sub_model']}`), {data['suite']} suite.",
    ]
    if data["note"]:
        lines.append(f"**{data['note']}.**")
    lines += ["", "| family | tasks | mean | Q1 | median | Q3 | mean cost | mean latency | "
              "iterations | sub-calls |", "|---|---|---|---|---|---|---|---|---|---|"]
    for family, s in data["families"].items():
        lines.append(
            f"| {family} | {s['tasks']} | {s['mean']:.3f} | {s['q1']:.3f} | {s['median']:.3f} | "
            f"{s['q3']:.3f} | ${s['mean_cost_usd']:.4f} | {s['mean_latency_seconds']:.2f} s | "
            f"{s['mean_iterations']:.1f} | {s['mean_sub_calls']:.1f} |")
    lines += ["", "| task | tokens | score | stop | iterations | sub-calls | latency | cost |",
              "|---|---|---|---|---|---|---|---|"]
    for r in data["tasks"]:
        lines.append(f"| {r['task_id']} | {r['tokens']:,} | {r['score']:.3f} | "
                     f"{r['stop_reason']} | {r['iterations']} | {r['sub_calls']} | "
                     f"{r['latency_seconds']:.2f} s | ${r['cost_usd']:.4f} |")
    return "\n".join(lines)


def write_doc(data: dict[str, Any], path: Path) -> None:
    """Replaces the results between the markers of ``path`` (appends them if absent)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Evals\n"
    block = f"{START}\n{table(data)}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
