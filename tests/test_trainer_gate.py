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
