"""The faust-streaming app: thin wiring of the pure logic in `streams/` to topics and tables.

Two agents, each over a topic keyed the way its tables are keyed (faust writes a table's changelog to
the partition of the record being processed, so a table must be keyed like its source):

1. `assemble` — trace steps + outcomes (+ the internal expiry topic), keyed by trace_id; table
   `assembly` (trace_id → state). When a trace is whole it is scored, gated, formatted and redacted
   right there (`TracePipeline`), the ScoredTrace is published, and a small window item goes to
   `<app>-windows`. Table `references` (task_id → fewest steps of a correct trace) is a cache of a
   soft signal: its changelog is partitioned by task_id while traces arrive by trace_id, so after a
   rebalance a worker may start a task from the seed's step ladder again; its values only go down.
   Both tables use faust's `use_partitioner` (changelog partition = hash of the key), which lets the
   assembler write once per batch instead of once per event. A timer finds idle traces
   and asks, through the expiry topic, for them to be expired (a table may only change while a record
   of its partition is processed).
2. `window` — `<app>-windows`, one partition (the watermark is global); table `windows` (watermark,
   window counts, pair candidates per window and task). Publishes SFT examples, and at close the
   pairs and then `DatasetWindowClosed` (once the records it counts are acknowledged).

Table values are the pydantic models themselves (`streams.tables`): no re-parsing per event.
Delivery is at-least-once: record ids derive from trace ids, so redelivery writes the same records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from stillflow.contracts import (
    AgentTrace,
    ContractError,
    DeadLetter,
    OffsetRange,
    SFTExample,
    TraceOutcomeEvent,
    TraceStepEvent,
    encode,
)
from stillflow.dlq import decode_or_letter, encode_letter, make_dead_letter
from stillflow.quality.scoring import next_reference
from streams.assembly import (
    AssemblyError,
    AssemblyState,
    add_outcome,
    add_step,
    incomplete_dead_letter,
    is_expired,
)
from streams.metrics import StreamsMetrics
from streams.pairs import PairCandidate, mine_pairs
from streams.pipeline import TracePipeline
from streams.settings import StreamsSettings
from streams.tables import as_model
from streams.windows import (
    WindowBook,
    WindowState,
    book_advance,
    book_observe,
    merge_candidate,
    to_closed_event,
    window_key,
    window_start_for,
)

__all__ = ["StreamsApp", "create_app"]

log = logging.getLogger(__name__)
SERVICE = "streams"
_DIMENSIONS = ("correctness", "efficiency", "tool_selection", "safety", "reasoning_quality", "overall")
_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def _ts(dt: datetime) -> float:
    return dt.timestamp()


class _WindowItem(BaseModel):
    """What the assembling agent tells the window agent about one scored trace. Private to this app
    (its internal topic), not a contract between services."""

    event_time: datetime
    passed: bool
    example: SFTExample | None = None
    candidate: PairCandidate  # without messages when `example` carries the same ones


BOOK_KEY = "__book__"
_TICK = b"tick"


@dataclass
class _PendingWindow:
    """Send futures of the records a window counts, awaited at close (in memory, per incarnation)."""

    futures: list[asyncio.Future[Any]] = field(default_factory=list)


class StreamsApp:
    """The faust app with its topics, tables and agents. `app` is the faust.App to run."""

    def __init__(self, settings: StreamsSettings, *, partitions: int, metrics: StreamsMetrics | None = None) -> None:
        self.settings = settings
        s = settings.streams
        self.metrics = metrics or StreamsMetrics()
        self.pipeline = TracePipeline.from_settings(settings)
        self.partitions = partitions
        names = settings.internal_topics()
        kafka = settings.kafka
        if not kafka.bootstrap_servers:
            raise ValueError("the streams app needs kafka.bootstrap_servers")
        datadir = Path(s.data_dir).expanduser() / s.app_id
        datadir.mkdir(parents=True, exist_ok=True)
        brokers = ";".join(f"kafka://{b.strip()}" for b in kafka.bootstrap_servers.split(","))
        self.app = faust.App(
            s.app_id,
            broker=brokers,
            store=s.store,
            datadir=str(datadir),
            topic_partitions=partitions,
            topic_replication_factor=kafka.replication_factor,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=max(0.5, s.session_timeout_s / 6),
            broker_request_timeout=max(kafka.request_timeout_ms / 1000, s.session_timeout_s * 2 + 5),
            consumer_auto_offset_reset="earliest",
            table_standby_replicas=s.standby_replicas,
            web_port=s.web_port,
            web_host=s.web_host,
            web_bind="127.0.0.1" if s.web_host in ("localhost", "127.0.0.1") else "0.0.0.0",
            producer_acks=-1,
            producer_linger=s.producer_linger_s,
            producer_max_batch_size=s.producer_max_batch_bytes,
            processing_guarantee="at_least_once",
            logging_config=None,
        )
        app = self.app
        t = settings.topics
        self.steps_name, self.outcomes_name = t.trace_steps, t.trace_outcomes
        self.expire_name, self.windows_name = names["expire"], names["windows"]
        self.source = app.topic(t.trace_steps, t.trace_outcomes, self.expire_name, **_RAW)
        self.expire_topic = app.topic(self.expire_name, partitions=partitions, internal=True, **_RAW)
        self.windows_topic = app.topic(self.windows_name, partitions=1, internal=True, **_RAW)
        self.dlq_topic = app.topic(t.dlq, **_RAW)
        self.scored_topic = app.topic(t.traces_scored, **_RAW)
        self.sft_topic = app.topic(t.dataset_sft, **_RAW)
        self.dpo_topic = app.topic(t.dataset_dpo, **_RAW)
        self.closed_topic = app.topic(t.dataset_windows, **_RAW)

        # use_partitioner: changelog records are partitioned by key hash, which for trace_id keys is the
        # source partition (the SDK keys by trace_id with the same murmur2 partitioner); this lets a
        # batch write its traces after the fact instead of inside each event's context.
        self.assembly = app.Table("assembly", default=None, partitions=partitions, key_type=str,
                                  use_partitioner=True)
        self.references = app.Table("references", default=None, partitions=partitions, key_type=str,
                                    use_partitioner=True)
        self.windows = app.Table("windows", default=None, partitions=1, key_type=str)

        self._pending: dict[str, _PendingWindow] = {}
        self._last_item_wall = time.monotonic()
        self._expiring: set[str] = set()

        app.agent(self.source, name=f"{s.app_id}.assemble")(self._assemble)
        app.agent(self.windows_topic, name=f"{s.app_id}.window")(self._window)
        app.timer(s.expiry_check_interval_s)(self._expiry_tick)
        app.timer(s.window_tick_interval_s)(self._window_tick)
        registry = self.metrics.registry

        async def metrics_page(view: Any, request: Any) -> Any:  # faust binds page functions to a View
            return view.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

        app.page("/metrics")(metrics_page)

    # -- helpers ------------------------------------------------------------------------------

    async def _dead_letter(self, letter: DeadLetter) -> None:
        self.metrics.dead_letters.labels(letter.kind).inc()
        raw = encode_letter(letter)
        key = letter.key_b64.encode() if letter.key_b64 else None
        await self.dlq_topic.send(key=key, value=raw, timestamp=_ts(letter.timestamp))
        log.warning("dead letter (%s) from %s[%s]@%s: %s", letter.kind, letter.source_topic, letter.partition,
                    letter.offset, letter.reason[:200])

    # -- 1. assembly ----------------------------------------------------------------------------

    async def _assemble(self, stream: Any) -> None:
        """Events come in small batches (acked after the batch): every trace touched by a batch is
        written to the table once, not once per event — the changelog write is the dominant cost."""
        s = self.settings.streams
        async for events in stream.take_events(s.batch_max_events, within=s.batch_within_s):
            t0 = time.perf_counter()
            touched: dict[str, AssemblyState] = {}
            for event in events:
                await self._assemble_one(event, touched)
            for key, state in touched.items():
                self.assembly[key] = state  # use_partitioner: the changelog partition follows the key
            self.metrics.processing_seconds.labels("assemble_batch").observe(time.perf_counter() - t0)

    async def _assemble_one(self, event: Any, touched: dict[str, AssemblyState]) -> None:
        s = self.settings.streams
        m = self.metrics
        msg = event.message
        topic = msg.topic
        if topic == self.expire_name:
            key = event.key.decode() if event.key else ""
            if key in touched:  # flush what this batch did to it first
                self.assembly[key] = touched.pop(key)
            await self._expire(key)
            return
        model = TraceStepEvent if topic == self.steps_name else TraceOutcomeEvent
        role = "steps" if model is TraceStepEvent else "outcomes"
        ev, letter = decode_or_letter(
            event.value, model, source_topic=topic, partition=msg.partition, offset=msg.offset,
            key=event.key, service=SERVICE,
        )
        if letter is None and ev is not None and event.key != ev.trace_id.encode():
            # The assembly table is partitioned by trace_id: a step keyed otherwise could land on
            # another partition than its trace and never meet it.
            letter = make_dead_letter(
                event.value, source_topic=topic, partition=msg.partition, offset=msg.offset, key=event.key,
                kind="key_mismatch", service=SERVICE,
                reason=f"record key {event.key!r} is not the trace_id {ev.trace_id!r}",
            )
        if letter is not None:
            m.events_in.labels(role, "dead_letter").inc()
            await self._dead_letter(letter)
            return
        assert ev is not None
        key = ev.trace_id
        state = touched.get(key) or as_model(AssemblyState, self.assembly.get(key))
        try:
            if isinstance(ev, TraceStepEvent):
                res = add_step(state, ev, max_steps=s.max_steps_per_trace)
            else:
                res = add_outcome(state, ev, max_steps=s.max_steps_per_trace)
        except AssemblyError as exc:
            m.events_in.labels(role, "dead_letter").inc()
            await self._dead_letter(make_dead_letter(
                event.value, source_topic=topic, partition=msg.partition, offset=msg.offset, key=event.key,
                kind=exc.kind, reason=exc.message, service=SERVICE,
            ))
            return
        if res.duplicate:
            m.events_in.labels(role, "conflict" if res.conflict else "duplicate").inc()
            return
        m.events_in.labels(role, "ok").inc()
        touched[key] = res.state
        if res.trace is not None:
            m.traces_completed.inc()
            t1 = time.perf_counter()
            await self._score(res.trace)
            m.processing_seconds.labels("score").observe(time.perf_counter() - t1)

    async def _expire(self, trace_id: str) -> None:
        self._expiring.discard(trace_id)
        state = as_model(AssemblyState, self.assembly.get(trace_id))
        if state is None:
            return
        now = datetime.now(UTC)
        if not is_expired(state, now, self.settings.streams.assembly_timeout_s):
            return  # it moved on since the timer looked
        if not state.completed:
            self.metrics.traces_expired.inc()
            await self._dead_letter(incomplete_dead_letter(state, source_topic=self.steps_name, service=SERVICE))
        del self.assembly[trace_id]

    async def _expiry_tick(self) -> None:
        """Find idle traces on this worker's partitions and ask for their expiry (see module doc)."""
        now = datetime.now(UTC)
        timeout = self.settings.streams.assembly_timeout_s
        open_traces = 0
        for key, value in list(self.assembly.items()):
            state = as_model(AssemblyState, value)
            if state is None:
                continue
            open_traces += not state.completed
            if key not in self._expiring and is_expired(state, now, timeout):
                self._expiring.add(key)
                await self.expire_topic.send(key=key.encode(), value=b"expire")
        self.metrics.assembly_open.set(open_traces)

    # -- 2. scoring -----------------------------------------------------------------------------

    async def _score(self, trace: AgentTrace) -> None:
        """Score, gate, format and redact a whole trace; publish the verdict and the window item."""
        s = self.settings.streams
        m = self.metrics
        ref = self.references.get(trace.task_id)
        wstart = window_start_for(trace.timestamp, s.window_size_s)
        p = self.pipeline.process(trace, reference_steps=ref, window_start=wstart)
        new_ref = next_reference(ref, trace, correct=p.assessment.correct)
        if new_ref != ref:
            self.references[trace.task_id] = new_ref
        score = p.scored.score
        for dim in _DIMENSIONS:
            m.score.labels(dim).observe(getattr(score, dim))
        m.traces_scored.labels("passed" if p.verdict.passed else "rejected").inc()
        for gate in p.verdict.rejected_by:
            m.gate_rejections.labels(gate).inc()
        for kind, n in p.redactions.items():
            m.pii_redactions.labels(kind).inc(n)
        try:
            scored = encode(p.scored)
        except ContractError as exc:  # a trace near the size limit plus its score can pass it
            await self._dead_letter(make_dead_letter(
                None, source_topic=self.outcomes_name, key=trace.trace_id.encode(), kind=exc.kind,
                reason=f"scored trace {trace.trace_id}: {exc.message}", service=SERVICE,
            ))
            return
        # send_soon: into faust's producer buffer without waiting for batch space; faust flushes the
        # buffer before it commits offsets, so at-least-once holds (awaiting each send made the
        # assembler wait on the producer once per trace).
        self.scored_topic.send_soon(key=trace.task_id.encode(), value=scored, timestamp=_ts(trace.timestamp))
        cand = p.candidate if p.example is None else p.candidate.model_copy(update={"messages": None})
        item = _WindowItem(event_time=trace.timestamp, passed=p.verdict.passed, example=p.example, candidate=cand)
        self.windows_topic.send_soon(key=b"w", value=item.model_dump_json().encode(), timestamp=_ts(trace.timestamp))
        m.trace_latency.observe(max(0.0, time.time() - trace.timestamp.timestamp()))

    # -- 2. windows -----------------------------------------------------------------------------

    def _book(self) -> WindowBook:
        return as_model(WindowBook, self.windows.get(BOOK_KEY)) or WindowBook()

    def _store_book(self, book: WindowBook) -> None:
        self.windows[BOOK_KEY] = book
        if book.mark.watermark is not None:
            self.metrics.watermark.set(book.mark.watermark.timestamp())

    async def _window(self, stream: Any) -> None:
        s = self.settings.streams
        m = self.metrics
        async for event in stream.events():
            t0 = time.perf_counter()
            msg = event.message
            if event.value == _TICK:
                await self._idle_close()
                continue
            try:
                item = _WindowItem.model_validate_json(event.value)
            except ValueError as exc:
                await self._dead_letter(make_dead_letter(
                    event.value, source_topic=msg.topic, partition=msg.partition, offset=msg.offset,
                    key=event.key, kind="schema", reason=f"window item: {exc}", service=SERVICE,
                ))
                continue
            self._last_item_wall = time.monotonic()
            cand, example = item.candidate, item.example
            if example is not None and cand.messages is None:
                cand = cand.model_copy(update={"messages": example.messages})  # sent once, see _score
            entry = book_observe(self._book(), item.event_time, task_id=cand.task_id, size_s=s.window_size_s,
                                 passed=item.passed, sft=example is not None, max_tasks=s.max_tasks_per_window)
            if entry.late:
                m.late_traces.inc()
            if entry.keep_candidate:
                ckey = f"c:{entry.window_key}:{cand.task_id}"
                kept = [as_model(PairCandidate, c) for c in self.windows.get(ckey) or []]
                self.windows[ckey], _ = merge_candidate(kept, cand, s.max_candidates_per_task)
            if example is not None:
                fut = await self.sft_topic.send(key=example.example_id.encode(), value=encode(example),
                                                timestamp=_ts(example.timestamp))
                self._pending.setdefault(entry.window_key, _PendingWindow()).futures.append(fut)
                m.dataset_records.labels("sft").inc()
            book, closing = book_advance(entry.book, item.event_time, grace_s=s.window_grace_s,
                                         now=datetime.now(UTC), max_ahead_s=s.max_clock_skew_s)
            self._store_book(book)
            for w, tasks in closing:
                await self._close(w, tasks)
            m.processing_seconds.labels("window").observe(time.perf_counter() - t0)

    async def _close(self, w: WindowState, tasks: list[str]) -> None:
        s = self.settings.streams
        wkey = window_key(w.start)
        cand_keys = [f"c:{wkey}:{task}" for task in tasks]
        candidates = [as_model(PairCandidate, c) for k in cand_keys for c in (self.windows.get(k) or [])]
        pairs = mine_pairs(candidates, min_gap=s.pair_min_gap, require_chosen_passed=s.pair_require_chosen_passed,
                           window_start=w.start)
        pending = self._pending.pop(wkey, _PendingWindow())
        for pair in pairs:
            fut = await self.dpo_topic.send(key=pair.pair_id.encode(), value=encode(pair),
                                            timestamp=_ts(pair.timestamp))
            pending.futures.append(fut)
            self.metrics.dataset_records.labels("dpo").inc()
        # The closed event promises that what it counts is written: wait for those acks first.
        offsets: dict[tuple[str, int], OffsetRange] = {}
        for fut in pending.futures:
            md = await fut
            k = (md.topic, md.partition)
            cur = offsets.get(k)
            offsets[k] = OffsetRange(topic=md.topic, partition=md.partition,
                                     first=md.offset if cur is None else min(cur.first, md.offset),
                                     last=md.offset if cur is None else max(cur.last, md.offset))
        closed = w.model_copy(update={"n_pairs": len(pairs), "closed": True,
                                      "offsets": {f"{o.topic}:{o.partition}": o for o in offsets.values()}})
        event = to_closed_event(closed)
        await self.closed_topic.send(key=event.window_id.encode(), value=encode(event),
                                     timestamp=_ts(event.timestamp))
        for k in cand_keys:
            if k in self.windows:
                del self.windows[k]
        self.metrics.window_closes.inc()
        self.metrics.window_size.observe(closed.n_sft)
        log.info("window %s closed: %d traces, %d passed, %d SFT, %d pairs", event.window_id, closed.n_traces,
                 closed.n_passed, closed.n_sft, closed.n_pairs)

    async def _idle_close(self) -> None:
        """No traces for `window_idle_close_s` (wall clock): close every open window, so that the tail
        of a burst of traffic is not held back until the next event arrives."""
        s = self.settings.streams
        if time.monotonic() - self._last_item_wall < s.window_idle_close_s:
            return
        book = self._book()
        if not book.windows:
            return
        newest_end = max(w.end for w in book.windows.values())
        book, closing = book_advance(book, newest_end + timedelta(seconds=s.window_grace_s), grace_s=s.window_grace_s)
        self._store_book(book)
        for w, tasks in closing:
            await self._close(w, tasks)

    async def _window_tick(self) -> None:
        # Every worker ticks; only the one that owns the windows partition acts on it (in the agent).
        if time.monotonic() - self._last_item_wall >= self.settings.streams.window_idle_close_s:
            await self.windows_topic.send(key=b"w", value=_TICK)


def create_app(settings: StreamsSettings, *, partitions: int, metrics: StreamsMetrics | None = None) -> StreamsApp:
    return StreamsApp(settings, partitions=partitions, metrics=metrics)
