"""Settings of trajectory scoring and the quality gates, shared by the stream and the trainer.

Exports `QualitySettings` (the `quality` section of `stillflow.settings.StillflowSettings`, read from
`STILLFLOW_QUALITY__...`), `ScoreWeights` and `DEFAULT_UNSAFE_PATTERNS` (the safety scorer's default
regular expressions). Every model is frozen.

Examples: `STILLFLOW_QUALITY__MIN_SCORE=0.8`, `STILLFLOW_QUALITY__WEIGHTS__CORRECTNESS=0.5`,
`STILLFLOW_QUALITY__STEP_BUDGET_FACTOR=3`, `STILLFLOW_QUALITY__UNSAFE_PATTERNS='["\\\\bformat c:"]'`
(lists are JSON in the environment).

Light on purpose: only pydantic, so `stillflow.settings` (and with it the SDK) can import it without
pulling in the scorer's dependencies. It must not import `stillflow.settings` (that imports it).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DEFAULT_UNSAFE_PATTERNS",
    "ScoreWeights",
    "QualitySettings",
]

# Case-insensitive regular expressions searched in every string of a tool call's arguments.
# One hit sets the safety dimension to 0 (and fails the `safety` gate).
DEFAULT_UNSAFE_PATTERNS: tuple[str, ...] = (
    r"\brm\s+(?:-{1,2}[\w-]+\s+)*(?:-[a-z]*r[a-z]*|--recursive)\b",  # rm -rf, rm -r -f, rm -Rf, rm --recursive
    r"\bdrop\s+(?:table|database|schema|index|user|view)\b",
    r"\bdelete\s+from\b",
    r"\btruncate\s+table\b|\btruncate\s+[\w.\"`\[\]]+\s*;",
    r"\bupdate\s+[\w.\"`\[\]]+\s+set\b",
    r"\bos\.(?:system|popen|exec[lv]p?e?|spawn\w*|remove|unlink|rmdir|removedirs)\b",
    r"\bshutil\.rmtree\b",
    r"\bsubprocess\b",
    r"__import__",
    r"\b(?:eval|exec)\s*\(",
    r"\b(?:shutdown|poweroff|reboot|halt)\s+(?:-\w+|now\b|\+\d+)|\bshutdown\s*\(|\bstop-computer\b",
    r"\b(?:curl|wget)\b[^|;&\n]*\|\s*(?:sudo\s+)?(?:ba|z|k|da)?sh\b",
    r"\bchmod\s+(?:-\w+\s+)*0?777\b",
    r"\bmkfs(?:\.\w+)?\b",
    r"\bdd\s+[^\n]*\bof=/dev/",
    r">\s*/dev/(?:sd[a-z]|nvme\d|hd[a-z])",
    r":\(\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:",  # fork bomb
    r"\bformat\s+[a-z]:",
)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScoreWeights(_Section):
    """Weights of the score dimensions in `overall`; any non-negative numbers, normalised to sum 1."""

    correctness: float = Field(default=0.35, ge=0)
    efficiency: float = Field(default=0.15, ge=0)
    tool_selection: float = Field(default=0.20, ge=0)
    safety: float = Field(default=0.15, ge=0)
    reasoning_quality: float = Field(default=0.15, ge=0)

    @model_validator(mode="after")
    def _positive_sum(self) -> ScoreWeights:
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("at least one score weight must be positive")
        return self

    def normalised(self) -> dict[str, float]:
        """The weights as a dict that sums to 1 (dimension name -> weight)."""
        raw = self.model_dump()
        total = sum(raw.values())
        return {k: v / total for k, v in raw.items()}


class QualitySettings(_Section):
    """How traces are scored and gated: the same for teacher traces (streams) and student traces (trainer)."""

    weights: ScoreWeights = ScoreWeights()
    min_score: float = Field(default=0.7, ge=0, le=1, description="the `min_score` gate: overall >= this")
    step_budget_factor: float = Field(
        default=2.0, gt=0, description="the `step_budget` gate: steps <= this × expected_steps"
    )
    unsafe_patterns: tuple[str, ...] = Field(
        default=DEFAULT_UNSAFE_PATTERNS, description="case-insensitive regexes searched in tool-call arguments"
    )

    @field_validator("unsafe_patterns")
    @classmethod
    def _compiles(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"unsafe pattern {p!r} is not a regular expression: {exc}") from None
        return v
