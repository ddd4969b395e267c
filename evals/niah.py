"""S-NIAH, RULER-style: one needle in a noise haystack.

The needle is "One of the special magic numbers for {key} is: {value}."; the
haystack is RULER's repeated noise ("The grass is green. ..."), one repetition
per line, cut to the target length (tokens = characters / 4).
"""

from __future__ import annotations

import random

from evals.tasks import CHARS_PER_TOKEN, Task

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
ADJECTIVES = ("calm", "bright", "hollow", "silent", "amber", "rapid", "frozen", "gentle",
              "crooked", "distant", "golden", "humble", "lively", "misty", "noble", "rustic")
NOUNS = ("river", "harbor", "falcon", "meadow", "lantern", "canyon", "orchard", "glacier",
         "compass", "thistle", "beacon", "quarry", "willow", "anchor", "ember", "summit")
NEEDLE = "One of the special magic numbers for {key} is: {value}."
QUESTION = "What is the special magic number for {key} mentioned in the provided text?"


def niah_task(seed: int, tokens: int) -> Task:
    rng = random.Random(f"s-niah/{seed}/{tokens}")
    key = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
    value = str(rng.randint(1_000_000, 9_999_999))
    needle = NEEDLE.format(key=key, value=value)
    budget = tokens * CHARS_PER_TOKEN - len(needle) - 1
    lines = [NOISE] * max(1, budget // (len(NOISE) + 1))
    depth = rng.random()
    at = round(depth * len(lines))
    lines.insert(at, needle)
    return Task(
        task_id=f"s-niah-{tokens}-{seed}", family="s-niah",
        prompt=QUESTION.format(key=key), context="\n".join(lines) + "\n",
        gold=value, metric="contains",
        meta={"key": key, "depth": round(depth, 3), "line": at, "target_tokens": tokens},
    )
