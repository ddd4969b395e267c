"""The scorers on hand-made answers."""

from __future__ import annotations

import pytest

from evals.scoring import (
    contains_score,
    exact_score,
    normalise,
    numeric_score,
    pair_f1,
    parse_pairs,
    score,
)


@pytest.mark.parametrize(("answer", "gold", "expected"), [
    ("42", 42, 1.0),
    ("41", 42, 0.75),
    ("There are 44 of them.", 42, 0.75 ** 2),
    ("1,002", 1000, 0.75 ** 2),
    ("-3", 0, 0.75 ** 3),
    ("none", 5, 0.0),
    ("", 5, 0.0),
])
def test_numeric_answers_score_0_75_to_the_error(answer: str, gold: int, expected: float) -> None:
    assert numeric_score(answer, gold) == pytest.approx(expected)


@pytest.mark.parametrize(("answer", "gold", "expected"), [
    ("Location", "location", 1.0),
    ("  'location'. ", "location", 1.0),
    ("Answer: description   and abstract concept", "description and abstract concept", 1.0),
    ("**entity**", "entity", 1.0),
    ("location, I think", "location", 0.0),
    ("human", "human being", 0.0),
    ("more common than", "less common than", 0.0),
])
def test_other_answers_need_an_exact_match_after_normalisation(
        answer: str, gold: str, expected: float) -> None:
    assert exact_score(answer, gold) == expected


def test_normalise() -> None:
    assert normalise(' "Label: Numeric  Value." ') == "numeric value"


def test_niah_needs_the_value_somewhere_in_the_answer() -> None:
    assert contains_score("The special magic number is 1234567.", "1234567") == 1.0
    assert contains_score("123456", "1234567") == 0.0


def test_pairs_parse_in_either_order_and_either_shape() -> None:
    assert parse_pairs("(3, 1)\n2,5 and (7,7)") == {(1, 3), (2, 5)}


@pytest.mark.parametrize(("answer", "gold", "expected"), [
    ("(1, 2)\n(1, 3)", "(1, 2)\n(1, 3)", 1.0),
    ("(2, 1)\n(3, 1)", "(1, 2)\n(1, 3)", 1.0),
    # 1 of 2 predicted right (precision 1/2), 1 of 4 found (recall 1/4): F1 = 1/3.
    ("(1, 2)\n(8, 9)", "(1, 2)\n(1, 3)\n(1, 4)\n(1, 5)", 1 / 3),
    ("(8, 9)", "(1, 2)", 0.0),
    ("", "(1, 2)", 0.0),
    ("no pairs", "", 1.0),
    ("(1, 2)", "", 0.0),
])
def test_pair_f1(answer: str, gold: str, expected: float) -> None:
    assert pair_f1(answer, gold) == pytest.approx(expected)


def test_score_dispatches_on_the_metric() -> None:
    assert score("numeric", "9", "10") == 0.75
    assert score("exact", "Entity", "entity") == 1.0
    assert score("contains", "it is 77", "77") == 1.0
    assert score("pairs", "(1, 2)", "(1, 2)\n(3, 4)") == pytest.approx(2 / 3)
