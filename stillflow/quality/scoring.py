"""Trajectory scoring: the seed's `TrajectoryScore` dimensions and their weighted overall.

Exports:
- `Scorer` — holds the compiled configuration (weights, unsafe patterns, reasoning scorer);
  `Scorer.assess(trace, reference_steps=None, reasoning_quality=None) -> Assessment` computes
  everything the gates need in one pass, `Scorer.score(...)` just the `TrajectoryScore`;
  `Scorer.from_settings(quality)` (a `QualitySettings`).
- `Assessment`, `ToolCallCheck`, `UnsafeHit` — the score plus the evidence behind it.
- The dimensions as plain functions: `correctness`, `is_correct`, `efficiency`, `check_tool_calls`,
  `tool_selection`, `find_unsafe`, `overall`; `next_reference` (the reference-step table update).
- `ReasoningScorer` (the pluggable protocol) and `HeuristicReasoningScorer` (the fast default);
  the LLM judge lives in `streams.judge` (it implements `ReasoningScorer`).
- `compile_patterns`, `DIMENSIONS`, `DEFAULT_UNSAFE_PATTERNS`.

Per-event cost is kept small: patterns are compiled once per `Scorer`, JSON-schema validators are
cached per schema (`validator_for_schema`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from jsonschema import exceptions as js_exceptions
from jsonschema import validators as js_validators

from stillflow.answers import answers_match
from stillflow.contracts import AgentTrace, StepType, TraceStep, TrajectoryScore
from stillflow.quality.settings import DEFAULT_UNSAFE_PATTERNS, QualitySettings, ScoreWeights

__all__ = [
    "DIMENSIONS",
    "DEFAULT_UNSAFE_PATTERNS",
    "ReasoningScorer",
    "HeuristicReasoningScorer",
    "ToolCallCheck",
    "UnsafeHit",
    "Assessment",
    "Scorer",
    "CompiledPatterns",
    "compile_patterns",
    "validator_for_schema",
    "is_correct",
    "correctness",
    "efficiency",
    "check_tool_calls",
    "tool_selection",
    "find_unsafe",
    "overall",
    "next_reference",
]

DIMENSIONS: tuple[str, ...] = ("correctness", "efficiency", "tool_selection", "safety", "reasoning_quality")


# --------------------------------------------------------------------------- correctness


def is_correct(trace: AgentTrace) -> bool:
    """Ground truth (via `answers_match`) when the trace has one, else the agent's own `success`."""
    if trace.ground_truth is not None:
        return answers_match(trace.final_output, trace.ground_truth)
    return trace.success


def correctness(trace: AgentTrace) -> float:
    return 1.0 if is_correct(trace) else 0.0


# --------------------------------------------------------------------------- efficiency


def efficiency(n_steps: int, reference_steps: int | None = None) -> float:
    """Relative to the best known step count of the task when given (`min(1, ref / n)`), else the
    seed's ladder: <=3 steps 1.0, <=6 0.8, <=10 0.6, else 0.4. No steps at all scores 1.0."""
    if n_steps <= 0:
        return 1.0
    if reference_steps is not None and reference_steps > 0:
        return min(1.0, reference_steps / n_steps)
    if n_steps <= 3:
        return 1.0
    if n_steps <= 6:
        return 0.8
    if n_steps <= 10:
        return 0.6
    return 0.4


def next_reference(current: int | None, trace: AgentTrace, *, correct: bool | None = None) -> int | None:
    """The task's reference step count after seeing `trace`: the fewest steps of a correct trace."""
    ok = is_correct(trace) if correct is None else correct
    n = len(trace.steps)
    if not ok or n == 0:
        return current
    return n if current is None else min(current, n)


# --------------------------------------------------------------------------- tool selection


@dataclass(frozen=True)
class ToolCallCheck:
    """One tool call checked against the trace's tools."""

    step_index: int
    tool_name: str
    tool_call_id: str | None
    known: bool  # the tool is among the trace's `tools`
    valid: bool  # known and the arguments validate against its JSON schema
    error: str | None = None


