"""When the demo moves on and when it stops (pure)."""

from __future__ import annotations

import pytest

from stillflow.demo_phases import Budgets, Progress, decide

B = Budgets(teacher_phase_s=100, student_phase_s=30, retrain_wait_s=20, final_phase_s=10, max_s=300)


def test_teacher_only_until_a_student_is_live_or_its_budget_is_spent() -> None:
    assert decide(Progress(now=50, traffic_start=10), B).stage == "teacher-only"
    assert not decide(Progress(now=109, traffic_start=10), B).stop
    step = decide(Progress(now=110, traffic_start=10), B)
    assert step.stop and "no student went live" in step.reason and "none was promoted" in step.reason
    # a run going when the budget is up is waited for, within retrain_wait_s
    assert decide(Progress(now=110, traffic_start=10, run_in_progress=True), B).stage == "waiting-for-retrain"
    step = decide(Progress(now=130, traffic_start=10, run_in_progress=True), B)
    assert step.stop and "still going after 20 s" in step.reason
    # promoted just before the cap, the router still loading it: waited for too (a run made the demo stop
    # in the second between the promotion and the live switch)
    assert decide(Progress(now=110, traffic_start=10, promotion_pending=True), B).stage == "waiting-for-retrain"
    step = decide(Progress(now=130, traffic_start=10, promotion_pending=True), B)
    assert step.stop and "promoted version was not live after 20 s" in step.reason


def test_the_student_phase_lasts_until_the_retrain_after_the_switch_is_evaluated() -> None:
    live = dict(traffic_start=10, first_live=60)
    assert decide(Progress(now=80, **live), B).stage == "student"
    # its least time is up, but the retrain its fallbacks feed is not evaluated yet: wait, within the cap
    assert decide(Progress(now=90, **live), B).stage == "waiting-for-retrain"
    assert decide(Progress(now=95, run_in_progress=True, **live), B).stage == "waiting-for-retrain"
    step = decide(Progress(now=110, run_in_progress=True, **live), B)
    assert step.stop and "was still running within 20 s" in step.reason
    step = decide(Progress(now=110, **live), B)
    assert step.stop and "was not evaluated" in step.reason
    # rejected: the demo ends once the student has had its least time
    assert not decide(Progress(now=85, retrain_verdict="rejected", **live), B).stop
    step = decide(Progress(now=92, retrain_verdict="rejected", **live), B)
    assert step.stop and "evaluated and rejected" in step.reason
    # promoted: waited for to go live (then the final phase), not longer than the cap
    assert decide(Progress(now=95, retrain_verdict="promoted", **live), B).stage == "waiting-for-retrain"
    step = decide(Progress(now=110, retrain_verdict="promoted", **live), B)
    assert step.stop and "promoted but did not go live" in step.reason


def test_final_phase_after_a_later_version_goes_live() -> None:
    p = dict(traffic_start=10, first_live=60, latest_live=100)
    assert decide(Progress(now=105, **p), B).stage == "final" and not decide(Progress(now=105, **p), B).stop
    step = decide(Progress(now=110, **p), B)
    assert step.stop and "final phase" in step.reason


def test_the_overall_budget_and_the_fleet_end_any_stage() -> None:
    step = decide(Progress(now=300, traffic_start=10, first_live=290), B)
    assert step.stop and "time budget" in step.reason and step.stage == "student"
    step = decide(Progress(now=20, traffic_start=10, fleet_done=True), B)
    assert step.stop and "fleet" in step.reason


def test_profiles_fit_their_limits_and_overrides_apply() -> None:
    assert Budgets.quick().max_s < 300 and Budgets.full().max_s <= 900
    b = Budgets.quick().with_overrides(student_phase_s=5, final_phase_s=None)
    assert b.student_phase_s == 5 and b.final_phase_s == Budgets.quick().final_phase_s
    with pytest.raises(ValueError, match="max_s"):
        Budgets.quick().with_overrides(max_s=0)
    with pytest.raises(ValueError, match="retrain_wait_s"):
        Budgets.quick().with_overrides(retrain_wait_s=-1)
