"""The answer checker the sim judges success with (`stillflow.answers.answers_match`), on the sim's answers."""

from __future__ import annotations

import random

import pytest

from sim.policies import correct_answer, wrong_answer
from sim.tasks import FAMILIES, get_suite
from stillflow.answers import answers_match


@pytest.mark.parametrize(
    "answer,truth",
    [
        ("$1,250,000", "1250000"),
        ("The budget of project Orca-34 is $1,250,000.", "1250000"),
        ("That gives $88.52.", "88.52"),
        ("about 42.0", "42"),
        ("42.00001", "42"),  # within the relative tolerance
        ("The loyalty tier of customer C-00519: silver", "silver"),
        ("SILVER", "silver"),
        ("The answer is: Lisbon.", "lisbon"),
        ("It's North America.", "North America"),
        ("pablo.kaur@example.com", "pablo.kaur@example.com"),
        ("The owner of project Lark-31 is Oscar Kowalski.", "Oscar Kowalski"),
        ("at risk", "at risk"),
    ],
)
def test_matches(answer: str, truth: str) -> None:
    assert answers_match(answer, truth)


@pytest.mark.parametrize(
    "answer,truth",
    [
        ("$1,260,000", "1250000"),
        ("$1,250,200", "1250000"),  # beyond the 1e-4 relative tolerance
        ("88.5", "88.52"),
        ("42 then 43", "42"),  # the last number counts
        ("no numbers here", "42"),
        ("silverware", "silver"),  # whole words only
        ("gold", "silver"),
        ("Lisbo", "lisbon"),
        ("", "silver"),
        (None, "silver"),
        ("silver", None),
    ],
)
def test_does_not_match(answer: str | None, truth: str | None) -> None:
    assert not answers_match(answer, truth)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_teachers_phrasings_are_judged_as_intended(family: str) -> None:
    """Every way the teacher states a right answer matches; every wrong answer it makes up does not."""
    suite = get_suite(0)
    fam = suite.families[family]
    rng = random.Random(family)
    for _ in range(300):
        task = fam.instance(rng.randrange(fam.size))
        assert answers_match(correct_answer(rng, task), task.ground_truth), task.task_id
        assert answers_match(task.answer, task.ground_truth), task.task_id
        wrong = wrong_answer(rng, task)
        assert not answers_match(wrong, task.ground_truth), (task.task_id, wrong, task.ground_truth)