@lru_cache(maxsize=2048)
def _validator_from_json(schema_json: str) -> Any:
    # An invalid schema is cached too (as the exception), so it is not re-checked per event.
    schema = json.loads(schema_json)
    try:
        cls = js_validators.validator_for(schema, default=js_validators.Draft202012Validator)
        cls.check_schema(schema)
        return cls(schema)
    except (js_exceptions.SchemaError, TypeError, ValueError, AttributeError) as exc:
        return exc


def validator_for_schema(schema: Mapping[str, Any]) -> Any:
    """A jsonschema validator for `schema`, built once per distinct schema (LRU cache keyed by its
    canonical JSON). Raises `jsonschema.exceptions.SchemaError` for an invalid schema."""
    v = _cached_validator(schema)
    if isinstance(v, Exception):
        raise js_exceptions.SchemaError(str(getattr(v, "message", v)))
    return v


_BY_REPR: dict[str, Any] = {}  # repr(schema) -> validator: a cheaper key than canonical JSON for the same dict
_BY_REPR_MAX = 2048


def _cached_validator(schema: Mapping[str, Any]) -> Any:
    # Every trace carries its tools' schemas, decoded afresh; repr (C code, unambiguous for JSON values)
    # finds the validator without sorting and dumping the schema each time. Key order only splits entries.
    key = repr(schema)
    v = _BY_REPR.get(key)
    if v is None:
        v = _validator_from_json(json.dumps(schema, sort_keys=True, separators=(",", ":")))
        if len(_BY_REPR) >= _BY_REPR_MAX:
            _BY_REPR.clear()
        _BY_REPR[key] = v
    return v


def _tool_validators(trace: AgentTrace) -> dict[str, Any]:
    # a validator, or the exception that says why the tool's schema is unusable
    return {spec.name: _cached_validator(spec.parameters) for spec in trace.tools}


def check_tool_calls(trace: AgentTrace) -> list[ToolCallCheck]:
    """Every tool_call step: is the tool known, do its arguments validate against its schema."""
    checks: list[ToolCallCheck] = []
    validators: dict[str, Any] | None = None
    for i, step in enumerate(trace.steps):
        if step.step_type is not StepType.tool_call:
            continue
        if validators is None:
            validators = _tool_validators(trace)
        name = step.tool_name or ""
        v = validators.get(name)
        if v is None:
            checks.append(ToolCallCheck(i, name, step.tool_call_id, False, False, f"unknown tool {name!r}"))
            continue
        if isinstance(v, Exception):
            msg = getattr(v, "message", str(v))
            checks.append(
                ToolCallCheck(i, name, step.tool_call_id, True, False, f"the tool's schema is invalid: {msg}")
            )
            continue
        args = step.tool_args if step.tool_args is not None else {}
        try:
            err = next(iter(v.iter_errors(args)), None)
        except Exception as exc:  # a schema that checks but cannot be applied ($ref loops, unresolvable refs)
            checks.append(ToolCallCheck(i, name, step.tool_call_id, True, False,
                                        f"the tool's schema cannot be applied: {type(exc).__name__}"))
            continue
        if err is None:
            checks.append(ToolCallCheck(i, name, step.tool_call_id, True, True))
        else:
            path = "/".join(str(p) for p in err.absolute_path)
            where = f" at {path}" if path else ""
            checks.append(ToolCallCheck(i, name, step.tool_call_id, True, False, f"{err.message}{where}"))
    return checks


def tool_selection(checks: Sequence[ToolCallCheck]) -> float:
    """Fraction of tool calls that are known and valid; 1.0 when there are none."""
    if not checks:
        return 1.0
    return sum(1 for c in checks if c.valid) / len(checks)


# --------------------------------------------------------------------------- safety


@dataclass(frozen=True)
class CompiledPatterns:
    """Unsafe patterns compiled once: a combined regex for the fast path and each one to name hits."""

    sources: tuple[str, ...]
    each: tuple[re.Pattern[str], ...]
    combined: re.Pattern[str] | None


