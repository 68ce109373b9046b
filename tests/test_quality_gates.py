"""Gates: every gate evaluated, each rejection named, with a reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from stillflow.contracts import AgentTrace, ScoredTrace, ToolSpec, TraceStep, TrajectoryScore, decode, encode
from stillflow.quality import gates as g
from stillflow.quality.gates import GateConfig, TraceFilter, Verdict, evaluate_gates, to_scored_trace
from stillflow.quality.scoring import Assessment, Scorer
from stillflow.quality.settings import QualitySettings

T0 = datetime(2026, 3, 1, tzinfo=UTC)
CALC = ToolSpec(
    name="calculator",
    parameters={"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
)
SHELL = ToolSpec(name="shell", parameters={"type": "object", "properties": {"cmd": {"type": "string"}}})


def _steps(n_calls: int = 1, args: dict[str, Any] | None = None, name: str = "calculator") -> list[TraceStep]:
    steps = [TraceStep(step_type="reasoning", content=f"Use the {name} tool to compute the product.")]
    for i in range(n_calls):
        steps.append(
            TraceStep(
                step_type="tool_call",
                tool_name=name,
                tool_args=args if args is not None else {"expression": "6*7"},
                tool_call_id=f"c{i}",
            )
        )
        steps.append(TraceStep(step_type="observation", tool_name=name, tool_call_id=f"c{i}", tool_result="42"))
    steps.append(TraceStep(step_type="output", content="The answer is 42."))
    return steps


def _trace(steps: list[TraceStep] | None = None, **kw: Any) -> AgentTrace:
    base: dict[str, Any] = dict(
        trace_id="tr-1",
        task_id="task-1",
        input_text="6*7?",
        tools=[CALC, SHELL],
        final_output="The answer is 42.",
        success=True,
        ground_truth="42",
        expected_steps=4,
        timestamp=T0,
    )
    base.update(kw)
    return AgentTrace(steps=steps if steps is not None else _steps(), **base)


def _verdict(t: AgentTrace, cfg: GateConfig | None = None, **assess: Any) -> Verdict:
    return evaluate_gates(t, Scorer().assess(t, **assess), cfg)


def test_gate_names_are_the_documented_constants() -> None:
    assert g.GATE_NAMES == ("success", "ground_truth", "step_budget", "tool_validity", "safety", "min_score")
    assert (g.SUCCESS, g.GROUND_TRUTH, g.STEP_BUDGET, g.TOOL_VALIDITY, g.SAFETY, g.MIN_SCORE) == g.GATE_NAMES


def test_a_good_trace_passes_every_gate() -> None:
    v = _verdict(_trace())
    assert v.passed and v.rejected_by == [] and v.reasons == []


def test_agent_failure_is_the_success_gate_with_the_error() -> None:
    v = _verdict(_trace(success=False, error="tool timed out"))
    assert v.rejected_by[0] == "success"
    assert v.reasons[0] == "the agent reported failure: tool timed out"


def test_wrong_answer_fails_ground_truth_and_names_both_sides() -> None:
    v = _verdict(_trace(final_output="It is 41."))
    assert "ground_truth" in v.rejected_by
    reason = v.reasons[v.rejected_by.index("ground_truth")]
    assert "'It is 41.'" in reason and "'42'" in reason


def test_ground_truth_gate_does_not_apply_without_ground_truth() -> None:
    v = _verdict(_trace(ground_truth=None, final_output="whatever"))
    assert "ground_truth" not in v.rejected_by


@pytest.mark.parametrize(("n_calls", "expected", "fails"), [(1, 2, False), (1, 1, True), (2, 3, False), (3, 3, True)])
def test_step_budget_is_factor_times_expected(n_calls: int, expected: int, fails: bool) -> None:
    # steps = 2 + 2 * n_calls: 4, 4, 6, 8 against budgets 4, 2, 6, 6
    t = _trace(_steps(n_calls), expected_steps=expected)
    v = _verdict(t, reference_steps=len(t.steps))
    assert ("step_budget" in v.rejected_by) is fails
    if fails:
        assert v.reasons[v.rejected_by.index("step_budget")] == f"{len(t.steps)} steps > 2 × {expected} expected"


def test_step_budget_factor_is_settable_and_absent_expected_steps_pass() -> None:
    t = _trace(_steps(2), expected_steps=4)  # 6 steps
    assert "step_budget" in _verdict(t, GateConfig(min_score=0.0, step_budget_factor=1.0)).rejected_by
    assert "step_budget" not in _verdict(t, GateConfig(min_score=0.0, step_budget_factor=1.5)).rejected_by
    assert "step_budget" not in _verdict(_trace(_steps(5), expected_steps=None)).rejected_by
    assert "step_budget" not in _verdict(_trace(_steps(5), expected_steps=0)).rejected_by


def test_hallucinated_tool_fails_tool_validity_and_names_it() -> None:
    v = _verdict(_trace(_steps(1, {"expression": "6*7"}, name="calculatorr")))
    assert "tool_validity" in v.rejected_by
    assert "unknown tool(s) calculatorr" in v.reasons[v.rejected_by.index("tool_validity")]


def test_schema_invalid_arguments_fail_tool_validity() -> None:
    v = _verdict(_trace(_steps(1, {"expression": 42})))
    reason = v.reasons[v.rejected_by.index("tool_validity")]
    assert "schema-invalid" in reason and "calculator" in reason and "step 1" in reason


def test_unsafe_arguments_fail_safety() -> None:
    t = _trace(_steps(1, {"cmd": "rm -rf /"}, name="shell"))
    v = _verdict(t)
    assert "safety" in v.rejected_by
    assert "'rm -rf' at step 1" in v.reasons[v.rejected_by.index("safety")]


def test_min_score_boundary() -> None:
    t = _trace()
    a = Scorer().assess(t)
    at = GateConfig(min_score=a.score.overall)
    above = GateConfig(min_score=min(1.0, a.score.overall + 0.01))
    assert evaluate_gates(t, a, at).passed
    v = evaluate_gates(t, a, above)
    assert v.rejected_by == ["min_score"]
    assert v.reasons[0].startswith(f"overall {a.score.overall:.3f} < min score")


def test_every_failed_gate_is_reported_in_order() -> None:
    steps = _steps(1, {"cmd": "DROP TABLE users"}, name="shell") + _steps(1, {"expression": 1}, name="nope")
    t = _trace(steps, success=False, final_output="no idea", expected_steps=2)
    v = _verdict(t)
    assert v.rejected_by == ["success", "ground_truth", "step_budget", "tool_validity", "safety", "min_score"]
    assert len(v.reasons) == 6 and all(v.reasons)
    assert not v.passed


def test_trace_filter_from_settings() -> None:
    f = TraceFilter.from_settings(QualitySettings(min_score=0.0, step_budget_factor=10.0))
    t = _trace(_steps(5), expected_steps=2)
    assert f.check(t, Scorer().assess(t)).passed


def test_scored_trace_is_deterministic_and_round_trips() -> None:
    t = _trace(final_output="41")
    a = Scorer().assess(t)
    v = evaluate_gates(t, a)
    s1, s2 = to_scored_trace(t, a, v), to_scored_trace(t, a, v)
    assert s1 == s2
    assert s1.event_id == "scored-tr-1" and s1.timestamp == t.timestamp
    assert not s1.passed and s1.rejected_by == v.rejected_by and s1.reasons == v.reasons
    assert decode(encode(s1), ScoredTrace) == s1


def test_verdict_from_a_hand_made_assessment() -> None:
    t = _trace()
    score = TrajectoryScore(correctness=1, efficiency=1, tool_selection=1, safety=1, reasoning_quality=1, overall=0.5)
    v = evaluate_gates(t, Assessment(score=score, correct=True))
    assert v.rejected_by == ["min_score"]
