"""`stillflow.answers.answers_match` on truths that real agents' tasks have: several numbers, several items,
money, dates — a table of answers that state the truth, and of traps that look like it but do not."""

from __future__ import annotations

import pytest

from stillflow.answers import answers_match, extract_numbers, truth_items

# (truth, answer): the answer states exactly the truth
MATCHES = [
    ("0 4", "0 4"),  # the real trace that failed: two file ids
    ("0 4", "The matching files are 0 and 4."),
    ("0 4", "4, 0"),
    ("0 4", "The 2 files are 0 and 4"),  # a count of the items is not an item
    ("3, 7, 12", "12, 3 and 7"),
    ("3, 7, 12", "IDs: 3; 7; 12"),
    ("[3, 7]", "3 and 7"),
    ('["a", "b"]', "b and a"),
    ('["alice@example.com", "bob@example.com"]', "Sent to bob@example.com and alice@example.com."),
    ("Paris and Rome", "Rome and Paris"),
    ("Paris and Rome", "The cities are Paris, Rome."),
    ("red; green", "green & red"),
    ("Washington, D.C.", "Washington, D.C."),
    ("£1,050.00", "The balance is £1,050.00"),
    ("£1,050.00", "1050"),
    ("1050", "£1,050.00"),
    ("42", "about 42.0"),
    ("42", "The total for order Orca-34 is 42."),  # an id's digits are not a number
    ("12%", "It grew by 12 percent"),
    ("88.52", "That gives $88.52."),
    ("-12.5", "The change was -12.5 points"),
    ("2024-03-15", "The meeting is on 2024-03-15."),
    ("15", "On 2024-03-15 it cost 15"),  # a date is not three numbers
    ("silver", "The loyalty tier is Silver."),
    ("North America", "It's North America."),
]

# (truth, answer): traps — one digit off, an item missing, a wrong item added, the question's numbers
TRAPS = [
    ("0 4", "04"),
    ("0 4", "0"),
    ("0 4", "0 and 5"),
    ("0 4", "0, 4 and 7"),
    ("3, 7, 12", "3, 7, 13"),
    ("3, 7, 12", "3 and 12"),
    ("3, 7, 12", "3, 7, 12, 15"),
    ("[3, 7]", "3"),
    ('["a", "b"]', "a"),
    ('["a", "b"]', "a, b and c"),
    ("Paris and Rome", "Paris"),
    ("Paris and Rome", "Paris, Rome and Berlin"),
    ("Paris and Rome", "Berlin, Paris and Rome"),
    ("Paris and Rome", "Paris, Berlin and Rome"),
    ("red; green", "red"),
    ("£1,050.00", "£1,060.00"),
    ("£1,050.00", "£1,050.50"),
    ("1050", "1,051"),
    ("42", "Orders 41 and 42 total 43"),  # the question's numbers quoted: the last one counts
    ("42", "42 then 43"),
    ("42", "x42"),  # glued to a word: not a number
    ("88.52", "88.5"),
    ("15", "On 2024-03-15 it was free"),  # the date's 15 is not an answer
    ("2024-03-15", "2024-03-16"),
    ("silver", "silverware"),
]


@pytest.mark.parametrize(("truth", "answer"), MATCHES)
def test_answers_that_state_the_truth_match(truth: str, answer: str) -> None:
    assert answers_match(answer, truth)


@pytest.mark.parametrize(("truth", "answer"), TRAPS)
def test_traps_do_not_match(truth: str, answer: str) -> None:
    assert not answers_match(answer, truth)


def test_the_table_is_big_enough_and_half_traps() -> None:
    assert len(MATCHES) + len(TRAPS) >= 40 and len(TRAPS) >= (len(MATCHES) + len(TRAPS)) // 2


@pytest.mark.parametrize(("truth", "items"), [
    ("0 4", ["0", "4"]), ("3, 7, 12", ["3", "7", "12"]), ("£1,050.00", ["1050"]), ("[3, 7]", ["3", "7"]),
    ('["a", "b"]', ["a", "b"]), ("Paris and Rome", ["paris", "rome"]), ("2024-03-15", ["2024-03-15"]),
    ("Oscar Kowalski", ["oscar kowalski"]), ("1,250,000", ["1.25e+06"]),
])
def test_how_truths_are_read(truth: str, items: list[str]) -> None:
    assert truth_items(truth) == items


def test_numbers_are_standalone() -> None:
    assert extract_numbers("Orca-34 costs $1,250,000 on 2024-03-15 at 10:30, v2 of user_task_0, -3") == [1250000, -3]
