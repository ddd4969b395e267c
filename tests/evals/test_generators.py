"""The generators are deterministic, and their gold answers agree with a brute-force
recount from the context text and the hidden labels."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from datetime import date, datetime

import pytest

from evals.niah import niah_task
from evals.oolong import KINDS, oolong_task
from evals.pairs import CONDITIONS, pairs_task
from evals.scoring import parse_pairs
from evals.suite import quick_suite, select
from evals.trec import BANKS, LABELS

_ROW = re.compile(r"^Date: (\w{3} \d{2}, \d{4}) \|\| User: (\d+) \|\| Instance: (.+)$")


def _rows(context: str, labels: list[str]) -> list[tuple[date, int, str, str]]:
    """Parses every context line independently of the generator's own Row type."""
    lines = context.splitlines()
    assert len(lines) == len(labels)
    out = []
    for line, label in zip(lines, labels, strict=True):
        m = _ROW.match(line)
        assert m, line
        out.append((datetime.strptime(m[1], "%b %d, %Y").date(), int(m[2]), m[3], label))
    return out


def _from_bank(question: str, label: str) -> bool:
    """The question is an instance of one of its label's templates."""
    for template in BANKS[label]:
        pattern = re.escape(template)
        pattern = re.sub(r"\\\{\w+\\\}", ".+", pattern)
        if re.fullmatch(pattern, question):
            return True
    return False


@pytest.mark.parametrize("make", [
    lambda seed: niah_task(seed, 2 ** 13),
    lambda seed: oolong_task(seed, 2 ** 12, "compare"),
    lambda seed: pairs_task(seed, 2 ** 12, "after"),
])
def test_same_seed_same_task_other_seed_other_task(make) -> None:  # type: ignore[no-untyped-def]
    assert make(5) == make(5)
    assert make(5).context != make(6).context


@pytest.mark.parametrize("tokens", [2 ** 13, 2 ** 16, 2 ** 20])
def test_niah_has_exactly_one_needle_and_the_gold_is_its_value(tokens: int) -> None:
    task = niah_task(11, tokens)
    found = re.findall(r"One of the special magic numbers for ([\w-]+) is: (\d+)\.", task.context)
    assert found == [(task.meta["key"], task.gold)]
    assert task.meta["key"] in task.prompt
    assert abs(task.tokens - tokens) / tokens < 0.01
    # The rest is noise only.
    other = {line for line in task.context.splitlines() if "magic" not in line}
    assert other == {"The grass is green. The sky is blue. The sun is yellow. Here we go. "
                     "There and back again."}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oolong_gold_matches_a_recount(kind: str, seed: int) -> None:
    task = oolong_task(seed, 2 ** 12, kind)  # type: ignore[arg-type]
    rows = _rows(task.context, task.meta["labels"])
    assert all(_from_bank(q, label) for _, _, q, label in rows)
    counts = {label: 0 for label in LABELS}
    for *_, label in rows:
        counts[label] += 1
    if kind == "count":
        label = re.search(r"label '([^']+)'", task.prompt)[1]  # type: ignore[index]
        assert int(task.gold) == counts[label]
    elif kind in ("most", "least"):
        best = max(counts.values()) if kind == "most" else min(counts.values())
        winners = [label for label, n in counts.items() if n == best]
        assert winners == [task.gold]  # unique by construction
    else:
        a, b = re.findall(r"label '([^']+)'", task.prompt)
        expected = ("more common than" if counts[a] > counts[b] else "less common than"
                    if counts[a] < counts[b] else "same frequency as")
        assert task.gold == expected


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairs_gold_matches_a_brute_force_over_all_user_pairs(condition: str, seed: int) -> None:
    task = pairs_task(seed, 2 ** 12, condition)  # type: ignore[arg-type]
    rows = _rows(task.context, task.meta["labels"])
    a, b = task.meta["a"], task.meta["b"]
    after = date.fromisoformat(task.meta["after"])

    def passes(user: int) -> bool:
        for day, who, _, label in rows:
            if who != user:
                continue
            if condition == "one" and label == a:
                return True
            if condition == "either" and label in (a, b):
                return True
            if condition == "after" and label == a and day > after:
                return True
        return False

    users = sorted({who for _, who, _, _ in rows})
    expected = {(x, y) for x, y in itertools.combinations(users, 2) if passes(x) and passes(y)}
    assert parse_pairs(task.gold) == expected
    assert len(expected) == task.meta["pairs"]
    assert all(line.startswith("(") for line in task.gold.splitlines())


def test_quick_suite_covers_every_family_and_limit_caps_each() -> None:
    tasks = quick_suite()
    assert Counter(t.family for t in tasks).keys() == {"s-niah", "oolong", "oolong-pairs"}
    limited = select(tasks, None, 1)
    assert Counter(t.family for t in limited) == Counter({"s-niah": 1, "oolong": 1,
                                                          "oolong-pairs": 1})
    assert [t.family for t in select(tasks, {"oolong"}, None)] == ["oolong", "oolong"]
