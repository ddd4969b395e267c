"""Which tasks a run has: the full suite, the quick one, and --limit."""

from __future__ import annotations

from evals.niah import niah_task
from evals.oolong import KINDS, oolong_task
from evals.pairs import CONDITIONS, pairs_task
from evals.tasks import Task

NIAH_LENGTHS = tuple(2 ** k for k in range(13, 21))  # 8K .. 1M tokens
OOLONG_TOKENS = 2 ** 17  # the paper's OOLONG split is 131K tokens
PAIRS_TOKENS = 2 ** 15  # and OOLONG-Pairs 32K
SEEDS = (0, 1)


def full_suite() -> list[Task]:
    tasks = [niah_task(seed, n) for n in NIAH_LENGTHS for seed in SEEDS[:1]]
    tasks += [oolong_task(seed, OOLONG_TOKENS, kind) for seed in SEEDS for kind in KINDS]
    tasks += [pairs_task(seed, PAIRS_TOKENS, c) for seed in SEEDS for c in CONDITIONS]
    return tasks


def quick_suite() -> list[Task]:
    return [niah_task(0, 2 ** 13), niah_task(0, 2 ** 15),
            oolong_task(0, 2 ** 13, "count"), oolong_task(0, 2 ** 13, "most"),
            pairs_task(0, 2 ** 13, "one")]


def select(tasks: list[Task], families: set[str] | None, limit: int | None) -> list[Task]:
    """The tasks of ``families`` (all when None), at most ``limit`` per family, in order."""
    kept: list[Task] = []
    seen: dict[str, int] = {}
    for task in tasks:
        if families and task.family not in families:
            continue
        if limit is not None and seen.get(task.family, 0) >= limit:
            continue
        seen[task.family] = seen.get(task.family, 0) + 1
        kept.append(task)
    return kept
