"""The assembler's scoring stage: completed traces in, what the app publishes for them out.

- `score_trace(pipeline, trace, ...)` — one trace through `TracePipeline` (score, gate, format, redact)
  and encoded for its topics: the `ScoredTrace` bytes, the window item, the SFT example's bytes, the
  figures for the metrics and the task's reference after it, as a picklable `Scored`. Pure: the faust
  agent only publishes what it returns.
- `ScoringConfig`, `Job`, `_Chain` — scoring traces in order, each task's reference carried from trace to
  trace (`streams.batch_work` runs it, in the worker's scoring process by default: `streams.stage`).
- `WindowItem` / `WindowBatch` / `encode_window_record` / `decode_window_record` — what the assembler
  tells the window agent (its internal topic).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from stillflow.contracts import AgentTrace, ContractError, encode, get_limits
from stillflow.quality.scoring import next_reference
from stillflow.quality.settings import QualitySettings
from streams.pairs import PairCandidate
from streams.pipeline import TracePipeline
from streams.settings import StreamsSettings
from streams.windows import window_start_for

__all__ = [
    "DIMENSIONS",
    "Job",
    "Scored",
    "ScoringConfig",
    "WindowBatch",
    "WindowItem",
    "decode_window_record",
    "encode_window_record",
    "score_trace",
    "window_candidate",
]
# tasks whose reference a worker's scoring carries (each ~100 bytes); past it, the least recently scored go
MAX_REFERENCES = 100_000
DIMENSIONS = ("correctness", "efficiency", "tool_selection", "safety", "reasoning_quality", "overall")


class WindowItem(BaseModel):
    """What the assembling agent tells the window agent about one scored trace. Private to the streams app
    (its internal topic), not a contract between services."""

    event_time: datetime  # the trace's, which is also its SFT example's
    passed: bool
    example_id: str | None = None  # set when the trace has an SFT example (it travels beside the item)
    example_json: str | None = None  # records written before examples travelled beside the items
    candidate: PairCandidate  # without messages and tools when there is an example (they are in it)


class WindowBatch(BaseModel):
    """The window items of one assembler batch, in one record: one send, one window-agent event and one
    book write per batch instead of per trace (a hop through faust costs about a no-op event)."""

    items: list[WindowItem]


def encode_window_record(items: list[tuple[str, bytes | None]]) -> bytes:
    """One window record: the items (JSON) on the first line, then each SFT example as encoded for its
    topic, one per line, in the order of the items that have one. The window agent forwards the examples
    without parsing them (as JSON strings inside the items they had to be escaped and unescaped: a fifth
    of the window agent's time). Encoded JSON has no raw newline."""
    head = b'{"items":[' + ",".join(raw for raw, _ in items).encode() + b"]}"
    return b"\n".join([head, *(ex for _, ex in items if ex is not None)])


def window_candidate(item: WindowItem, example: bytes | dict[str, Any] | None) -> PairCandidate:
    """The pair candidate of a window item, with its messages and tools: read back from the SFT example (as
    encoded for its topic, or already parsed) when the item travelled without them (they were sent once, in
    the example)."""
    cand = item.candidate
    if example is not None and cand.messages is None:
        data = json.loads(example) if isinstance(example, bytes) else example
        cand = cand.model_copy(update={"messages": data["messages"], "tools": data.get("tools", [])})
    return cand


def decode_window_record(raw: bytes) -> list[tuple[WindowItem, bytes | None]]:
    """The items of a window record with their SFT examples. Raises ValueError for a malformed record."""
    head, sep, rest = raw.partition(b"\n")
    batch = WindowBatch.model_validate_json(head)
    examples = iter(rest.split(b"\n") if sep else [])
    out: list[tuple[WindowItem, bytes | None]] = []
    for item in batch.items:
        if item.example_json is not None:
            out.append((item, item.example_json.encode()))
        elif item.example_id is not None:
            ex = next(examples, None)
            if ex is None:
                raise ValueError(f"window record: the example of {item.example_id} is missing")
            out.append((item, ex))
        else:
            out.append((item, None))
    if next(examples, None) is not None:
        raise ValueError("window record: more examples than items that have one")
    return out


@dataclass(frozen=True)
class Scored:
    """Everything the app does with one scored trace, without the trace itself."""

    trace_id: str
    task_id: str
    workload: str  # resolved (the trace's, else the default of the settings)
    timestamp: float  # the trace's event time, epoch seconds
    passed: bool
    rejected_by: tuple[str, ...]
    dims: tuple[float, ...]  # in DIMENSIONS order
    redactions: dict[str, int]
    reference: int | None  # the task's reference after this trace
    scored_json: bytes | None  # None: it could not be encoded (see errors); no window item then
    item_json: str | None
    example_json: bytes | None  # the SFT example as encoded for its topic
    errors: tuple[tuple[str, str], ...] = ()  # (kind, reason) for the DLQ
    seconds: float = 0.0  # time spent scoring it
    reasons: tuple[str, ...] = ()  # the failed gates' reasons (redacted), as the scored trace has them

    @property
    def has_example(self) -> bool:
        return self.example_json is not None


def score_trace(pipeline: TracePipeline, trace: AgentTrace, *, reference_steps: int | None = None,
                reasoning_quality: float | None = None, window_size_s: float = 60.0) -> Scored:
    """Score, gate, format and redact `trace`, and encode what is published for it."""
    t0 = time.perf_counter()
    wstart = window_start_for(trace.timestamp, window_size_s)
    p = pipeline.process(trace, reference_steps=reference_steps, reasoning_quality=reasoning_quality,
                         window_start=wstart)
    score = p.scored.score
    base = {
        "trace_id": trace.trace_id, "task_id": trace.task_id, "workload": p.scored.trace.workload or "default",
        "timestamp": trace.timestamp.timestamp(),
        "passed": p.verdict.passed, "rejected_by": tuple(p.verdict.rejected_by),
        "dims": tuple(float(getattr(score, d)) for d in DIMENSIONS), "redactions": dict(p.redactions),
        "reference": next_reference(reference_steps, trace, correct=p.assessment.correct),
        "reasons": tuple(p.scored.reasons),
    }
    try:
        scored_json = encode(p.scored)
    except ContractError as exc:  # a trace near the size limit plus its score can pass it
        return Scored(**base, scored_json=None, item_json=None, example_json=None,
                      errors=((exc.kind, f"scored trace {trace.trace_id}: {exc.message}"),),
                      seconds=time.perf_counter() - t0)
    errors: list[tuple[str, str]] = []
    example_json: bytes | None = None
    cand = p.candidate
    if p.example is not None:
        try:
            example_json = encode(p.example)
        except ContractError as exc:  # the redacted conversation alone over the size limit
            errors.append((exc.kind, f"SFT example of {trace.trace_id}: {exc.message}"))
        else:
            # the window agent reads them back from the example (when it keeps the candidate)
            cand = cand.model_copy(update={"messages": None, "tools": []})
    item = WindowItem(event_time=trace.timestamp, passed=p.verdict.passed, candidate=cand,
                      example_id=p.example.example_id if example_json is not None else None)
    return Scored(**base, scored_json=scored_json, item_json=item.model_dump_json(), example_json=example_json,
                  errors=tuple(errors), seconds=time.perf_counter() - t0)


@dataclass(frozen=True)
class ScoringConfig:
    """What scoring needs from the settings, in a form a child process can be given."""

    quality: dict[str, Any]
    redact_pii: bool
    redact_scored: bool
    window_size_s: float
    limits: tuple[int, int, int]  # the contract limits (encode refuses larger records)
    workload_default: str = "{agent_id}"

    @classmethod
    def from_settings(cls, settings: StreamsSettings) -> ScoringConfig:
        lim = get_limits()
        return cls(quality=settings.quality.model_dump(), redact_pii=settings.streams.redact_pii,
                   redact_scored=settings.streams.redact_scored, window_size_s=settings.streams.window_size_s,
                   limits=(lim.max_step_content_chars, lim.max_event_bytes, lim.max_id_chars),
                   workload_default=settings.workloads.default)

    def pipeline(self) -> TracePipeline:
        return TracePipeline.from_quality(QualitySettings.model_validate(self.quality), redact=self.redact_pii,
                                          redact_scored=self.redact_scored, workload_default=self.workload_default)


@dataclass(frozen=True)
class Job:
    """One completed trace to score: its task's reference as the table had it when the trace was handed
    over, and the LLM judge's reasoning score when there is a judge."""

    trace: AgentTrace
    reference_steps: int | None = None
    reasoning_quality: float | None = None


@dataclass
class _Chain:
    """Scores jobs in order and remembers each task's reference from trace to trace (`refs`: seeded from the
    `references` table, then lowered by the traces scored here): a trace scored before the previous ones were
    published sees what they lowered it to. A reference only goes down, so with a job's own reference the
    lower of the two is what scoring one after another would have used."""

    config: ScoringConfig
    pipeline: TracePipeline
    refs: dict[str, int] = field(default_factory=dict)  # in the order the tasks were last scored (or seeded)
    max_refs: int = MAX_REFERENCES

    def seed(self, refs: dict[str, int]) -> None:
        """Carry the `references` table's values from now on (at most `max_refs`: the last ones it holds)."""
        items = list(refs.items())
        self.refs = dict(items[-self.max_refs:])

    def _remember(self, task: str, ref: int) -> None:
        self.refs.pop(task, None)  # to the end: the most recently scored task
        self.refs[task] = ref
        if len(self.refs) > self.max_refs:
            # a soft signal: forget the tasks scored longest ago (the table keeps their values)
            for old in list(self.refs)[: len(self.refs) - self.max_refs // 2]:
                del self.refs[old]

    def run(self, jobs: list[Job]) -> list[Scored]:
        out = []
        for job in jobs:
            task = job.trace.task_id
            known = self.refs.get(task)
            ref = known if job.reference_steps is None else (
                job.reference_steps if known is None else min(known, job.reference_steps))
            s = score_trace(self.pipeline, job.trace, reference_steps=ref, reasoning_quality=job.reasoning_quality,
                            window_size_s=self.config.window_size_s)
            if s.reference is not None:
                self._remember(task, s.reference)
            out.append(s)
        return out
