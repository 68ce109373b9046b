"""The per-trace pipeline, in its one right order: score → gate → format → redact.

Exports `TracePipeline` (built once from settings, `TracePipeline.from_settings(StreamsSettings())`;
scoring and gates are `stillflow.quality`'s, shared with the trainer; `process(trace, reference_steps=None,
reasoning_quality=None, window_start=None) -> Processed`) and `Processed` (the scored-trace event,
the verdict, the redacted SFT example when the trace passed, the redacted pair candidate and the
redaction counts). A faust agent calls `process` per completed trace and publishes what it returns.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime

from stillflow.contracts import AgentTrace, ScoredTrace, SFTExample
from stillflow.quality import (
    Assessment,
    QualitySettings,
    ReasoningScorer,
    Scorer,
    TraceFilter,
    Verdict,
    to_scored_trace,
)
from stillflow.workloads import DEFAULT_TEMPLATE, resolve_workload
from streams.formatting import FormatError, to_sft_example, tools_for, trace_to_messages
from streams.pairs import PairCandidate, candidate_from
from streams.pii import Redactor, default_redactor
from streams.settings import StreamsSettings

__all__ = ["Processed", "TracePipeline"]


@dataclass(frozen=True)
class Processed:
    assessment: Assessment
    verdict: Verdict
    scored: ScoredTrace
    example: SFTExample | None  # redacted; None when a gate failed or there is nothing to learn
    candidate: PairCandidate  # redacted messages, for the window's pair mining
    redactions: dict[str, int] = field(default_factory=dict)
    format_error: str | None = None


class TracePipeline:
    def __init__(
        self,
        *,
        scorer: Scorer | None = None,
        gates: TraceFilter | None = None,
        redactor: Redactor | None = None,
        redact: bool = True,
        redact_scored: bool = True,
        workload_default: str = DEFAULT_TEMPLATE,
    ) -> None:
        self.workload_default = workload_default
        self.scorer = scorer or Scorer()
        self.gates = gates or TraceFilter()
        self.redactor = redactor or default_redactor
        self.redact = redact
        self.redact_scored = redact and redact_scored

    @classmethod
    def from_settings(cls, settings: StreamsSettings, *, reasoning: ReasoningScorer | None = None) -> TracePipeline:
        """The pipeline of the streams service: scorer and gates from `settings.quality` (the section the
        trainer scores student traces with), redaction from `settings.streams.redact_pii`. `reasoning`:
        the reasoning scorer (e.g. an `LLMJudge`; default the heuristic)."""
        return cls.from_quality(settings.quality, redact=settings.streams.redact_pii,
                                redact_scored=settings.streams.redact_scored, reasoning=reasoning,
                                workload_default=settings.workloads.default)

    @classmethod
    def from_quality(cls, quality: QualitySettings, *, redact: bool = True, redact_scored: bool = True,
                     reasoning: ReasoningScorer | None = None,
                     workload_default: str = DEFAULT_TEMPLATE) -> TracePipeline:
        """The same from the quality section and the redaction flags alone (what a scoring process is given)."""
        return cls(
            scorer=Scorer.from_settings(quality, reasoning=reasoning),
            gates=TraceFilter.from_settings(quality),
            redact=redact,
            redact_scored=redact_scored,
            workload_default=workload_default,
        )

    def process(
        self,
        trace: AgentTrace,
        *,
        reference_steps: int | None = None,
        reasoning_quality: float | None = None,
        window_start: datetime | None = None,
        keep_candidate_messages: bool = True,
    ) -> Processed:
        if trace.workload is None:  # what leaves the stream always names its workload
            trace = trace.model_copy(update={"workload": resolve_workload(None, trace.agent_id,
                                                                          self.workload_default)})
        assessment = self.scorer.assess(trace, reference_steps=reference_steps, reasoning_quality=reasoning_quality)
        verdict = self.gates.check(trace, assessment)
        # Scored and gated on the trace as sent; what leaves the stream is redacted. With the scored trace
        # redacted too, the trace is redacted once and the conversation formatted from it.
        counts: Counter[str] = Counter()
        example: SFTExample | None = None
        error: str | None = None
        if self.redact_scored:
            shown, found = self.redactor.redact_trace(trace)
            counts.update(found)
            messages = trace_to_messages(shown)
            red = self.redactor.redact_text  # the gate reasons quote outputs and answers
            failures = tuple(replace(f, reason=red(f.reason)) for f in verdict.failures)
            scored = to_scored_trace(shown, assessment, replace(verdict, failures=failures))
        else:
            messages = trace_to_messages(trace)
            if self.redact:
                messages, _ = self.redactor.redact_messages(messages, counts)
            scored = to_scored_trace(trace, assessment, verdict)
        if verdict.passed:
            try:
                example = to_sft_example(trace, assessment.score, window_start=window_start, messages=messages)
            except FormatError as exc:
                error = exc.message
        candidate = candidate_from(
            trace,
            assessment,
            verdict,
            messages=messages if keep_candidate_messages else None,
            tools=tools_for(trace),
        )
        return Processed(assessment, verdict, scored, example, candidate, dict(counts), error)
