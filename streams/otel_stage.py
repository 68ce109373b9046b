"""The OTel stages of the streams app: thin faust wiring of `streams.otel` (assembly, trajectory, join).

Two agents:
1. `otel-spans` over `stillflow.otlp.spans`, `stillflow.otlp.logs`, `stillflow.otlp.outcomes` and the internal
   tick topic, all keyed by the hex trace id; table `otel_spans` (trace id → `SpanState`). Spans are
   gathered, and a timer asks (through the tick topic: a table changes only while a record of its partition
   is processed) for settled traces to be built and quiet ones to expire. A built trace whose outcome came
   first (keyed by its trace id) is published joined at once; otherwise it travels on, keyed by its join key
   (the `stillflow.task_id`, else the trace id), to
2. `otel-tasks` over the internal tasks topic; table `otel_tasks` (join key → `TaskState`), where outcomes
   named by task id (or arriving after their trace moved on) meet the trajectories, and those nobody reports
   on go out with success unknown after `otel.outcome_wait_s`.
A joined trace is a `TraceOutcomeEvent` with its steps, published to `stillflow.trace.outcomes` under the hex
trace id: the SDK assembler completes it at once, and from there it is scored, gated, formatted and windowed
like any SDK trace. Bad records and unusable traces go to the DLQ with their reason.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import faust

from stillflow.contracts import AgentTrace, ContractError, TraceOutcomeEvent, decode, encode
from stillflow.dlq import make_dead_letter
from streams.batching import take_batches
from streams.changelog import write_many
from streams.otel.assembly import (
    INCOMPLETE,
    LATE,
    SpanState,
    add_logs,
    add_outcome,
    add_spans,
    is_expired,
    is_late,
    is_ready,
    span_letter,
)
from streams.otel.join import (
    TaskState,
    joined_event,
    outcome_is_task_keyed,
    task_add_outcome,
    task_add_trajectory,
    task_due,
)
from streams.otel.otlp import OtlpDecodeError, read_logs, read_spans
from streams.otel.trajectory import TrajectoryError, build_trajectory
from streams.table_codec import TABLE_CODEC
from streams.tables import as_model

if TYPE_CHECKING:
    from streams.app import StreamsApp

__all__ = ["OtelStage"]

log = logging.getLogger(__name__)
_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
_TICK = b"tick\n"  # a tick record: this prefix, then the keys due on the record's partition, one per line
_MAX_SCOPES = 32


def _now() -> datetime:
    return datetime.now(UTC)


class OtelStage:
    """Adds the OTel topics, tables, agents and timer to a `StreamsApp`."""

    def __init__(self, sa: StreamsApp) -> None:
        self.sa = sa
        app, settings = sa.app, sa.settings
        self.section = settings.streams.otel
        t = settings.topics
        names = settings.internal_topics()
        self.spans_name, self.logs_name, self.outcomes_name = t.otlp_spans, t.otlp_logs, t.otlp_outcomes
        self.tick_name, self.tasks_name = names["otel_tick"], names["otel_tasks"]
        self.trace_outcomes = t.trace_outcomes
        p = sa.partitions
        self.source = app.topic(self.spans_name, self.logs_name, self.outcomes_name, self.tick_name, **_RAW)
        self.tasks_topic = app.topic(self.tasks_name, partitions=p, internal=True, **_RAW)

        def table(name: str, use_partitioner: bool = False) -> Any:
            tb = app.Table(name, default=None, partitions=p, use_partitioner=use_partitioner,
                           schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer=TABLE_CODEC))
            tb.key_type, tb.key_serializer, tb.value_serializer = str, "raw", TABLE_CODEC
            tb.changelog_topic = tb._new_changelog_topic()
            return tb

        # written once per batch and trace (streams.changelog.write_many): the changelog partition follows the
        # key's murmur2 hash, which is the span record's own partition when it was produced keyed by the trace
        # id with Kafka's partitioner (stillflow's producers; a Collector with `hasher: murmur2`, see README)
        self.spans = table("otel_spans", use_partitioner=True)
        self._work: dict[str, SpanState | None] = {}  # the batch's states (None: delete), written at its end
        self._sent: list[Any] = []  # the batch's output delivery futures, awaited before its states are written
        self.tasks = table("otel_tasks")
        self._ticking: set[str] = set()
        self._task_ticking: set[str] = set()
        # a key's tick goes to the partition of Kafka's key hash (murmur2): where stillflow's producers put the
        # key's records, and where the span table's changelog (use_partitioner) keeps its state
        from aiokafka.partitioner import DefaultPartitioner

        self._murmur2 = DefaultPartitioner()
        # what the timer looks at, so that it never scans the table (which holds an hour's tombstones at full
        # rate): open traces -> (last activity, root in); tombstones (made at, key), oldest first
        self._open: dict[str, tuple[float, bool]] = {}
        self._tombs: collections.deque[tuple[float, str]] = collections.deque()
        self._scopes: set[str] = set()
        app.agent(self.source, name=f"{settings.streams.app_id}.otel-spans")(self._spans_agent)
        app.agent(self.tasks_topic, name=f"{settings.streams.app_id}.otel-tasks")(self._tasks_agent)
        app.timer(self.section.check_interval_s)(self._tick)
        app.on_rebalance_complete.connect(self._on_rebalance)

    async def _on_rebalance(self, sender: Any = None, **kwargs: Any) -> None:
        self._ticking.clear()
        self._task_ticking.clear()
        # the tables were recovered for the new assignment: index them once (the timer never scans them)
        self._open.clear()
        self._tombs.clear()
        for key, value in list(self.spans.items()):
            state = as_model(SpanState, value)
            if state is not None:
                self._index(key, state)

    def _index(self, key: str, state: SpanState | None) -> None:
        """Keep the timer's view: open traces by (last activity, root arrived), tombstones in expiry order."""
        if state is None:
            self._open.pop(key, None)
        elif state.completed:
            self._open.pop(key, None)
            self._tombs.append((state.updated_at.timestamp(), key))
        else:
            self._open[key] = (state.updated_at.timestamp(), state.has_root())

    # -- helpers ------------------------------------------------------------------------------

    async def _letter(self, raw: bytes | None, *, topic: str, reason: str, kind: str, key: bytes | None,
                      partition: int | None = None, offset: int | None = None) -> None:
        self._sent.append(await self.sa._dead_letter(make_dead_letter(
            raw, source_topic=topic, reason=reason, kind=kind, partition=partition, offset=offset, key=key,
            service="streams")))

    async def _publish(self, event: TraceOutcomeEvent, sent: list[Any] | None = None) -> None:
        self.sa.metrics.otel_outcomes.labels(event.metadata.get("outcome", "reported")).inc()
        fut = await self.sa._produce(self.trace_outcomes, event.trace_id.encode(), encode(event),
                                     timestamp=event.timestamp.timestamp())
        (self._sent if sent is None else sent).append(fut)

    async def _forward(self, key: str, kind: str, body: dict[str, Any]) -> None:
        value = json.dumps({"kind": kind, **body}, separators=(",", ":"), ensure_ascii=False).encode()
        self._sent.append(await self.sa._produce(self.tasks_name, key.encode(), value))

    def _state(self, key: str) -> SpanState | None:
        if key in self._work:
            return self._work[key]
        return as_model(SpanState, self.spans.get(key))

    def _put(self, key: str, state: SpanState | None) -> None:
        self._work[key] = state

    async def _flush(self) -> None:
        """The batch's end: once its outputs are on the broker, its states are written (a tombstone must not
        outlive the trace it stands for), one changelog record per trace."""
        work, sent = self._work, self._sent
        self._work, self._sent = {}, []
        if sent:
            await asyncio.gather(*sent)
        await write_many(self.spans, {k: v for k, v in work.items() if v is not None}, self.sa.app.producer)
        for key, v in work.items():
            self._index(key, v)
            if v is None and key in self.spans:
                del self.spans[key]

    def _scope_label(self, scopes: set[str]) -> list[str]:
        out = []
        for s in sorted(scopes):
            if s in self._scopes or len(self._scopes) < _MAX_SCOPES:
                self._scopes.add(s)
                out.append(s)
            else:
                out.append("other")
        return out

    # -- 1. spans -----------------------------------------------------------------------------

    async def _spans_agent(self, stream: Any) -> None:
        s = self.sa.settings.streams
        # in batches (acked once the next batch is asked for: after `_flush`): a trace's spans, outcome and
        # tick often come in one batch, and then cost one state write
        async for events in take_batches(stream, s.batch_max_events, s.batch_within_s, s.batch_idle_s):
            for event in events:
                msg = event.message
                try:
                    await self._one(msg.topic, event.key, event.value, msg.partition, msg.offset)
                except Exception:  # one record must not stop the stage: dead-letter it and go on
                    log.exception("OTel record %s[%s]@%s failed", msg.topic, msg.partition, msg.offset)
                    await self._letter(event.value, topic=msg.topic, reason="the OTel stage failed on this record "
                                       "(see the worker log)", kind="internal_error", key=event.key,
                                       partition=msg.partition, offset=msg.offset)
            await self._flush()

    async def _one(self, topic: str, key_raw: bytes | None, value: bytes | None, partition: int, offset: int) -> None:
        m = self.sa.metrics
        role = {self.spans_name: "spans", self.logs_name: "logs", self.outcomes_name: "outcomes",
                self.tick_name: "tick"}[topic]
        where = {"topic": topic, "key": key_raw, "partition": partition, "offset": offset}
        key = key_raw.decode("utf-8", "replace") if key_raw else ""
        if role == "tick":
            for k in (value or b"")[len(_TICK):].decode("utf-8", "replace").split("\n"):
                if k:
                    self._ticking.discard(k)
                    await self._on_tick(k)
            return
        if value is None:
            m.otel_records.labels(role, "dead_letter").inc()
            await self._letter(None, reason="empty record (tombstone)", kind="empty", **where)
            return
        if role == "outcomes":
            await self._on_outcome(key, value, where)
            return
        try:
            items = read_spans(value) if role == "spans" else read_logs(value)
        except OtlpDecodeError as exc:
            m.otel_records.labels(role, "dead_letter").inc()
            await self._letter(value, reason=str(exc), kind="invalid_otlp", **where)
            return
        by_trace: dict[str, list[Any]] = {}
        for it in items:
            by_trace.setdefault(it.trace_id, []).append(it)
        if not by_trace:
            m.otel_records.labels(role, "empty").inc()
            return
        m.otel_records.labels(role, "ok").inc()
        now = _now()
        for tid, group in by_trace.items():
            state = self._state(tid)
            if state is None and role == "spans" and is_late(group, now, self.section.max_lateness_s):
                m.otel_traces.labels(LATE).inc()
                await self._letter(value, reason=f"{LATE}: {len(group)} spans of trace {tid} ended more than "
                                   f"{self.section.max_lateness_s:g} s ago (otel.max_lateness_s); a trace is never "
                                   "built twice", kind=LATE, **where)
                continue
            try:
                if role == "spans":
                    res = add_spans(state, tid, group, now=now, max_spans=self.section.max_spans_per_trace)
                    m.otel_spans.labels("kept").inc(res.added)
                    m.otel_spans.labels("duplicate").inc(res.duplicates)
                else:
                    res = add_logs(state, tid, group, now=now)
            except ValueError as exc:
                await self._letter(value, reason=str(exc), kind="too_many_spans", **where)
                continue
            self._put(tid, res.state)

    async def _on_outcome(self, key: str, value: bytes, where: dict[str, Any]) -> None:
        m = self.sa.metrics
        try:
            outcome = decode(value, TraceOutcomeEvent)
        except ContractError as exc:
            m.otel_records.labels("outcomes", "dead_letter").inc()
            await self._letter(value, reason=exc.message, kind=exc.kind, **where)
            return
        m.otel_records.labels("outcomes", "ok").inc()
        if outcome_is_task_keyed(outcome):
            await self._forward(outcome.task_id, "outcome", {"outcome": outcome.model_dump(mode="json")})
            return
        tid = outcome.trace_id
        state = self._state(tid)
        if state is not None and state.forwarded_to:
            await self._forward(state.forwarded_to, "outcome", {"outcome": outcome.model_dump(mode="json")})
            return
        if state is not None and state.completed:  # built and dead-lettered, or joined already
            m.otel_outcomes.labels("unmatched").inc()
            return
        self._put(tid, add_outcome(state, tid, outcome, now=_now()))

    async def _on_tick(self, key: str) -> None:
        state = self._state(key)
        if state is None:
            return
        now, sec = _now(), self.section
        if is_ready(state, now, sec.settle_s):
            await self._build(state)
        elif is_expired(state, now, sec.max_lateness_s if state.completed else sec.trace_timeout_s):
            if not state.completed:
                self.sa.metrics.otel_traces.labels(INCOMPLETE).inc()
                reason = (f"{INCOMPLETE}: no root span of trace {key} after {sec.trace_timeout_s:g} s "
                          f"({len(state.spans)} spans, {'an' if state.outcome else 'no'} outcome in)")
                self._sent.append(await self.sa._dead_letter(
                    span_letter(state, INCOMPLETE, reason, source_topic=self.spans_name)))
            self._put(key, None)

    async def _build(self, state: SpanState) -> None:
        m = self.sa.metrics
        t0 = time.perf_counter()
        tombstone = state.model_copy(update={"spans": {}, "logs": {}, "outcome": None, "completed": True,
                                             "updated_at": _now()})
        try:
            built = build_trajectory(list(state.spans.values()), list(state.logs.values()),
                                     final_marker=self.section.final_marker)
        except TrajectoryError as exc:
            m.otel_traces.labels(exc.kind).inc()
            for label in self._scope_label(set(exc.scopes)):  # no_content: the scopes that sent none
                m.otel_no_content.labels(label).inc()
            self._sent.append(await self.sa._dead_letter(
                span_letter(state, exc.kind, exc.message, source_topic=self.spans_name)))
            self._put(state.trace_id, tombstone)
            return
        m.otel_traces.labels("built").inc()
        m.processing_seconds.labels("otel_build").observe(time.perf_counter() - t0)
        if state.outcome is not None or (built.evaluation is not None and built.join_key == state.trace_id) \
                or self.section.outcome_wait_s == 0:
            await self._publish(joined_event(built.trace, state.outcome, built.evaluation))
            self._put(state.trace_id, tombstone)
            return
        await self._forward(built.join_key, "trajectory", {"trace": built.trace.model_dump(mode="json"),
                                                           "evaluation": built.evaluation})
        self._put(state.trace_id, tombstone.model_copy(update={"forwarded_to": built.join_key}))

    # -- 2. join by task -----------------------------------------------------------------------

    async def _tasks_agent(self, stream: Any) -> None:
        async for event in stream.events():
            key = event.key.decode("utf-8", "replace") if event.key else ""
            try:
                if (event.value or b"").startswith(_TICK):
                    for k in event.value[len(_TICK):].decode("utf-8", "replace").split("\n"):
                        if k:
                            self._task_ticking.discard(k)
                            await self._task_one(k, None)
                    continue
                await self._task_one(key, event.value)
            except Exception:
                log.exception("OTel join record %s failed", key)
                await self._letter(event.value, topic=self.tasks_name, key=event.key, kind="internal_error",
                                   reason="the OTel join failed on this record (see the worker log)",
                                   partition=event.message.partition, offset=event.message.offset)

    async def _task_one(self, key: str, value: bytes | None) -> None:
        now = _now()
        state = as_model(TaskState, self.tasks.get(key))
        if value is None:  # a tick
            if state is None:
                return
            new, out = task_due(state, now, self.section.outcome_wait_s)
        else:
            body = json.loads(value or b"{}")
            if body.get("kind") == "trajectory":
                trace = AgentTrace.model_validate(body["trace"])
                new, out = task_add_trajectory(state, key, trace, body.get("evaluation"), now=now)
            else:
                outcome = TraceOutcomeEvent.model_validate(body["outcome"])
                new, out = task_add_outcome(state, key, outcome, now=now)
        for ev in out:  # per event: faust flushes the producer before it commits the offset
            await self._publish(ev, sent=[])
        if new is None:
            if key in self.tasks:
                del self.tasks[key]
        else:
            self.tasks[key] = new

    # -- timer --------------------------------------------------------------------------------

    async def _tick(self) -> None:
        now, sec = _now(), self.section
        t = now.timestamp()
        due = [key for key, (updated, rooted) in self._open.items() if key not in self._ticking and (
            (rooted and t - updated >= sec.settle_s) or t - updated >= sec.trace_timeout_s)]
        while self._tombs and t - self._tombs[0][0] >= sec.max_lateness_s:
            key = self._tombs.popleft()[1]
            if key not in self._open and key not in self._ticking:  # (else it was written again since)
                due.append(key)
        self.sa.metrics.otel_open.set(len(self._open))
        await self._send_ticks(self.tick_name, due, self._ticking)
        task_due_keys = []
        for key, value in list(self.tasks.items()):
            st = as_model(TaskState, value)
            if st is None or key in self._task_ticking:
                continue
            oldest = min([w.since for w in st.waiting] + [r.at for r in st.outcomes], default=None)
            if oldest is not None and (now - oldest).total_seconds() >= sec.outcome_wait_s:
                task_due_keys.append(key)
        await self._send_ticks(self.tasks_name, task_due_keys, self._task_ticking)

    async def _send_ticks(self, topic: str, keys: list[str], ticking: set[str]) -> None:
        """One tick record per partition, naming the keys due there (not one record per key)."""
        every = list(range(self.sa.partitions))
        by_partition: dict[int, list[str]] = {}
        for key in keys:
            by_partition.setdefault(self._murmur2(key.encode(), every, every), []).append(key)
            ticking.add(key)
        for p, group in by_partition.items():
            await self.sa.app.producer.send(topic, b"tick", _TICK + "\n".join(group).encode(), partition=p,
                                            timestamp=None, headers=None)
