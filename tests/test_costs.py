"""The cost model (stillflow.costs): one price for an episode, whether read from its outcome or its trace."""

from __future__ import annotations

import pytest

from stillflow.contracts import AgentTrace
from stillflow.costs import CostModel, parse_served_by, student_turns
from stillflow.demo_ledger import CostModel as LedgerCostModel
from stillflow.demo_ledger import Outcome
from stillflow.demo_ledger import parse_served_by as ledger_parse


def test_the_demo_ledger_names_are_the_cost_modules() -> None:
    assert LedgerCostModel is CostModel and ledger_parse is parse_served_by


def test_student_turns_count_everyone_but_the_teacher_and_nobody() -> None:
    assert student_turns({"teacher": 2, "v0001": 1, "v0002": 3, "none": 4}) == 4


@pytest.mark.parametrize(("served", "cost", "expected"), [
    ("teacher:3", 0.0, (1000, 0)),  # the teacher alone: all its tokens
    ("v0001:2", 0.0, (0, 1000)),  # the student alone
    ("teacher:1,v0001:1", 0.004, (400, 600)),  # mixed: the teacher's tokens from its reported cost
    ("teacher:1,v0001:3", 0.0, (250, 750)),  # mixed, no cost reported: by turns
    ("", 0.0, (1000, 0)),  # an SDK trace names no server: the teacher's
])
def test_a_trace_costs_what_its_outcome_costs(served: str, cost: float, expected: tuple[int, int]) -> None:
    cm = CostModel(0.01, 0.0005)
    trace = AgentTrace(task_id="t", input_text="q", total_tokens=1000, cost_usd=cost,
                       metadata={"served_by": served} if served else {})
    outcome = Outcome(0.0, trace.trace_id, True, 1000, cost, parse_served_by(served))
    assert cm.split_trace(trace) == cm.split_tokens(outcome) == expected
    assert cm.trace_cost(trace) == pytest.approx(cm.episode_cost(outcome))
    assert cm.trace_cost(trace) == pytest.approx(expected[0] / 1000 * 0.01 + expected[1] / 1000 * 0.0005)
