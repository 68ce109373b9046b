"""Trace assembly: gather a trace's step events and its outcome event into one `AgentTrace`.

Exports:
- `AssemblyState` — the per-trace state (a pydantic model; store `dump_state(s)` in a table keyed
  by trace_id and read it back with `load_state(d)`);
- `AssemblyResult` — what `add_step` / `add_outcome` return: the new state, whether the event was a
  duplicate, whether it conflicted with what was already there, and the completed trace (once);
- `add_step(state, event, *, max_steps, now)`, `add_outcome(state, event, *, max_steps, now)`;
- `is_expired(state, now, timeout)`, `missing_seqs(state)`, `describe_incomplete(state)`,
  `incomplete_dead_letter(state, *, source_topic, service)`;
- `AssemblyError` (a `ContractError`: the caller dead-letters the event) and `INCOMPLETE`.

Rules: a trace is whole when its outcome and all `n_steps` steps (seq 0..n_steps-1) are in, or as
soon as an outcome that carries `steps` arrives. Steps may come late, twice or out of order.
An event already seen (same event_id, same seq, a second outcome) is a duplicate: the first one is
kept, and when the content differs the result says `conflict`. After completion the state becomes
a small tombstone (`completed=True`, no steps) so that redelivered events are recognised as
duplicates until it expires; an expired tombstone is simply deleted, an expired incomplete state
goes to the DLQ with reason `incomplete`. (A step redelivered after its tombstone was deleted starts
a new state that later expires as incomplete: keep tombstones as long as redelivery can happen.)

Expiry uses processing time (`now`, default the wall clock) since the last accepted event, so a long
agent run that keeps publishing steps does not expire and a replay of old events does not expire
at once.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ConfigDict, Field

from stillflow.contracts import (
    AgentTrace,
    ContractError,
    DeadLetter,
    TraceOutcomeEvent,
    TraceStep,
    TraceStepEvent,
    utcnow,
)
from stillflow.ids import dead_letter_id_for
from streams.tables import TableModel

__all__ = [
    "INCOMPLETE",
    "AssemblyError",
    "AssemblyState",
    "AssemblyResult",
    "add_step",
    "add_outcome",
    "is_expired",
    "missing_seqs",
    "describe_incomplete",
    "incomplete_dead_letter",
    "dump_state",
    "load_state",
]

INCOMPLETE = "incomplete"
DEFAULT_MAX_STEPS = 512


class AssemblyError(ContractError):
    """An event the assembler refuses (kinds: `too_many_steps`, `seq_out_of_range`, `trace_mismatch`)."""


class AssemblyState(TableModel):
    """What the assembler knows about one trace. JSON-serialisable (int keys become strings and back)."""

    model_config = ConfigDict(extra="forbid")

    trace_id: str
    task_id: str | None = None
    steps: dict[int, TraceStep] = Field(default_factory=dict)
    step_event_ids: dict[int, str] = Field(default_factory=dict)
    outcome: TraceOutcomeEvent | None = None
    completed: bool = False
    first_seen: datetime
    updated_at: datetime
    n_duplicates: int = 0
    n_conflicts: int = 0


@dataclass(frozen=True)
class AssemblyResult:
    """The outcome of feeding one event to the assembler."""

    state: AssemblyState
    duplicate: bool = False  # already seen: the event changed nothing
    conflict: bool = False  # a duplicate whose content differs from the one kept (the first)
    trace: AgentTrace | None = None  # set exactly once, on the event that completes the trace


def dump_state(state: AssemblyState) -> dict[str, Any]:
    """The state as a plain JSON-compatible dict (what a faust table stores)."""
    return state.model_dump(mode="json")


def load_state(data: dict[str, Any] | AssemblyState | None) -> AssemblyState | None:
    """The inverse of `dump_state` (passes `None` and states through)."""
    if data is None or isinstance(data, AssemblyState):
        return data
    return AssemblyState.model_validate(data)


def _new(trace_id: str, now: datetime) -> AssemblyState:
    return AssemblyState(trace_id=trace_id, first_seen=now, updated_at=now)


def _touch(state: AssemblyState, now: datetime, **update: Any) -> AssemblyState:
    update["updated_at"] = max(now, state.updated_at)
    return state.model_copy(update=update)


def _count_dup(state: AssemblyState, conflict: bool) -> AssemblyResult:
    new = state.model_copy(
        update={"n_duplicates": state.n_duplicates + 1, "n_conflicts": state.n_conflicts + int(conflict)}
    )
    return AssemblyResult(state=new, duplicate=True, conflict=conflict)


def _tombstone(state: AssemblyState) -> AssemblyState:
    return state.model_copy(update={"steps": {}, "step_event_ids": {}, "outcome": None, "completed": True})


def _complete(state: AssemblyState) -> AssemblyResult:
    outcome = state.outcome
    assert outcome is not None
    steps = list(outcome.steps) if outcome.steps is not None else [state.steps[i] for i in range(outcome.n_steps)]
    trace = outcome.to_trace(steps)
    return AssemblyResult(state=_tombstone(state), trace=trace)


def _whole(state: AssemblyState) -> bool:
    o = state.outcome
    if o is None:
        return False
    return o.steps is not None or len(state.steps) >= o.n_steps


def _check_trace(state: AssemblyState | None, trace_id: str) -> None:
    if state is not None and state.trace_id != trace_id:
        raise AssemblyError("trace_mismatch", f"event of trace {trace_id} given the state of {state.trace_id}")


def add_step(
    state: AssemblyState | None,
    event: TraceStepEvent,
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    now: datetime | None = None,
) -> AssemblyResult:
    """Add one step event. Raises `AssemblyError` (state unchanged) when seq is beyond `max_steps`
    or beyond the outcome's `n_steps`."""
    now = now or utcnow()
    _check_trace(state, event.trace_id)
    if state is None:
        state = _new(event.trace_id, now)
    if state.completed:
        return _count_dup(state, conflict=False)
    seq = event.seq
    if seq in state.steps:
        kept = state.steps[seq]
        same_event = state.step_event_ids.get(seq) == event.event_id
        return _count_dup(state, conflict=not same_event and kept != event.step)
    if event.event_id in state.step_event_ids.values():
        # the same event under another seq: a producer bug; keep the first
        return _count_dup(state, conflict=True)
    if seq >= max_steps:
        raise AssemblyError("too_many_steps", f"trace {event.trace_id}: step seq {seq} >= max_steps {max_steps}")
    if state.outcome is not None:
        if state.outcome.steps is not None:  # pragma: no cover - such a state completes at once
            return _count_dup(state, conflict=False)
        if seq >= state.outcome.n_steps:
            raise AssemblyError(
                "seq_out_of_range",
                f"trace {event.trace_id}: step seq {seq} but the outcome says {state.outcome.n_steps} steps",
            )
    steps = dict(state.steps)
    steps[seq] = event.step
    ids = dict(state.step_event_ids)
    ids[seq] = event.event_id
    state = _touch(state, now, steps=steps, step_event_ids=ids, task_id=state.task_id or event.task_id)
    if _whole(state):
        return _complete(state)
    return AssemblyResult(state=state)


