"""OOLONG-style aggregation over labelled rows: counts, most / least frequent
label, and comparisons between two labels (gold computed from the hidden labels)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Literal

from evals.tasks import CHARS_PER_TOKEN, Metric, Task
from evals.trec import LABELS, PREAMBLE, make_row, make_rows, make_users, render

Kind = Literal["count", "most", "least", "compare"]
KINDS: tuple[Kind, ...] = ("count", "most", "least", "compare")


def oolong_task(seed: int, tokens: int, kind: Kind) -> Task:
    rng = random.Random(f"oolong/{seed}/{tokens}/{kind}")
    users = make_users(rng, 60)
    rows = make_rows(rng, users, tokens * CHARS_PER_TOKEN)
    counts = Counter(row.label for row in rows)
    if kind in ("most", "least"):
        # A unique answer: break a tie at the top (bottom) with one more (fewer) row.
        ordered = sorted(LABELS, key=lambda label: counts[label], reverse=kind == "most")
        while counts[ordered[0]] == counts[ordered[1]]:
            rows.append(make_row(rng, users, ordered[0] if kind == "most" else ordered[1]))
            counts = Counter(row.label for row in rows)
            ordered = sorted(LABELS, key=lambda label: counts[label], reverse=kind == "most")
    meta: dict[str, object] = {"labels": [row.label for row in rows], "counts": dict(counts),
                               "target_tokens": tokens, "kind": kind}
    metric: Metric
    if kind == "count":
        label = rng.choice(LABELS)
        question = (f"How many data points should be classified as label '{label}'? "
                    "Answer with a number.")
        gold, metric = str(counts[label]), "numeric"
    elif kind in ("most", "least"):
        question = (f"Which label is the {kind} common label among the data points? "
                    "Answer with the label only.")
        gold, metric = ordered[0], "exact"
    else:
        a, b = rng.sample(LABELS, 2)
        question = (f"Is label '{a}' more common, less common, or the same frequency as label "
                    f"'{b}'? Answer with exactly one of: more common than, less common than, "
                    "same frequency as.")
        gold = ("more common than" if counts[a] > counts[b] else
                "less common than" if counts[a] < counts[b] else "same frequency as")
        metric = "exact"
    return Task(task_id=f"oolong-{kind}-{tokens}-{seed}", family="oolong",
                prompt=PREAMBLE + question, context=render(rows), gold=gold,
                metric=metric, meta=meta)
