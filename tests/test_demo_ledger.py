"""The demo's bookkeeping (pure): events in, phases, per-phase figures, cost and the timeline out."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stillflow.contracts import (
    AgentTrace,
    DatasetWindowClosed,
    ModelVersionEvent,
    RouteDecision,
    ScoredTrace,
    TraceOutcomeEvent,
    TrainingRunEvent,
    TrajectoryScore,
)
from stillflow.demo_ledger import CostModel, Ledger, Outcome, parse_served_by, phase_stats, segment_phases, timeline

T0 = 1_800_000_000.0


def at(s: float) -> datetime:
    return datetime.fromtimestamp(T0 + s, UTC)


def decision(s: float, trace: str, served_by: str, version: str | None = None, reason: str = "no_student",
             canary: bool = False) -> RouteDecision:
    return RouteDecision(timestamp=at(s), trace_id=trace, request_id=f"r-{trace}-{s}", served_by=served_by,
                         student_version=version, reason=reason, canary=canary)


def outcome(s: float, trace: str, success: bool, tokens: int, cost: float, served: str) -> TraceOutcomeEvent:
    return TraceOutcomeEvent(timestamp=at(s), trace_id=trace, task_id="task-1", n_steps=2, input_text="q",
                             success=success, total_tokens=tokens, cost_usd=cost, metadata={"served_by": served})


def scored(s: float, trace: str, passed: bool, rejected: list[str], served: str) -> ScoredTrace:
    score = TrajectoryScore(correctness=1, efficiency=1, tool_selection=1, safety=1, reasoning_quality=1, overall=1)
    trace_ = AgentTrace(trace_id=trace, task_id="task-1", input_text="q", metadata={"served_by": served})
    return ScoredTrace(timestamp=at(s), trace=trace_, score=score, passed=passed, rejected_by=rejected)


def test_served_by_label_parses_to_turns_per_server() -> None:
    assert parse_served_by("teacher:3,v0001:2") == {"teacher": 3, "v0001": 2}
    assert parse_served_by(None) == {} and parse_served_by("garbage,teacher:x") == {}


def test_phases_start_where_the_router_first_serves_with_a_version() -> None:
    ds = [
        decision(1, "a", "teacher"), decision(2, "b", "teacher"),
        decision(10, "c", "v0001", "v0001", "confident"),
        decision(11, "a", "teacher", reason="no_student"),  # in flight across the switch: a straggler
        decision(12, "d", "teacher", None, "sticky"),  # says nothing about what is live
        decision(40, "e", "v0002", "v0002", "confident"),
        decision(41, "f", "teacher", "v0001", "below_threshold"),  # straggler of v0001
        decision(90, "g", "teacher", "v0001", "below_threshold"),  # a real rollback, later
    ]
    ledger = Ledger()
    for d in ds:
        assert ledger.add(d)
    phases = segment_phases(ledger.decisions, T0, settle_s=5)
    assert [(p.version, p.start - T0, None if p.end is None else p.end - T0) for p in phases] == [
        (None, 0, 10), ("v0001", 10, 40), ("v0002", 40, 90), ("v0001", 90, None)]
    assert phases[0].label == "teacher-only" and phases[1].label == "student v0001"


def test_canary_decisions_do_not_switch_the_phase() -> None:
    ledger = Ledger()
    ledger.add(decision(1, "a", "teacher"))
    ledger.add(decision(5, "b", "v0002", "v0002", "confident", canary=True))
    assert [p.version for p in segment_phases(ledger.decisions, T0)] == [None]


def test_ledger_drops_duplicates_and_events_before_the_start() -> None:
    ledger = Ledger(since=T0)
    d = decision(3, "a", "teacher")
    assert ledger.add(d) and not ledger.add(d)  # redelivered: same event id
    assert not ledger.add(decision(-5, "old", "teacher"))  # an earlier run's event
    o = outcome(4, "a", True, 100, 0.001, "teacher:1")
    assert ledger.add(o) and not ledger.add(outcome(5, "a", False, 1, 0, "teacher:1"))  # one outcome per trace
    assert ledger.requests == 1 and len(ledger.outcomes) == 1 and ledger.outcomes["a"].success


def test_cost_model_splits_mixed_episodes_by_the_teachers_reported_cost() -> None:
    cm = CostModel(teacher_price_per_1k=0.01, student_price_per_1k=0.0005)
    assert cm.split_tokens(Outcome(0, "t", True, 1000, 0.01, {"teacher": 3})) == (1000, 0)
    assert cm.split_tokens(Outcome(0, "t", True, 1000, 0.0, {"v0001": 3})) == (0, 1000)
    # 400 teacher tokens cost $0.004 at $0.01/1k: the other 600 are the student's
    assert cm.split_tokens(Outcome(0, "t", True, 1000, 0.004, {"v0001": 2, "teacher": 1})) == (400, 600)
    # no reported cost: split by turns
    assert cm.split_tokens(Outcome(0, "t", True, 900, 0.0, {"v0001": 2, "teacher": 1})) == (300, 600)
    assert cm.cost(1000, 2000) == pytest.approx(0.01 + 0.001)
    with pytest.raises(ValueError):
        CostModel(-1, 0)


def _flywheel_ledger() -> Ledger:
    """Teacher-only for 60 s, then v0001 serves most requests."""
    ledger = Ledger(since=T0)
    for i in range(20):  # teacher-only: 20 episodes of 2 requests, 18 succeed, 1000 teacher tokens each
        tr = f"t{i}"
        ledger.add(decision(i * 2, tr, "teacher"))
        ledger.add(decision(i * 2 + 1, tr, "teacher"))
        ledger.add(outcome(i * 2 + 1.5, tr, i >= 2, 1000, 0.01, "teacher:2"))
        ledger.add(scored(i * 2 + 3, tr, i >= 5, [] if i >= 5 else ["ground_truth", "min_score"], "teacher:2"))
    for i in range(20):  # student: 16 episodes all-student (800 tokens), 4 escalated (200 student + 1000 teacher)
        tr = f"s{i}"
        if i < 16:
            ledger.add(decision(60 + i * 2, tr, "v0001", "v0001", "confident"))
            ledger.add(decision(61 + i * 2, tr, "v0001", "v0001", "confident"))
            ledger.add(outcome(61.5 + i * 2, tr, i != 0, 800, 0.0, "v0001:2"))
            ledger.add(scored(63 + i * 2, tr, True, [], "v0001:2"))
        else:
            ledger.add(decision(60 + i * 2, tr, "v0001", "v0001", "confident"))
            ledger.add(decision(61 + i * 2, tr, "teacher", "v0001", "below_threshold"))
            ledger.add(outcome(61.5 + i * 2, tr, True, 1200, 0.01, "teacher:1,v0001:1"))
            ledger.add(scored(63 + i * 2, tr, True, [], "teacher:1,v0001:1"))
    return ledger


def test_phase_stats_count_requests_episodes_cost_and_gates_per_phase() -> None:
    ledger = _flywheel_ledger()
    phases = segment_phases(ledger.decisions, T0)
    teacher, student = phase_stats(ledger, phases, CostModel(0.01, 0.0005))
    assert (teacher.requests, teacher.student_requests, teacher.episodes, teacher.successes) == (40, 0, 20, 18)
    assert teacher.student_share == 0 and teacher.success_rate == 0.9
    assert teacher.cost_per_task == pytest.approx(0.01)
    assert teacher.gate_rejections == {"ground_truth": 5, "min_score": 5} and teacher.passed == 15
    assert (student.requests, student.student_requests, student.episodes, student.successes) == (40, 36, 20, 19)
    assert student.student_share == pytest.approx(0.9)
    # 16 x 800 student tokens + 4 x (1000 teacher + 200 student)
    assert (student.teacher_tokens, student.student_tokens) == (4000, 16 * 800 + 4 * 200)
    assert student.cost_per_task == pytest.approx((4 * 0.01 + 13.6 * 0.0005) / 20)
    assert student.passed_from_teacher == 4  # the escalated episodes are training data from fallbacks
    d = student.to_dict(T0, T0 + 100)
    assert d["label"] == "student v0001" and d["start_s"] == 60 and d["end_s"] == 100


def test_episodes_belong_to_the_phase_their_first_request_fell_in() -> None:
    ledger = Ledger(since=T0)
    ledger.add(decision(1, "x", "teacher"))
    ledger.add(decision(5, "y", "v0001", "v0001", "confident"))
    ledger.add(outcome(8, "x", True, 10, 0.0001, "teacher:1"))  # ends after the switch, started before
    ledger.add(outcome(9, "z", True, 10, 0.0, "v0001:1"))  # no decision seen: by its own time
    stats = phase_stats(ledger, segment_phases(ledger.decisions, T0), CostModel())
    assert [s.episodes for s in stats] == [1, 1]


def test_timeline_bins_share_and_success() -> None:
    ledger = _flywheel_ledger()
    bins = timeline(ledger, T0, T0 + 100, 20)
    assert len(bins) == 6
    assert bins[0]["student_share"] == 0 and bins[0]["requests"] == 20
    assert bins[3]["student_share"] == 1.0  # 60..80 s: all student
    assert bins[4]["student_share"] < 1.0  # 80..100 s: the escalations
    assert bins[0]["success_rate"] == pytest.approx(8 / 10)
    assert bins[5]["requests"] == 0 and bins[5]["student_share"] is None
    with pytest.raises(ValueError):
        timeline(ledger, T0, T0 + 1, 0)


def test_runs_versions_and_windows_are_recorded() -> None:
    ledger = Ledger(since=T0)
    ledger.add(TrainingRunEvent(timestamp=at(1), run_id="run-1", status="requested", model_name="student",
                                n_new_examples=150))
    ledger.add(TrainingRunEvent(timestamp=at(2), run_id="run-1", status="started", model_name="student",
                                n_new_examples=150))
    assert [r.run_id for r in ledger.runs_in_progress()] == ["run-1"]
    ledger.add(TrainingRunEvent(timestamp=at(50), run_id="run-1", status="finished", model_name="student",
                                version="v0001"))
    assert ledger.runs_in_progress() == []
    ledger.add(ModelVersionEvent(timestamp=at(49), model_name="student", version="v0001", status="promoted",
                                 metrics={"quality_ratio": 0.93}, confidence_threshold=0.8))
    assert [v.version for v in ledger.promotions()] == ["v0001"]
    ledger.add(DatasetWindowClosed(timestamp=at(3), window_id="w-1", window_start=at(0), window_end=at(10),
                                   n_sft=7, n_pairs=2))
    assert ledger.sft_examples == 7
