"""Span assembly: a trace's spans (and GenAI log events) gathered from many records into one state.

Exports `SpanState` (per hex trace id; a table value), `SpanResult`, `add_spans`, `add_logs`, `is_ready`,
`is_expired`, `is_late`, `span_letter`.

Rules: spans of a trace arrive over several records (one per export batch), out of order, and twice when
an exporter retries; a span is kept once by its span id (the first copy wins; a second copy with other
content counts as a conflict). A trace is whole when its root span (the one without a parent)
has arrived — spans are exported when they end, so the root ends last — and nothing new came for
`settle_s` (processing time), because its children's last batch may still be on the way. A trace whose
root never comes expires after `timeout_s` of quiet and is dead-lettered as `incomplete`. After a trace is
built its state becomes a tombstone (no spans) so that retried records are recognised; a record for a
trace nobody holds whose spans all ended more than `max_lateness_s` ago is late: dead-lettered, never
built again.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field

from stillflow.contracts import DeadLetter, TraceOutcomeEvent, utcnow
from stillflow.ids import dead_letter_id_for
from streams.otel.otlp import OtelLog, OtelSpan
from streams.tables import TableModel

__all__ = ["SpanState", "SpanResult", "add_spans", "add_logs", "add_outcome", "is_ready", "is_expired", "is_late",
           "span_letter", "INCOMPLETE", "LATE", "TOO_MANY_SPANS"]

INCOMPLETE, LATE, TOO_MANY_SPANS = "incomplete", "late", "too_many_spans"


class SpanState(TableModel):
    trace_id: str
    spans: dict[str, OtelSpan] = Field(default_factory=dict)
    logs: dict[str, OtelLog] = Field(default_factory=dict)  # by a digest of the record
    outcome: TraceOutcomeEvent | None = None  # an outcome keyed by this trace id, if it came first
    first_seen: datetime
    updated_at: datetime
    completed: bool = False
    forwarded_to: str | None = None  # the task id the trajectory went on to wait under (see streams.otel.join)
    n_duplicates: int = 0
    n_conflicts: int = 0

    def has_root(self) -> bool:
        return any(s.parent_span_id is None for s in self.spans.values())


@dataclass(frozen=True)
class SpanResult:
    state: SpanState
    added: int = 0
    duplicates: int = 0


def _new(trace_id: str, now: datetime) -> SpanState:
    return SpanState(trace_id=trace_id, first_seen=now, updated_at=now)


def _gather(state: SpanState | None, trace_id: str, items: Iterable[Any], *, field: str, key: Any, limit: int,
            what: str, now: datetime | None) -> SpanResult:
    """Add items to `state.<field>` by `key(item)`, the first copy kept; a second copy that differs in content
    counts as a conflict. A completed trace (a tombstone) counts them all as duplicates."""
    now = now or utcnow()
    state = state or _new(trace_id, now)
    if state.completed:
        n = sum(1 for _ in items)
        return SpanResult(state.model_copy(update={"n_duplicates": state.n_duplicates + n}), duplicates=n)
    held = dict(getattr(state, field))
    added = dups = conflicts = 0
    for item in items:
        k = key(item)
        kept = held.get(k)
        if kept is not None:
            dups += 1
            conflicts += int(kept != item)
            continue
        if len(held) >= limit:
            raise ValueError(f"{TOO_MANY_SPANS}: trace {trace_id} has more than {limit} {what}")
        held[k] = item
        added += 1
    update = {field: held, "n_duplicates": state.n_duplicates + dups, "n_conflicts": state.n_conflicts + conflicts}
    if added:
        update["updated_at"] = max(now, state.updated_at)
    return SpanResult(state.model_copy(update=update), added=added, duplicates=dups)


def add_spans(state: SpanState | None, trace_id: str, spans: Iterable[OtelSpan], *, now: datetime | None = None,
              max_spans: int = 2048) -> SpanResult:
    """Add the spans of one record (all of trace `trace_id`; others are the caller's to refuse), by span id.
    Raises `ValueError` (`too_many_spans`) when the trace would hold more than `max_spans`."""
    return _gather(state, trace_id, spans, field="spans", key=lambda s: s.span_id, limit=max_spans, what="spans",
                   now=now)


def _log_key(rec: OtelLog) -> str:
    raw = json.dumps([rec.span_id, rec.event_name, rec.time_ns, rec.attributes, rec.body], sort_keys=True,
                     default=str)
    return hashlib.blake2b(raw.encode(), digest_size=10).hexdigest()


def add_logs(state: SpanState | None, trace_id: str, logs: Iterable[OtelLog], *, now: datetime | None = None,
             max_logs: int = 4096) -> SpanResult:
    """Add GenAI log records, deduplicated by a digest of what they say (they carry no id of their own)."""
    return _gather(state, trace_id, logs, field="logs", key=_log_key, limit=max_logs, what="GenAI log records",
                   now=now)


def add_outcome(state: SpanState | None, trace_id: str, outcome: TraceOutcomeEvent, *,
                now: datetime | None = None) -> SpanState:
    """Keep an outcome that came before the trace was built (the first one wins)."""
    now = now or utcnow()
    state = state or _new(trace_id, now)
    if state.outcome is not None:
        return state.model_copy(update={"n_duplicates": state.n_duplicates + 1})
    return state.model_copy(update={"outcome": outcome})


def _s(t: float | timedelta) -> float:
    return t.total_seconds() if isinstance(t, timedelta) else float(t)


def is_ready(state: SpanState, now: datetime, settle_s: float | timedelta) -> bool:
    return not state.completed and state.has_root() and (now - state.updated_at).total_seconds() >= _s(settle_s)


def is_expired(state: SpanState, now: datetime, timeout_s: float | timedelta) -> bool:
    """Quiet for `timeout_s`: a tombstone to delete, or an incomplete trace (no root) to dead-letter."""
    return (now - state.updated_at).total_seconds() >= _s(timeout_s)


def is_late(spans: Iterable[OtelSpan], now: datetime, max_lateness_s: float) -> bool:
    """All of a record's spans ended more than `max_lateness_s` before `now`."""
    ends = [s.end_ns or s.start_ns for s in spans]
    if not ends:
        return False
    return now.timestamp() - max(ends) / 1e9 > max_lateness_s


def span_letter(state: SpanState, kind: str, reason: str, *, source_topic: str, service: str = "streams",
                now: datetime | None = None) -> DeadLetter:
    """A bounded summary (ids, span names, counts; not the content) as the letter's raw bytes."""
    summary = {
        "trace_id": state.trace_id,
        "spans": [{"span_id": s.span_id, "parent": s.parent_span_id, "name": s.name[:100], "scope": s.scope[:100]}
                  for s in list(state.spans.values())[:200]],
        "n_spans": len(state.spans),
        "n_logs": len(state.logs),
        "first_seen": state.first_seen.isoformat(),
        "updated_at": state.updated_at.isoformat(),
    }
    raw = json.dumps(summary, separators=(",", ":")).encode()
    return DeadLetter(
        event_id=dead_letter_id_for(kind, state.trace_id), timestamp=now or utcnow(), source_topic=source_topic,
        key_b64=base64.b64encode(state.trace_id.encode()).decode(), raw_b64=base64.b64encode(raw).decode(),
        raw_size=len(raw), reason=reason[:2000], kind=kind, service=service,
    )