@lru_cache(maxsize=64)
def compile_patterns(patterns: tuple[str, ...] = DEFAULT_UNSAFE_PATTERNS) -> CompiledPatterns:
    each = tuple(re.compile(p, re.IGNORECASE) for p in patterns)
    combined: re.Pattern[str] | None
    if not patterns:
        combined = None
    else:
        try:
            combined = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
        except re.error:  # e.g. numbered back-references do not survive combining
            combined = None
    return CompiledPatterns(tuple(patterns), each, combined)


@dataclass(frozen=True)
class UnsafeHit:
    step_index: int
    pattern: str  # the pattern's source
    excerpt: str  # the matched text (at most 80 characters)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str):
                yield k
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def find_unsafe(steps: Iterable[TraceStep], patterns: CompiledPatterns) -> list[UnsafeHit]:
    """Unsafe patterns in the tool calls' arguments (every string, keys included, searched alone)."""
    hits: list[UnsafeHit] = []
    if not patterns.each:
        return hits
    for i, step in enumerate(steps):
        if step.step_type is not StepType.tool_call or not step.tool_args:
            continue
        for text in _strings(step.tool_args):
            if patterns.combined is not None and patterns.combined.search(text) is None:
                continue
            for src, rx in zip(patterns.sources, patterns.each, strict=True):
                m = rx.search(text)
                if m is not None:
                    hits.append(UnsafeHit(i, src, m.group(0)[:80]))
    return hits


# --------------------------------------------------------------------------- reasoning quality


@runtime_checkable
class ReasoningScorer(Protocol):
    """Scores the reasoning of a trajectory in [0, 1]. Implement `score`; keep it cheap or async-wrap it."""

    def score(self, trace: AgentTrace) -> float: ...


_WORD = re.compile(r"\w+", re.UNICODE)
_NAME_SEP = re.compile(r"[_.\-]+")


class HeuristicReasoningScorer:
    """A fast, dependency-free reasoning score from four signals (each in [0, 1]):

    - planning (0.35): each turn of tool calls is preceded by reasoning text;
    - substance (0.25): reasoning texts are not empty or trivially short;
    - non-repetition (0.20): reasoning texts are not copies of each other nor loops of one phrase;
    - grounding (0.20): the tools the agent calls are named in its reasoning.

    Without any reasoning text a trace scores 0 when it calls tools and 0.5 when it answers directly.
    Reasoning text is the content of `reasoning` steps and any content on `tool_call` steps.
    """

    def __init__(self, *, min_chars: int = 12, min_words: int = 3) -> None:
        self.min_chars = min_chars
        self.min_words = min_words

    def score(self, trace: AgentTrace) -> float:
        texts: list[str] = []
        turns = 0
        planned = 0
        since_turn: list[str] = []  # reasoning text since the previous tool-call turn
        in_turn = False
        called: list[str] = []
        for step in trace.steps:
            st = step.step_type
            if st is StepType.reasoning:
                if step.content.strip():
                    texts.append(step.content)
                    since_turn.append(step.content)
                in_turn = False
            elif st is StepType.tool_call:
                if step.content.strip():
                    texts.append(step.content)
                    since_turn.append(step.content)
                if not in_turn:
                    turns += 1
                    planned += 1 if since_turn else 0
                    in_turn = True
                since_turn = []
                if step.tool_name and step.tool_name not in called:
                    called.append(step.tool_name)
            elif st is StepType.observation:
                in_turn = False
            else:
                in_turn = False
        if not texts:
            return 0.0 if turns else 0.5
        planning = planned / turns if turns else 1.0
        substance = sum(1 for t in texts if self._substantial(t)) / len(texts)
        nonrep = self._non_repetition(texts)
        grounding = self._grounding(texts, called)
        s = 0.35 * planning + 0.25 * substance + 0.20 * nonrep + 0.20 * grounding
        return min(1.0, max(0.0, s))

    def _substantial(self, text: str) -> bool:
        stripped = text.strip()
        return len(stripped) >= self.min_chars and len(_WORD.findall(stripped)) >= self.min_words

    @staticmethod
    def _non_repetition(texts: Sequence[str]) -> float:
        norm = [" ".join(_WORD.findall(t.lower())) for t in texts]
        distinct = len(set(norm)) / len(norm)
        diversity = []
        for n in norm:
            words = n.split()
            if len(words) >= 20:
                diversity.append(min(1.0, len(set(words)) / (0.35 * len(words))))
        inner = sum(diversity) / len(diversity) if diversity else 1.0
        return distinct * inner

    @staticmethod
    def _grounding(texts: Sequence[str], called: Sequence[str]) -> float:
        if not called:
            return 1.0
        blob = "\n".join(texts).lower()
        blob_spaced = _NAME_SEP.sub(" ", blob)
        hit = 0
        for name in called:
            low = name.lower()
            if low in blob or _NAME_SEP.sub(" ", low) in blob_spaced:
                hit += 1
        return hit / len(called)


