"""The assembler's work on one batch of source records, faust-free and picklable: decode, assemble, expire,
score. The faust agent hands a batch over as the raw records it consumed and publishes and writes what comes
back; `streams.stage` runs `BatchWork` in a child process beside the event loop (or in the worker).

- `Record` — one consumed record as the worker read it (its bytes and where they came from); `trace_key`
  is the assembly table's key for a record key.
- `assemble_batch(records, state_of, ...)` — the pure step: each record decoded (or dead-lettered), checked
  against its key and fed to `streams.assembly`; expiry requests applied. Returns the states the batch
  changed, the traces it completed, the dead letters and the counts for the metrics.
- `BatchWork` — runs batches in order and keeps what must carry from one batch to the next:
  - the assembly states it produced (`states`): the worker's table holds the same values (as written to its
    changelog), so each state crosses between the processes once per change, as bytes, not once per event;
    a state it does not hold (after a restart or a rebalance) comes in with the batch (`BatchIn.states`);
  - each task's reference step count (`_Chain`), seeded from the `references` table.

Why the records go over raw: decoding an event (pydantic validation) and assembling it were a third of the
worker's event-loop time per event; here they run beside it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from stillflow.contracts import AgentTrace, DeadLetter, TraceOutcomeEvent, TraceStepEvent, utcnow
from stillflow.dlq import decode_or_letter, make_dead_letter
from streams.assembly import (
    AssemblyError,
    AssemblyState,
    add_outcome,
    add_step,
    incomplete_dead_letter,
    is_expired,
)
from streams.score_stage import Job, Scored, ScoringConfig, _Chain
from streams.settings import StreamsSettings
from streams.tables import as_model

__all__ = [
    "EXPIRE",
    "OUTCOMES",
    "STEPS",
    "Assembled",
    "BatchIn",
    "BatchOut",
    "BatchWork",
    "Record",
    "WorkConfig",
    "SERVICE",
    "assemble_batch",
    "encode_state",
    "held_keys",
    "lookup_states",
    "trace_key",
]

STEPS, OUTCOMES, EXPIRE = "steps", "outcomes", "expire"  # Record.source
SERVICE = "streams"


class Record(NamedTuple):
    """One consumed record (a tuple: a batch of them pickles at memory speed)."""

    source: str  # STEPS, OUTCOMES or EXPIRE (a request to expire the trace named by the key)
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def trace_key(key: bytes | None) -> str:
    """The assembly table's key for a record key. A valid event's key is its trace_id (checked); a key that
    is not UTF-8 maps to some string, and its record is dead-lettered for the mismatch anyway."""
    return key.decode("utf-8", "replace") if key else ""


def encode_state(state: AssemblyState) -> bytes:
    """A state as its changelog record holds it (what `streams.table_codec` writes for the model)."""
    return state.model_dump_json().encode()


@dataclass
class Assembled:
    """What `assemble_batch` did: `states` maps each trace it changed to its new state (None: deleted)."""

    states: dict[str, AssemblyState | None] = field(default_factory=dict)
    completed: list[AgentTrace] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    events: Counter[tuple[str, str]] = field(default_factory=Counter)  # (role, ok|dead_letter|duplicate|conflict)
    expired: int = 0  # incomplete traces expired (each has a letter)


def assemble_batch(records: list[Record], state_of: Callable[[str], AssemblyState | None], *, max_steps: int,
                   assembly_timeout_s: float, steps_topic: str, now: datetime | None = None) -> Assembled:
    """Feed `records` in order to the assembler. `state_of(trace_id)` gives a trace's state before the batch;
    the batch's own changes are kept here. Nothing raises for bad input: a record that cannot be used is a
    dead letter that says why."""
    now = now or utcnow()
    out = Assembled()
    changed = out.states

    def state(tid: str) -> AssemblyState | None:
        return changed[tid] if tid in changed else state_of(tid)

    for r in records:
        if r.source == EXPIRE:
            tid = trace_key(r.key)
            st = state(tid)
            if st is None or not is_expired(st, now, assembly_timeout_s):
                continue  # gone already, or it moved on since the timer looked
            if not st.completed:
                out.expired += 1
                out.letters.append(incomplete_dead_letter(st, source_topic=steps_topic, service=SERVICE, now=now))
            changed[tid] = None
            continue
        role = r.source
        model = TraceStepEvent if role == STEPS else TraceOutcomeEvent
        ev, letter = decode_or_letter(r.value, model, source_topic=r.topic, partition=r.partition, offset=r.offset,
                                      key=r.key, service=SERVICE)
        if letter is None and ev is not None and r.key != ev.trace_id.encode():
            # The assembly table is partitioned by trace_id: a step keyed otherwise could land on
            # another partition than its trace and never meet it.
            letter = make_dead_letter(
                r.value, source_topic=r.topic, partition=r.partition, offset=r.offset, key=r.key,
                kind="key_mismatch", service=SERVICE,
                # the key itself is not quoted: it is the producer's free text (the letter keeps it)
                reason=f"record key ({len(r.key or b'')} bytes) is not the trace_id {ev.trace_id!r}",
            )
        if letter is not None:
            out.events[role, "dead_letter"] += 1
            out.letters.append(letter)
            continue
        assert ev is not None
        tid = ev.trace_id
        try:
            if isinstance(ev, TraceStepEvent):
                res = add_step(state(tid), ev, max_steps=max_steps, now=now)
            else:
                res = add_outcome(state(tid), ev, max_steps=max_steps, now=now)
        except AssemblyError as exc:
            out.events[role, "dead_letter"] += 1
            out.letters.append(make_dead_letter(
                r.value, source_topic=r.topic, partition=r.partition, offset=r.offset, key=r.key,
                kind=exc.kind, reason=exc.message, service=SERVICE,
            ))
            continue
        if res.duplicate:
            out.events[role, "conflict" if res.conflict else "duplicate"] += 1
            continue
        out.events[role, "ok"] += 1
        changed[tid] = res.state
        if res.trace is not None:
            out.completed.append(res.trace)
    return out


@dataclass(frozen=True)
class WorkConfig:
    """What the batch work needs from the settings, in a form a child process can be given."""

    scoring: ScoringConfig
    max_steps: int
    assembly_timeout_s: float
    steps_topic: str  # named in an expired trace's dead letter

    @classmethod
    def from_settings(cls, settings: StreamsSettings) -> WorkConfig:
        s = settings.streams
        return cls(scoring=ScoringConfig.from_settings(settings), max_steps=s.max_steps_per_trace,
                   assembly_timeout_s=s.assembly_timeout_s, steps_topic=settings.topics.trace_steps)


@dataclass
class BatchIn:
    """One batch for `BatchWork.run`."""

    records: list[Record]
    # the state of each trace named by a record that `BatchWork` does not hold, as the table stores it
    # (encoded bytes, a changelog dict, or the model); a trace absent here and there has no state yet
    states: dict[str, Any] = field(default_factory=dict)
    forget: bool = False  # drop every held state first (after a rebalance: the table is the truth again)
    references: dict[str, int] | None = None  # the `references` table: replaces the references carried
    score: bool = True  # False: return the completed traces unscored (the LLM judge scores them first)


@dataclass
class BatchOut:
    """What the worker publishes and writes for one batch."""

    # each changed trace: (its state encoded for the changelog, updated_at epoch seconds, completed); None: delete
    states: dict[str, tuple[bytes, float, bool] | None]
    scored: list[Scored]
    traces: list[AgentTrace]  # the completed traces when the batch was not scored (BatchIn.score False)
    letters: list[DeadLetter]
    events: Counter[tuple[str, str]]
    completed: int
    expired: int
    seconds: float  # decoding and assembling the batch (not scoring)


class BatchWork:
    """Runs batches in order (see the module doc): one per worker, in its scoring process or in the worker."""

    def __init__(self, config: WorkConfig) -> None:
        self.config = config
        self.chain = _Chain(config.scoring, config.scoring.pipeline())
        # trace_id -> its state: the model while the trace is open; a completed trace's tombstone (kept until it
        # expires, so that its redelivered events are known as duplicates) and a state handed in stay encoded
        # until an event needs them: a few hundred bytes each instead of a model
        self.states: dict[str, AssemblyState | bytes | dict[str, Any]] = {}

    def _state_of(self, tid: str) -> AssemblyState | None:
        return as_model(AssemblyState, self.states.get(tid))

    def run(self, batch: BatchIn) -> BatchOut:
        t0 = time.perf_counter()
        if batch.forget:
            self.states.clear()
        if batch.references is not None:
            self.chain.seed(batch.references)
        held = self.states
        held.update(batch.states)
        c = self.config
        a = assemble_batch(batch.records, self._state_of, max_steps=c.max_steps,
                           assembly_timeout_s=c.assembly_timeout_s, steps_topic=c.steps_topic)
        states: dict[str, tuple[bytes, float, bool] | None] = {}
        for tid, st in a.states.items():
            if st is None:
                held.pop(tid, None)
                states[tid] = None
            else:
                raw = encode_state(st)
                held[tid] = raw if st.completed else st
                states[tid] = (raw, st.updated_at.timestamp(), st.completed)
        seconds = time.perf_counter() - t0
        scored = self.chain.run([Job(t) for t in a.completed]) if batch.score else []
        return BatchOut(states=states, scored=scored, traces=[] if batch.score else a.completed, letters=a.letters,
                        events=a.events, completed=len(a.completed), expired=a.expired, seconds=seconds)

    def score(self, jobs: list[Job], references: dict[str, int] | None = None) -> list[Scored]:
        """Score `jobs` in order (the LLM judge's path); `references` as in `BatchIn`."""
        if references is not None:
            self.chain.seed(references)
        return self.chain.run(jobs)


def held_keys(records: list[Record]) -> set[str]:
    """The traces a batch names (each record's `trace_key`)."""
    return {trace_key(r.key) for r in records}


def lookup_states(keys: set[str], known: set[str], table_value: Callable[[str], Any],
                  overlay: Mapping[str, Any]) -> dict[str, Any]:
    """The states to send with a batch: for each key the worker's `BatchWork` may not hold (not in `known`),
    its newest value — from `overlay` (results not yet in the table; a None there is a deletion), else the
    table's; keys without a state are left out."""
    out = {}
    for k in keys - known:
        v = overlay[k] if k in overlay else table_value(k)
        if v is not None:
            out[k] = v
    return out
