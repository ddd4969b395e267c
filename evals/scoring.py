"""The paper's scorers: 0.75^|error| for numbers, exact match after normalisation
for labels and comparisons, string containment for S-NIAH (RULER), F1 over pairs."""

from __future__ import annotations

import re

from evals.tasks import Metric

_PREFIX = re.compile(r"^(?:final answer|answer|label)\s*[:=-]\s*", re.I)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_PAIR = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)|\b(\d+)\s*,\s*(\d+)\b")


def normalise(text: str) -> str:
    """Lower case, no quotes or backticks, no 'answer:' prefix, no final period,
    single spaces."""
    text = text.strip().lower()
    text = re.sub(r"[\"'`*]", "", text)
    text = _PREFIX.sub("", text).strip()
    text = text.rstrip(".").strip()
    return re.sub(r"\s+", " ", text)


def numeric_score(answer: str, gold: int) -> float:
    """0.75 ** |answer - gold| for the first number in the answer; 0 without one."""
    match = _NUMBER.search(answer.replace(",", ""))
    if match is None:
        return 0.0
    return float(0.75 ** abs(float(match.group()) - gold))


def exact_score(answer: str, gold: str) -> float:
    return 1.0 if normalise(answer) == normalise(gold) else 0.0


def contains_score(answer: str, gold: str) -> float:
    return 1.0 if normalise(gold) in normalise(answer) else 0.0


def parse_pairs(text: str) -> set[tuple[int, int]]:
    """Unordered id pairs written as ``(a, b)`` or ``a, b``; a pair of one id is dropped."""
    pairs = set()
    for m in _PAIR.finditer(text):
        x, y = (int(g) for g in (m.group(1, 2) if m.group(1) else m.group(3, 4)))
        if x != y:
            pairs.add((min(x, y), max(x, y)))
    return pairs


def pair_f1(answer: str, gold: str) -> float:
    predicted, truth = parse_pairs(answer), parse_pairs(gold)
    if not predicted and not truth:
        return 1.0
    hits = len(predicted & truth)
    if not hits:
        return 0.0
    precision, recall = hits / len(predicted), hits / len(truth)
    return 2 * precision * recall / (precision + recall)


def score(metric: Metric, answer: str, gold: str) -> float:
    if metric == "numeric":
        return numeric_score(answer, int(gold))
    if metric == "exact":
        return exact_score(answer, gold)
    if metric == "contains":
        return contains_score(answer, gold)
    return pair_f1(answer, gold)