def _outcome_key(o: TraceOutcomeEvent) -> dict[str, Any]:
    return o.model_dump(exclude={"event_id", "timestamp", "schema_version"})


def add_outcome(
    state: AssemblyState | None,
    event: TraceOutcomeEvent,
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    now: datetime | None = None,
) -> AssemblyResult:
    """Add the outcome event. Raises `AssemblyError` (state unchanged) when `n_steps` exceeds
    `max_steps` or a step already held has a seq >= `n_steps`."""
    now = now or utcnow()
    _check_trace(state, event.trace_id)
    if state is None:
        state = _new(event.trace_id, now)
    if state.completed:
        return _count_dup(state, conflict=False)
    if state.outcome is not None:
        same = state.outcome.event_id == event.event_id or _outcome_key(state.outcome) == _outcome_key(event)
        return _count_dup(state, conflict=not same)
    if event.n_steps > max_steps:
        raise AssemblyError("too_many_steps", f"trace {event.trace_id}: {event.n_steps} steps > max_steps {max_steps}")
    if event.steps is None and state.steps and max(state.steps) >= event.n_steps:
        raise AssemblyError(
            "seq_out_of_range",
            f"trace {event.trace_id}: the outcome says {event.n_steps} steps but step seq {max(state.steps)} arrived",
        )
    state = _touch(state, now, outcome=event, task_id=event.task_id)
    if _whole(state):
        return _complete(state)
    return AssemblyResult(state=state)


def _seconds(timeout: float | timedelta) -> float:
    return timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)


def is_expired(state: AssemblyState, now: datetime, timeout: float | timedelta) -> bool:
    """True when nothing was accepted for `timeout` (seconds or a timedelta) before `now`.

    Check `state.completed` to tell a tombstone (delete it) from an incomplete trace (dead-letter it).
    """
    return (now - state.updated_at).total_seconds() >= _seconds(timeout)


def missing_seqs(state: AssemblyState) -> list[int] | None:
    """The seqs still missing, or None when the outcome (and so n_steps) is not known yet."""
    if state.outcome is None:
        return None
    return [i for i in range(state.outcome.n_steps) if i not in state.steps]


def describe_incomplete(state: AssemblyState) -> str:
    """A one-line human reason, e.g. `incomplete: outcome missing, 3 steps (seq 0..4) in`."""
    missing = missing_seqs(state)
    if missing is None:
        seqs = sorted(state.steps)
        span = f" (seq {seqs[0]}..{seqs[-1]})" if seqs else ""
        return f"{INCOMPLETE}: outcome missing, {len(seqs)} steps{span} in"
    shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
    return (
        f"{INCOMPLETE}: {len(missing)} of {state.outcome.n_steps if state.outcome else 0} steps missing (seq {shown})"
    )


def incomplete_dead_letter(
    state: AssemblyState, *, source_topic: str, service: str = "streams", now: datetime | None = None
) -> DeadLetter:
    """The DLQ record of an expired incomplete trace. `raw_b64` holds a bounded JSON summary (ids,
    seqs held and missing, whether the outcome came), not the step contents, so it always fits."""
    summary = {
        "trace_id": state.trace_id,
        "task_id": state.task_id,
        "outcome": state.outcome is not None,
        "n_steps": state.outcome.n_steps if state.outcome else None,
        "seqs": sorted(state.steps),
        "missing": missing_seqs(state),
        "step_event_ids": [state.step_event_ids[k] for k in sorted(state.step_event_ids)],
        "outcome_event_id": state.outcome.event_id if state.outcome else None,
        "first_seen": state.first_seen.isoformat(),
        "updated_at": state.updated_at.isoformat(),
    }
    raw = json.dumps(summary, separators=(",", ":")).encode()
    return DeadLetter(
        event_id=dead_letter_id_for(INCOMPLETE, state.trace_id),
        timestamp=now or utcnow(),
        source_topic=source_topic,
        key_b64=base64.b64encode(state.trace_id.encode()).decode(),
        raw_b64=base64.b64encode(raw).decode(),
        raw_size=len(raw),
        reason=describe_incomplete(state),
        kind=INCOMPLETE,
        service=service,
    )
