"""The promotion gate and the confidence calibration (pure)."""

from __future__ import annotations

import pytest

from trainer.evaluate import calibrate_threshold, episode_confidence, turn_confidence
from trainer.gate import decide
from trainer.settings import GateSection


def _report(ratio: float | None, failure: float | None, episodes: int = 50, **kw):
    return {
        "quality_ratio": ratio,
        "failure_rate": failure,
        "student": {"episodes": episodes, "quality": 0.8, "failures": {"wrong_answer": failure or 0.0}},
        "teacher": {"quality": 0.85},
        "worst_failures": [{"task_id": "lookup-1", "kinds": ["wrong_answer"], "answer": "Paris", "ground_truth": "Rome"}],
        **kw,
    }


def test_promoted_when_both_thresholds_hold() -> None:
    d = decide(_report(0.93, 0.02), GateSection())
    assert d.promoted and d.reasons == [] and d.checks["quality_ratio"]["passed"]


@pytest.mark.parametrize(
    ("ratio", "failure", "needle"),
    [
        (0.89, 0.01, "quality_ratio 0.890 < 0.90"),
        (0.95, 0.05, "catastrophic-failure rate 5.0% >= 5.0%"),
        (None, None, "no quality ratio"),
    ],
)
def test_rejected_with_reasons(ratio, failure, needle) -> None:
    d = decide(_report(ratio, failure), GateSection())
    assert d.status == "rejected"
    assert any(needle in r for r in d.reasons), d.reasons
    assert any("lookup-1" in r for r in d.reasons)  # the failing examples are named


def test_too_few_tasks_and_custom_thresholds() -> None:
    assert decide(_report(0.99, 0.0, episodes=3), GateSection()).status == "rejected"
    lax = GateSection(quality_ratio_min=0.5, failure_rate_max=0.5, min_eval_tasks=1)
    assert decide(_report(0.6, 0.3, episodes=3), lax).promoted


def test_confidence_functions() -> None:
    assert turn_confidence([]) == 0.0
    assert turn_confidence([0.0, 0.0]) == 1.0
    assert turn_confidence([-1.0, -3.0]) == pytest.approx(2.718281828 ** -2)
    assert episode_confidence([0.9, 0.4, 0.7]) == 0.4


def test_calibration_picks_the_lowest_threshold_that_matches_the_teacher() -> None:
    # confident episodes are good, unconfident ones bad
    points = [(0.95, 0.95, True), (0.9, 0.92, True), (0.85, 0.9, True), (0.6, 0.5, False), (0.4, 0.3, False)]
    cal = calibrate_threshold(points, target_quality=0.9, target_accuracy=0.9, min_coverage=0.1)
    assert cal.qualified and cal.threshold == 0.85 and cal.coverage == pytest.approx(0.6)
    assert cal.quality_above == pytest.approx((0.95 + 0.92 + 0.9) / 3)
    # nothing good enough: route nothing to the student
    none = calibrate_threshold(points, target_quality=0.99, target_accuracy=1.0)
    assert not none.qualified and none.threshold == 1.0 and none.coverage == 0.0
    # minimum coverage
    tight = calibrate_threshold(points, target_quality=0.9, target_accuracy=0.9, min_coverage=0.7)
    assert not tight.qualified
    # ties are taken together
    tied = calibrate_threshold([(0.8, 1.0, True), (0.8, 0.0, False)], target_quality=0.9, target_accuracy=0.9)
    assert not tied.qualified


def _rows(spec):
    """(confidence, student quality, student failed, teacher quality) → episode rows."""
    return [{"task_id": f"t{i}", "confidence": c, "student_quality": sq, "student_failed": f,
             "teacher_quality": tq} for i, (c, sq, f, tq) in enumerate(spec)]


def test_routed_summary_takes_the_tasks_at_or_above_the_threshold() -> None:
    from trainer.evaluate import routed_summary

    rows = _rows([(0.9, 1.0, False, 0.9), (0.8, 0.9, False, 1.0), (0.5, 0.2, True, 1.0), (0.3, 0.1, True, 0.8)])
    r = routed_summary(rows, 0.8)
    assert (r["routed"], r["coverage"], r["failure_rate"]) == (2, 0.5, 0.0)
    assert r["quality_ratio"] == pytest.approx(round(0.95 / 0.95, 4))
    # the mixed system: the student on the first two, the teacher on the rest
    assert r["system_quality_ratio"] == pytest.approx(round((1.0 + 0.9 + 1.0 + 0.8) / (0.9 + 1.0 + 1.0 + 0.8), 4))
    nothing = routed_summary(rows, None)
    assert nothing["routed"] == 0 and nothing["quality_ratio"] is None and nothing["coverage"] == 0.0


def test_routed_gate_judges_the_routed_tasks_and_needs_coverage() -> None:
    routed = {"quality_ratio": 1.02, "failure_rate": 0.0, "coverage": 0.6, "threshold": 0.7}
    report = _report(0.7, 0.4, routed=routed)  # the student alone is far from the bar
    assert decide(report, GateSection()).status == "rejected"
    d = decide(report, GateSection(scope="routed"))
    assert d.promoted, d.reasons
    assert d.checks["scope"] == "routed" and d.checks["quality_ratio"]["value"] == 1.02
    thin = decide(_report(0.7, 0.4, routed={**routed, "coverage": 0.3}), GateSection(scope="routed"))
    assert thin.status == "rejected" and any("30% of held-out tasks" in r for r in thin.reasons)
    failing = decide(_report(0.7, 0.4, routed={**routed, "failure_rate": 0.1}), GateSection(scope="routed"))
    assert failing.status == "rejected" and any("10.0% >= 5.0%" in r for r in failing.reasons)
    empty = decide(_report(0.7, 0.4, routed={"quality_ratio": None, "failure_rate": None, "coverage": 0.0}),
                   GateSection(scope="routed"))
    assert empty.status == "rejected"
