"""The assembler's scoring step: a completed trace in, what the app publishes for it out.

- `score_trace(pipeline, trace, ...)` — one trace through `TracePipeline` (score, gate, format, redact)
  and encoded for its topics: the `ScoredTrace` bytes, the window item (with the SFT example's bytes),
  the figures for the metrics and the task's reference after it, as a `Scored`. Pure: the faust agent
  only publishes what it returns.
- `WindowItem` / `WindowBatch` — what the assembler tells the window agent (its internal topic).

(Scoring in a child process beside the event loop was measured and left out: on 2 cores the worker
waited for the child at the end of each batch, and rounds of the ingest bench took 5-10% longer.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel

from stillflow.contracts import AgentTrace, ContractError, encode
from stillflow.quality.scoring import next_reference
from streams.pairs import PairCandidate
from streams.pipeline import TracePipeline
from streams.windows import window_start_for

__all__ = [
    "DIMENSIONS",
    "Scored",
    "WindowBatch",
    "WindowItem",
    "score_trace",
]

DIMENSIONS = ("correctness", "efficiency", "tool_selection", "safety", "reasoning_quality", "overall")


class WindowItem(BaseModel):
    """What the assembling agent tells the window agent about one scored trace. Private to the streams app
    (its internal topic), not a contract between services."""

    event_time: datetime  # the trace's, which is also its SFT example's
    passed: bool
    example_id: str | None = None
    # The SFT example as encoded for its topic: the window agent forwards the bytes without parsing them
    # again, and reads the messages back only to keep a pair candidate (which then comes without them).
    example_json: str | None = None
    candidate: PairCandidate


class WindowBatch(BaseModel):
    """The window items of one assembler batch, in one record: one send, one window-agent event and one
    book write per batch instead of per trace (a hop through faust costs about a no-op event)."""

    items: list[WindowItem]


@dataclass(frozen=True)
class Scored:
    """Everything the app does with one scored trace, without the trace itself."""

    trace_id: str
    task_id: str
    timestamp: float  # the trace's event time, epoch seconds
    passed: bool
    rejected_by: tuple[str, ...]
    dims: tuple[float, ...]  # in DIMENSIONS order
    redactions: dict[str, int]
    reference: int | None  # the task's reference after this trace
    scored_json: bytes | None  # None: it could not be encoded (see errors); no window item then
    item_json: str | None
    has_example: bool
    errors: tuple[tuple[str, str], ...] = ()  # (kind, reason) for the DLQ
    seconds: float = 0.0  # time spent scoring it


def score_trace(pipeline: TracePipeline, trace: AgentTrace, *, reference_steps: int | None = None,
                reasoning_quality: float | None = None, window_size_s: float = 60.0) -> Scored:
    """Score, gate, format and redact `trace`, and encode what is published for it."""
    t0 = time.perf_counter()
    wstart = window_start_for(trace.timestamp, window_size_s)
    p = pipeline.process(trace, reference_steps=reference_steps, reasoning_quality=reasoning_quality,
                         window_start=wstart)
    score = p.scored.score
    base = {
        "trace_id": trace.trace_id, "task_id": trace.task_id, "timestamp": trace.timestamp.timestamp(),
        "passed": p.verdict.passed, "rejected_by": tuple(p.verdict.rejected_by),
        "dims": tuple(float(getattr(score, d)) for d in DIMENSIONS), "redactions": dict(p.redactions),
        "reference": next_reference(reference_steps, trace, correct=p.assessment.correct),
    }
    try:
        scored_json = encode(p.scored)
    except ContractError as exc:  # a trace near the size limit plus its score can pass it
        return Scored(**base, scored_json=None, item_json=None, has_example=False,
                      errors=((exc.kind, f"scored trace {trace.trace_id}: {exc.message}"),),
                      seconds=time.perf_counter() - t0)
    errors: list[tuple[str, str]] = []
    example_json: str | None = None
    cand = p.candidate
    if p.example is not None:
        try:
            example_json = encode(p.example).decode()
        except ContractError as exc:  # the redacted conversation alone over the size limit
            errors.append((exc.kind, f"SFT example of {trace.trace_id}: {exc.message}"))
        else:
            cand = cand.model_copy(update={"messages": None})  # the window agent reads them from the example
    item = WindowItem(event_time=trace.timestamp, passed=p.verdict.passed, candidate=cand,
                      example_id=p.example.example_id if example_json is not None else None,
                      example_json=example_json)
    return Scored(**base, scored_json=scored_json, item_json=item.model_dump_json(),
                  has_example=example_json is not None, errors=tuple(errors), seconds=time.perf_counter() - t0)
