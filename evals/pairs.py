"""OOLONG-Pairs-style: every pair of user ids whose rows satisfy a label/date
condition, lower id first, one pair per line; scored by F1 over pairs."""

from __future__ import annotations

import itertools
import random
from datetime import date, timedelta
from typing import Literal

from evals.tasks import CHARS_PER_TOKEN, Task
from evals.trec import DAYS, LABELS, PREAMBLE, START, Row, format_day, make_rows, make_users, render

Condition = Literal["one", "either", "after"]
CONDITIONS: tuple[Condition, ...] = ("one", "either", "after")


def qualifies(rows: list[Row], test: Condition, a: str, b: str, after_day: date) -> set[int]:
    """Users with at least one row passing the condition's test."""
    good = set()
    for row in rows:
        if ((test == "one" and row.label == a) or (test == "either" and row.label in (a, b))
                or (test == "after" and row.label == a and row.day > after_day)):
            good.add(row.user)
    return good


def pairs_task(seed: int, tokens: int, condition: Condition) -> Task:
    rng = random.Random(f"oolong-pairs/{seed}/{tokens}/{condition}")
    users = make_users(rng, 40)
    rows = make_rows(rng, users, tokens * CHARS_PER_TOKEN)
    # The rarer labels keep the answer to a readable number of pairs.
    a, b = rng.sample(LABELS[3:], 2)
    after = START + timedelta(days=rng.randrange(DAYS // 2, DAYS - 60))
    if condition == "one":
        rule = f"labelled '{a}'"
    elif condition == "either":
        rule = f"labelled '{a}' or '{b}'"
    else:
        rule = f"labelled '{a}' dated after {format_day(after)}"
    good = sorted(qualifies(rows, condition, a, b, after))
    gold_pairs = list(itertools.combinations(good, 2))
    question = (f"List all pairs of user IDs (no duplicate pairs, list the lower ID first) "
                f"where both users have at least one instance {rule}. Give one pair per line "
                "as (ID1, ID2).")
    return Task(
        task_id=f"oolong-pairs-{condition}-{tokens}-{seed}", family="oolong-pairs",
        prompt=PREAMBLE + question, context=render(rows),
        gold="\n".join(f"({x}, {y})" for x, y in gold_pairs), metric="pairs",
        meta={"labels": [row.label for row in rows], "condition": condition, "a": a, "b": b,
              "after": after.isoformat(), "target_tokens": tokens, "pairs": len(gold_pairs)},
    )
