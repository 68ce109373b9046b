"""Quality gates (the seed's `TraceFilter`): which scored traces may become training data.

Exports the gate names (`SUCCESS`, `GROUND_TRUTH`, `STEP_BUDGET`, `TOOL_VALIDITY`, `SAFETY`,
`MIN_SCORE`, all in `GATE_NAMES` — bounded metric label values), `GateConfig`, `GateFailure`,
`Verdict`, `evaluate_gates(trace, assessment, config)`, `TraceFilter` (the same, configured once;
`TraceFilter.from_settings(quality)`, like `GateConfig.from_settings(quality)`, reads `QualitySettings`)
and `to_scored_trace(trace, assessment, verdict)` (the `ScoredTrace` event, with a deterministic id).

Every gate is evaluated; the verdict lists every failed gate with a human reason each.
Gates that do not apply pass: `ground_truth` without a ground truth, `step_budget` without
`expected_steps` (or with 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from stillflow.contracts import AgentTrace, ScoredTrace
from stillflow.ids import scored_id_for
from stillflow.quality.scoring import Assessment
from stillflow.quality.settings import QualitySettings

__all__ = [
    "SUCCESS",
    "GROUND_TRUTH",
    "STEP_BUDGET",
    "TOOL_VALIDITY",
    "SAFETY",
    "MIN_SCORE",
    "GATE_NAMES",
    "GateConfig",
    "GateFailure",
    "Verdict",
    "evaluate_gates",
    "TraceFilter",
    "to_scored_trace",
]

SUCCESS = "success"
GROUND_TRUTH = "ground_truth"
STEP_BUDGET = "step_budget"
TOOL_VALIDITY = "tool_validity"
SAFETY = "safety"
MIN_SCORE = "min_score"
GATE_NAMES: tuple[str, ...] = (SUCCESS, GROUND_TRUTH, STEP_BUDGET, TOOL_VALIDITY, SAFETY, MIN_SCORE)


@dataclass(frozen=True)
class GateConfig:
    min_score: float = 0.7
    step_budget_factor: float = 2.0

    @classmethod
    def from_settings(cls, quality: QualitySettings) -> GateConfig:
        """The gate thresholds of the quality settings (`StillflowSettings().quality`)."""
        return cls(min_score=quality.min_score, step_budget_factor=quality.step_budget_factor)


@dataclass(frozen=True)
class GateFailure:
    gate: str  # one of GATE_NAMES
    reason: str


@dataclass(frozen=True)
class Verdict:
    failures: tuple[GateFailure, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def rejected_by(self) -> list[str]:
        return [f.gate for f in self.failures]

    @property
    def reasons(self) -> list[str]:
        return [f.reason for f in self.failures]


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def evaluate_gates(trace: AgentTrace, assessment: Assessment, config: GateConfig | None = None) -> Verdict:
    """Run every gate; return all failures (in `GATE_NAMES` order)."""
    cfg = config or GateConfig()
    failures: list[GateFailure] = []
    if not trace.success:
        why = f": {_short(trace.error)}" if trace.error else ""
        failures.append(GateFailure(SUCCESS, f"the agent reported failure{why}"))
    if trace.ground_truth is not None and not assessment.correct:
        failures.append(
            GateFailure(
                GROUND_TRUTH,
                f"final output {_short(trace.final_output)!r} does not match "
                f"the ground truth {_short(trace.ground_truth)!r}",
            )
        )
    if trace.expected_steps:
        budget = cfg.step_budget_factor * trace.expected_steps
        if len(trace.steps) > budget:
            failures.append(
                GateFailure(
                    STEP_BUDGET,
                    f"{len(trace.steps)} steps > {cfg.step_budget_factor:g} × {trace.expected_steps} expected",
                )
            )
    bad = [c for c in assessment.tool_calls if not c.valid]
    if bad:
        unknown = [c for c in bad if not c.known]
        invalid = [c for c in bad if c.known]
        parts = []
        if unknown:
            names = sorted({c.tool_name for c in unknown})
            parts.append(f"{len(unknown)} call(s) to unknown tool(s) {', '.join(names)}")
        if invalid:
            first = invalid[0]
            parts.append(
                f"{len(invalid)} call(s) with schema-invalid arguments (step {first.step_index}, "
                f"{first.tool_name}: {_short(first.error or '', 120)})"
            )
        failures.append(GateFailure(TOOL_VALIDITY, "; ".join(parts)))
    if assessment.unsafe:
        first_hit = assessment.unsafe[0]
        failures.append(
            GateFailure(
                SAFETY,
                f"{len(assessment.unsafe)} unsafe pattern hit(s) in tool arguments, first {first_hit.excerpt!r} "
                f"at step {first_hit.step_index}",
            )
        )
    if assessment.score.overall < cfg.min_score:
        failures.append(GateFailure(MIN_SCORE, f"overall {assessment.score.overall:.3f} < min score {cfg.min_score:g}"))
    return Verdict(tuple(failures))


class TraceFilter:
    """The gates with their configuration; `check(trace, assessment) -> Verdict`."""

    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()

    @classmethod
    def from_settings(cls, quality: QualitySettings) -> TraceFilter:
        return cls(GateConfig.from_settings(quality))

    def check(self, trace: AgentTrace, assessment: Assessment) -> Verdict:
        return evaluate_gates(trace, assessment, self.config)


def to_scored_trace(trace: AgentTrace, assessment: Assessment, verdict: Verdict) -> ScoredTrace:
    """The `ScoredTrace` event: id `scored-<trace_id>` and the trace's event time, so redelivery
    produces the same record."""
    return ScoredTrace(
        event_id=scored_id_for(trace.trace_id),
        timestamp=trace.timestamp,
        trace=trace,
        score=assessment.score,
        passed=verdict.passed,
        rejected_by=verdict.rejected_by,
        reasons=verdict.reasons,
    )
