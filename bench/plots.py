"""One PNG per benchmark family (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.trajectories import ALL

COLORS = {"ideal": "#bbbbbb", "ours": "#1f77b4", "ours-64": "#17becf", "rlms": "#d62728"}


def side_by_side(rows: list[dict[str, Any]], scenario: str, path: Path) -> None:
    mine = [r for r in rows if r["scenario"] == scenario]
    latencies = sorted({r["latency"] for r in mine})
    systems = [s for s in ("ours", "ours-64", "rlms") if any(r["system"] == s for r in mine)]
    fig, axes = plt.subplots(1, len(latencies), figsize=(3.6 * len(latencies), 3.4),
                             squeeze=False)
    for ax, latency in zip(axes[0], latencies, strict=True):
        at = {r["system"]: r for r in mine if r["latency"] == latency}
        labels = ["ideal", *systems]
        ideal = min(r["ideal"] for r in at.values())
        values = [ideal] + [at[s]["median"] or 0.0 for s in systems]
        bars = ax.bar(labels, values, color=[COLORS[label] for label in labels])
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, value),
                        ha="center", va="bottom", fontsize=8)
        ax.set_title(f"fake latency {latency * 1000:g} ms", fontsize=9)
        ax.set_ylabel("seconds (median)")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(ALL[scenario].title, fontsize=10)
    _save(fig, path)


def startup(data: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    names = ["pooled", "cold"]
    width = 0.35
    for i, key in enumerate(("first_event_ms", "first_root_turn_ms")):
        med = [data[n][key].get("median", 0.0) for n in names]
        p95 = [data[n][key].get("p95", 0.0) for n in names]
        xs = [x + i * width for x in range(len(names))]
        ax.bar(xs, med, width, label=f"{key.removesuffix('_ms').replace('_', ' ')} (median)")
        ax.scatter(xs, p95, marker="_", s=200, color="black")
    ax.set_xticks([x + width / 2 for x in range(len(names))],
                  ["pool of 2 (warm)", "pool 0 (cold)"])
    ax.set_ylabel("ms (bar: median, tick: p95)")
    ax.set_title("Time to first event and to the first root turn (latency 0)", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def contexts(rows: list[dict[str, Any]], path: Path) -> None:
    ok = [r for r in rows if r["ok"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    sizes = [r["mib"] for r in ok]
    a.plot(sizes, [r["first_output_s"] for r in ok], "o-", label="first REPL output")
    a.plot(sizes, [r["total_s"] for r in ok], "s-", label="end to end")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("context (MiB)")
    a.set_ylabel("seconds")
    a.legend(fontsize=8)
    b.plot(sizes, [r["server_rss_per_context"] for r in ok], "o-", label="server peak RSS")
    b.plot(sizes, [r["repl_rss_per_context"] for r in ok], "s-", label="REPL peak RSS")
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xlabel("context (MiB)")
    b.set_ylabel("peak RSS / context size")
    b.legend(fontsize=8)
    failed = [str(r["mib"]) for r in rows if not r["ok"]]
    note = f" (failed: {', '.join(failed)} MiB)" if failed else ""
    fig.suptitle(f"Large contexts{note}", fontsize=10)
    _save(fig, path)


def concurrency(rows: list[dict[str, Any]], path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    streams = [r["streams"] for r in rows]
    a.plot(streams, [r["p50_overhead_ms"] or 0 for r in rows], "o-", label="p50")
    a.plot(streams, [r["p95_overhead_ms"] or 0 for r in rows], "s-", label="p95")
    a.set_xlabel("concurrent streams")
    a.set_ylabel("overhead over the model path (ms)")
    a.legend(fontsize=8)
    b.plot(streams, [r["runs_per_s"] for r in rows], "o-", color="green")
    b.set_xlabel("concurrent streams")
    b.set_ylabel("runs per second")
    fig.suptitle("Concurrent streams (fake latency 100 ms)", fontsize=10)
    _save(fig, path)


def per_call(data: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for label, d, color in (("ours", data, COLORS["ours"]),
                            ("rlms 0.1.3", data.get("rlms") or {}, COLORS["rlms"])):
        samples = d.get("overhead_samples") or []
        median = d.get("overhead_ms", {}).get("median")
        if not samples or median is None:
            continue
        ax.hist(samples, bins=40, color=color, alpha=0.6,
                label=f"{label}: median {median:.2f} ms")
        ax.axvline(median, color=color, linestyle="--")
    ax.legend(fontsize=8)
    ax.set_xlabel("llm_query overhead, fake's own time subtracted (ms)")
    ax.set_ylabel("calls")
    ax.set_title("Per-call overhead of llm_query", fontsize=10)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
