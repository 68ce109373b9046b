"""Trace quality: trajectory scoring and the quality gates, pure and broker-free.

One implementation for every service: the stream scores teacher traces with it, the trainer scores
student traces with it, so both are judged by the same rules (configured by `QualitySettings`, the
`quality` section of `stillflow.settings.StillflowSettings`, `STILLFLOW_QUALITY__...`).

Public API (import from here):
- scoring (`stillflow.quality.scoring`): `Scorer` (`Scorer.from_settings(quality, reasoning=None)`,
  `assess(trace, reference_steps=None, reasoning_quality=None) -> Assessment`, `score(...)`),
  `Assessment`, `ToolCallCheck`, `UnsafeHit`, `ReasoningScorer` (protocol),
  `HeuristicReasoningScorer`, `DIMENSIONS`;
- gates (`stillflow.quality.gates`): `TraceFilter` (`TraceFilter.from_settings(quality)`,
  `check(trace, assessment) -> Verdict`), `GateConfig` (`GateConfig.from_settings(quality)`),
  `Verdict`, `GateFailure`, `evaluate_gates`, `to_scored_trace`, `GATE_NAMES` and the gate names
  `SUCCESS`, `GROUND_TRUTH`, `STEP_BUDGET`, `TOOL_VALIDITY`, `SAFETY`, `MIN_SCORE`;
- settings (`stillflow.quality.settings`): `QualitySettings`, `ScoreWeights`, `DEFAULT_UNSAFE_PATTERNS`.

Scoring needs `jsonschema` (an extra). The settings are imported eagerly (pydantic only); scoring and
gates load on first attribute access (PEP 562), so `stillflow.settings` — which imports
`stillflow.quality.settings`, and thereby this package — stays light for the SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stillflow.quality.settings import DEFAULT_UNSAFE_PATTERNS, QualitySettings, ScoreWeights

if TYPE_CHECKING:
    from stillflow.quality.gates import (
        GATE_NAMES,
        GROUND_TRUTH,
        MIN_SCORE,
        SAFETY,
        STEP_BUDGET,
        SUCCESS,
        TOOL_VALIDITY,
        GateConfig,
        GateFailure,
        TraceFilter,
        Verdict,
        evaluate_gates,
        to_scored_trace,
    )
    from stillflow.quality.scoring import (
        DIMENSIONS,
        Assessment,
        HeuristicReasoningScorer,
        ReasoningScorer,
        Scorer,
        ToolCallCheck,
        UnsafeHit,
    )

__all__ = [
    # scoring
    "Scorer",
    "Assessment",
    "ToolCallCheck",
    "UnsafeHit",
    "ReasoningScorer",
    "HeuristicReasoningScorer",
    "DIMENSIONS",
    # gates
    "TraceFilter",
    "GateConfig",
    "GateFailure",
    "Verdict",
    "evaluate_gates",
    "to_scored_trace",
    "GATE_NAMES",
    "SUCCESS",
    "GROUND_TRUTH",
    "STEP_BUDGET",
    "TOOL_VALIDITY",
    "SAFETY",
    "MIN_SCORE",
    # settings
    "QualitySettings",
    "ScoreWeights",
    "DEFAULT_UNSAFE_PATTERNS",
]

_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "Scorer",
            "Assessment",
            "ToolCallCheck",
            "UnsafeHit",
            "ReasoningScorer",
            "HeuristicReasoningScorer",
            "DIMENSIONS",
        ),
        "stillflow.quality.scoring",
    ),
    **dict.fromkeys(
        (
            "TraceFilter",
            "GateConfig",
            "GateFailure",
            "Verdict",
            "evaluate_gates",
            "to_scored_trace",
            "GATE_NAMES",
            "SUCCESS",
            "GROUND_TRUTH",
            "STEP_BUDGET",
            "TOOL_VALIDITY",
            "SAFETY",
            "MIN_SCORE",
        ),
        "stillflow.quality.gates",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