# --------------------------------------------------------------------------- overall


def overall(dims: Mapping[str, float], weights: Mapping[str, float] | ScoreWeights) -> float:
    """Weighted mean of the dimensions (weights are normalised), clamped to [0, 1]."""
    w = weights.normalised() if isinstance(weights, ScoreWeights) else dict(weights)
    total = sum(w.get(k, 0.0) for k in DIMENSIONS)
    if total <= 0:
        raise ValueError("at least one weight must be positive")
    s = sum(w.get(k, 0.0) * dims[k] for k in DIMENSIONS) / total
    return min(1.0, max(0.0, s))


@dataclass(frozen=True)
class Assessment:
    """A trace's score and the evidence the gates use (so nothing is computed twice)."""

    score: TrajectoryScore
    correct: bool
    tool_calls: tuple[ToolCallCheck, ...] = field(default_factory=tuple)
    unsafe: tuple[UnsafeHit, ...] = field(default_factory=tuple)
    reference_steps: int | None = None


class Scorer:
    """Scores traces. Build once (from settings), call per trace."""

    def __init__(
        self,
        *,
        weights: ScoreWeights | Mapping[str, float] | None = None,
        unsafe_patterns: Sequence[str] | None = None,
        reasoning: ReasoningScorer | None = None,
    ) -> None:
        w = weights if weights is not None else ScoreWeights()
        self.weights: dict[str, float] = (
            w.normalised() if isinstance(w, ScoreWeights) else ScoreWeights(**dict(w)).normalised()
        )
        self.patterns = compile_patterns(
            tuple(unsafe_patterns) if unsafe_patterns is not None else DEFAULT_UNSAFE_PATTERNS
        )
        self.reasoning: ReasoningScorer = reasoning or HeuristicReasoningScorer()

    @classmethod
    def from_settings(cls, quality: QualitySettings, *, reasoning: ReasoningScorer | None = None) -> Scorer:
        """A scorer from the quality settings (`StillflowSettings().quality`). `reasoning`: the reasoning
        scorer (default `HeuristicReasoningScorer`); the LLM judge is not built here (see `streams.judge`)."""
        return cls(weights=quality.weights, unsafe_patterns=quality.unsafe_patterns, reasoning=reasoning)

    def assess(
        self,
        trace: AgentTrace,
        *,
        reference_steps: int | None = None,
        reasoning_quality: float | None = None,
    ) -> Assessment:
        """Score `trace`. `reference_steps`: the best known step count of its task (None: the ladder).
        `reasoning_quality`: a precomputed value (e.g. from an async judge) instead of `self.reasoning`."""
        ok = is_correct(trace)
        checks = check_tool_calls(trace)
        unsafe = find_unsafe(trace.steps, self.patterns)
        rq = self.reasoning.score(trace) if reasoning_quality is None else reasoning_quality
        dims = {
            "correctness": 1.0 if ok else 0.0,
            "efficiency": efficiency(len(trace.steps), reference_steps),
            "tool_selection": tool_selection(checks),
            "safety": 0.0 if unsafe else 1.0,
            "reasoning_quality": min(1.0, max(0.0, float(rq))),
        }
        score = TrajectoryScore(**dims, overall=overall(dims, self.weights))
        return Assessment(score, ok, tuple(checks), tuple(unsafe), reference_steps)

    def score(
        self,
        trace: AgentTrace,
        *,
        reference_steps: int | None = None,
        reasoning_quality: float | None = None,
    ) -> TrajectoryScore:
        return self.assess(trace, reference_steps=reference_steps, reasoning_quality=reasoning_quality).score
