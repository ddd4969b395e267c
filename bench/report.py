"""The generated section of docs/performance.md, from one suite's results.

The section sits between two markers; everything outside them (the history
of earlier measurements) is kept as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.trajectories import SIDE_BY_SIDE, STREAM_MODEL_CALLS

BEGIN = "<!-- bench:begin (written by `make bench`; edits inside are overwritten) -->"
END = "<!-- bench:end -->"
SYSTEMS = (("ours", "ours, shipped defaults (16 wide)"), ("ours-64", "ours, 64 wide"),
           ("rlms", "rlms 0.1.3"))


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    return f"{a / b:.2f}"


def side_by_side(rows: list[dict[str, Any]]) -> list[str]:
    out = ["### Side by side with rlms 0.1.3", "",
           "The same scripted trajectory through both systems against the same fake. "
           "**Ideal** is the model's critical path: the root turns plus the sub-call waves "
           "at that system's width (16 for rlms and our defaults, 64 for the wide "
           "configuration), times the fake latency. Cells: median (ratio to its ideal); "
           "the last column is ours at the shipped defaults divided by rlms.", "",
           "| scenario | fake latency | ideal (16 wide) | " +
           " | ".join(label for _, label in SYSTEMS) + " | ours / rlms |",
           "|---|---|---|---|---|---|---|"]
    for scenario in SIDE_BY_SIDE:
        for latency in sorted({r["latency"] for r in rows if r["scenario"] == scenario.name}):
            at = {r["system"]: r for r in rows
                  if r["scenario"] == scenario.name and r["latency"] == latency}
            cells = []
            for system, _ in SYSTEMS:
                row = at.get(system)
                if row is None:
                    cells.append("-")
                    continue
                text = f"{_s(row['median'])} ({_ratio(row['median'], row['ideal'])})"
                if row["errors"]:
                    text += f" **{len(row['errors'])} failed**"
                cells.append(text)
            ours, rlms = at.get("ours"), at.get("rlms")
            ideal = ours["ideal"] if ours else scenario.ideal(latency, 16)
            vs_rlms = _ratio(ours["median"] if ours else None, rlms["median"] if rlms else None)
            out.append(f"| {scenario.title} | {latency * 1000:g} ms | {_s(ideal)} | "
                       + " | ".join(cells) + " | "
                       + vs_rlms + " |")
    errors = sorted({(r["system"], e) for r in rows for e in r["errors"]})
    if errors:
        out += ["", "Failures:", *[f"- {system}: `{e}`" for system, e in errors[:10]]]
    out += [""] + [f"![{s.title}](img/bench-{s.name}.png)" for s in SIDE_BY_SIDE]
    return out


def startup(data: dict[str, Any]) -> list[str]:
    out = ["### Time to the first event and the first root turn", "",
           "One-turn runs at latency 0; *pooled* meets a warm REPL (pool of 2, refilled "
           "between runs), *cold* starts one per run (pool 0).", "",
           "| | first event median | p95 | first root turn median | p95 | failed |",
           "|---|---|---|---|---|---|"]
    for name in ("pooled", "cold"):
        d = data[name]
        fe, rt = d["first_event_ms"], d["first_root_turn_ms"]
        out.append(f"| {name} | {_ms(fe.get('median'))} | {_ms(fe.get('p95'))} | "
                   f"{_ms(rt.get('median'))} | {_ms(rt.get('p95'))} | {len(d['errors'])} |")
    return [*out, "", "![startup](img/bench-startup.png)"]


def contexts(rows: list[dict[str, Any]]) -> list[str]:
    out = ["### Large contexts", "",
           "A text context of the given size, one turn that prints `len(context)`, one "
           "that answers (latency 0). Peak RSS is VmHWM of the server process and of the "
           "REPL's guest Python, each divided by the context size.", "",
           "| context | first REPL output | end to end | server peak RSS (÷ size) | "
           "REPL peak RSS (÷ size) | result |", "|---|---|---|---|---|---|"]
    for r in rows:
        result = "ok" if r["ok"] else f"**failed**: `{r['error'][:160]}`"
        out.append(
            f"| {r['mib']} MiB | {_s(r['first_output_s'])} | {_s(r['total_s'])} | "
            f"{r['server_peak_mib']:.0f} MiB ({r['server_rss_per_context']:.2f}) | "
            f"{r['repl_peak_mib']:.0f} MiB ({r['repl_rss_per_context']:.2f}) | {result} |")
    return [*out, "", "![contexts](img/bench-contexts.png)"]


def concurrency(rows: list[dict[str, Any]]) -> list[str]:
    path = rows[0]["model_path_s"] if rows else 0.0
    out = ["### Concurrent streams", "",
           f"Each stream runs the same 3-turn trajectory with one `llm_query` "
           f"({STREAM_MODEL_CALLS} model calls on the path = {path:.1f} s) several times "
           "back to back, against one server at its shipped defaults (32 runs at once, "
           "pool of 2). Overhead = run time minus the model path.", "",
           "| streams | runs | failed | p50 overhead | p95 overhead | runs/s |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        fails = str(r["errors"]) + (f" (`{r['error_samples'][0][:80]}`)" if r["errors"] else "")
        out.append(f"| {r['streams']} | {r['runs']} | {fails} | {_ms(r['p50_overhead_ms'])} | "
                   f"{_ms(r['p95_overhead_ms'])} | {r['runs_per_s']:.2f} |")
    return [*out, "", "![concurrency](img/bench-concurrency.png)"]


def per_call(data: dict[str, Any]) -> list[str]:
    out = ["### Per-call overhead of `llm_query`", ""]
    if "error" in data:
        return [*out, f"**failed**: `{data['error']}`"]
    out += [f"{data['n']} sequential `llm_query` calls timed inside the REPL at latency 0; "
            "the fake's own handling time per request (measured in the fake) is subtracted. "
            "The same REPL code through rlms is shown for scale.", "",
            "| | `llm_query` median | p95 | fake's own time | **overhead** median | p95 | min |",
            "|---|---|---|---|---|---|---|"]
    for label, d in (("ours", data), ("rlms 0.1.3", data.get("rlms") or {})):
        if "llm_query_ms" not in d:
            out.append(f"| {label} | **failed**: `{d.get('error', 'not run')[:120]}` "
                       "| | | | | |")
            continue
        lq, ov = d["llm_query_ms"], d["overhead_ms"]
        out.append(f"| {label} | {_ms(lq['median'])} | {_ms(lq['p95'])} | "
                   f"{d['fake_ms_per_request']:.3f} ms | **{_ms(ov['median'])}** | "
                   f"{_ms(ov['p95'])} | {_ms(ov['min'])} |")
    return [*out, "", "![per-call](img/bench-percall.png)"]


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    head = [BEGIN, "## Benchmark suite (`make bench`)", "",
            f"Run {m['date']}{' in **quick** mode' if results['quick'] else ''}: "
            f"{m['cpus']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, kernel {m['kernel']}, "
            f"Python {m['python']}; rlms {m['rlms']} with google-genai {m['rlms_genai']} in "
            f".venv-rlms; load average {m['load_start']} at the start, {m['load_end']} at "
            f"the end; {results['wall_s']:.0f} s in all ("
            + ", ".join(f"{k} {v:.0f} s" for k, v in results["family_seconds"].items())
            + ").", ""]
    if results.get("note"):
        head += [results["note"], ""]
    head += ["Everything (client, server, sandboxed REPLs, the rlms process and the fake "
             "Gemini API in its own process) shares the same cores. Our server runs as a "
             "real `rlm-server` subprocess with the real sandbox; rlms runs in its own venv "
             "with its default `local` REPL, sent to the fake through "
             "`GOOGLE_GEMINI_BASE_URL`. Each fake call (root or sub) takes the stated "
             "latency. Raw figures: `bench-results.json`. Rerun: `make bench` "
             "(`make bench-quick` for the short form).", ""]
    body: list[str] = []
    if "side_by_side" in results:
        body += [*side_by_side(results["side_by_side"]), ""]
    sections: tuple[tuple[str, Callable[[Any], list[str]]], ...] = (
        ("startup", startup), ("contexts", contexts), ("concurrency", concurrency),
        ("per_call", per_call))
    for key, fn in sections:
        if key in results:
            body += [*fn(results[key]), ""]
    return "\n".join([*head, *body, END]) + "\n"


def write(path: Path, section: str) -> None:
    """Puts ``section`` in place of the old one, or right under the title."""
    old = path.read_text() if path.exists() else "# Performance\n"
    pattern = re.compile(re.escape(BEGIN.split(" (")[0]) + r".*?" + re.escape(END) + r"\n?",
                         re.DOTALL)
    if pattern.search(old):
        new = pattern.sub(lambda _: section, old, count=1)
    else:
        title, sep, rest = old.partition("\n")
        new = f"{title}{sep}\n{section}\n{rest.lstrip()}" if sep else f"{old}\n\n{section}"
    path.write_text(new)

