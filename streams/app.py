"""The faust-streaming app: thin wiring of the pure logic in `streams/` to topics and tables.

Two agents, each over a topic keyed the way its tables are keyed (faust writes a table's changelog to
the partition of the record being processed, so a table must be keyed like its source):

1. `assemble` — trace steps + outcomes (+ the internal expiry topic), keyed by trace_id; table
   `assembly` (trace_id → state, as its encoded JSON). Records come in batches and go, raw, to the batch
   work (`streams.batch_work`, run by `streams.stage` in a child process beside the event loop by default):
   decode, assemble, expire, and score, gate, format and redact the traces the batch completes. Meanwhile
   the next batch is taken; then the batch is finished: its dead letters, ScoredTraces and one window
   record (items + SFT examples) for `<app>-windows` are published, and once the broker has them, its
   states are written and its records acked. Table `references`
   (task_id → fewest steps of a correct trace) is a cache of a soft signal: its changelog is
   partitioned by task_id while traces arrive by trace_id, so after a rebalance a worker may start a
   task from the seed's step ladder again; its values only go down.
   Both tables use faust's `use_partitioner` (changelog partition = hash of the key), which lets the
   assembler write once per batch instead of once per event. A timer finds idle traces
   and asks, through the expiry topic, for them to be expired (a table may only change while a record
   of its partition is processed).
2. `window` — `<app>-windows`, one partition (the watermark is global); table `windows` (watermark,
   window counts, pair candidates per window and task). Publishes SFT examples, and at close the
   pairs and then `DatasetWindowClosed` (once the records it counts are acknowledged).

Table values: the assembly states as the batch work encoded them (bytes, passed through by the table codec),
the window book and candidates as pydantic models (`streams.tables`), the references as ints.
Delivery is at-least-once: record ids derive from trace ids, so redelivery writes the same records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stillflow.contracts import AgentTrace, DeadLetter, OffsetRange, encode
from stillflow.dlq import encode_letter, make_dead_letter
from stillflow.workloads import WorkloadLabels
from streams.assembly import AssemblyState
from streams.batch_work import EXPIRE, OUTCOMES, SERVICE, STEPS, BatchOut, Record, trace_key
from streams.batching import take_batches
from streams.changelog import write_many
from streams.consumer_tuning import bound_fetch_wait
from streams.flow_control import keep_queued_events
from streams.judge import LLMJudge
from streams.metrics import StreamsMetrics
from streams.pairs import PairCandidate, mine_pairs
from streams.pii import default_redactor
from streams.score_stage import (
    DIMENSIONS,
    Job,
    Scored,
    WindowItem,
    decode_window_record,
    encode_window_record,
    window_candidate,
)
from streams.settings import StreamsSettings
from streams.stage import make_stage
from streams.table_codec import TABLE_CODEC
from streams.tables import as_model
from streams.windows import (
    WindowBook,
    WindowState,
    book_advance,
    book_close_all,
    book_observe,
    merge_candidate,
    to_closed_event,
    window_key,
)

__all__ = ["StreamsApp", "create_app"]

log = logging.getLogger(__name__)
_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def _codecs(table: Any) -> Any:
    """Raw str keys and the `stillflow-table` value codec for a table's changelog and store (before
    its store is created: faust makes it on first use)."""
    table.key_type = str  # raw bytes back to str when the changelog is read
    table.key_serializer = "raw"
    table.value_serializer = TABLE_CODEC
    # the table manager made the changelog topic (with the JSON serializers) when the table was added;
    # recovery reads through that topic object, so it is made again with these
    table.changelog_topic = table._new_changelog_topic()
    return table


def _ts(dt: datetime) -> float:
    return dt.timestamp()


@dataclass
class _HeldBatch:
    """A batch handed to the batch work: finished (published, written, acked) later."""

    events: Sequence[Any]
    work: asyncio.Future[BatchOut]
    scoring: asyncio.Future[list[Scored]] | None = None  # with the LLM judge: scored apart from the work


BOOK_KEY = "__book__"
_TICK = b"tick"


@dataclass
class _WindowWork:
    """The window agent's working set for one record: the book and the candidate lists it touched
    (None: delete), written back once at the end (`StreamsApp._flush_window_work`)."""

    book: WindowBook
    candidates: dict[str, list[PairCandidate] | None] = field(default_factory=dict)

    def candidates_of(self, key: str, table: Any) -> list[PairCandidate]:
        if key in self.candidates:
            return self.candidates[key] or []
        return [as_model(PairCandidate, c) for c in table.get(key) or []]


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
        self.stage = make_stage(settings)
        self._held: _HeldBatch | None = None
        self.judge = LLMJudge.from_settings(s.judge) if s.judge.enabled else None
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
        self.closed_topic = app.topic(t.dataset_windows, **_RAW)

        # use_partitioner: changelog records are partitioned by key hash, which for trace_id keys is the
        # source partition (the SDK keys by trace_id with the same murmur2 partitioner); this lets a
        # batch write its traces after the fact instead of inside each event's context. That holds only
        # for raw key bytes: with faust's default JSON key serializer the hashed bytes were `"<id>"`, which
        # put 3 of 4 traces' state on another partition than their events (lost to a rebalance), and
        # JSON-encoding every key cost a fresh JSONEncoder per changelog write. A faust Table takes its
        # serializers from its key/value types ("json" for anything but bytes), not from its schema:
        # they are set on the table itself (`_codecs`).
        def schema() -> faust.Schema:
            return faust.Schema(key_type=str, key_serializer="raw", value_serializer=TABLE_CODEC)

        self.assembly = _codecs(app.Table("assembly", default=None, partitions=partitions, schema=schema(),
                                          use_partitioner=True))
        self.references = _codecs(app.Table("references", default=None, partitions=partitions, schema=schema(),
                                            use_partitioner=True))
        self.windows = _codecs(app.Table("windows", default=None, partitions=1, schema=schema()))

        self._workload_labels = WorkloadLabels(settings.workloads.max_labels)
        m = self.metrics  # the children every scored trace updates, looked up once
        self._per_trace = (tuple(m.score.labels(d) for d in DIMENSIONS),
                           {True: m.traces_scored.labels("passed"), False: m.traces_scored.labels("rejected")},
                           m.processing_seconds.labels("score"))
        self._sources = {self.steps_name: STEPS, self.outcomes_name: OUTCOMES, self.expire_name: EXPIRE}
        # the batch work holds the states it produced; the tables are where the others come from
        self.stage.bind(self.assembly.get, lambda: {k: int(v) for k, v in self.references.items()})
        # (updated_at, completed) of the traces this worker wrote, for the expiry timer (the table holds bytes)
        self._activity: dict[str, tuple[float, bool]] = {}
        self._pending: dict[str, _PendingWindow] = {}
        self._last_item_wall = time.monotonic()
        self._expiring: set[str] = set()

        # OTel spans in (streams.otel_stage): built into traces that enter the assembler as outcomes with steps
        self.otel = None
        if s.otel.enabled:
            from streams.otel_stage import OtelStage

            self.otel = OtelStage(self)
        app.agent(self.source, name=f"{s.app_id}.assemble")(self._assemble)
        app.agent(self.windows_topic, name=f"{s.app_id}.window")(self._window)
        app.timer(s.expiry_check_interval_s)(self._expiry_tick)
        app.timer(s.window_tick_interval_s)(self._window_tick)
        bound_fetch_wait(app, s.fetch_max_wait_ms)
        keep_queued_events(app)  # faust would drop events queued at the end of a recovery (streams.flow_control)
        app.task(self._start_scoring)
        app.on_rebalance_complete.connect(self._on_rebalance_complete)
        app.on_before_shutdown.connect(self._on_shutdown)
        registry = self.metrics.registry

        async def metrics_page(view: Any, request: Any) -> Any:  # faust binds page functions to a View
            return view.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

        app.page("/metrics")(metrics_page)

    async def _start_scoring(self) -> None:
        self.stage.start()  # a scoring process starts with the worker, not on the first batch

    async def _on_rebalance_complete(self, sender: Any = None, **kwargs: Any) -> None:
        # the tables were recovered for the new assignment: they are the truth again (states, references)
        self.stage.forget()
        self._activity.clear()
        # an expiry asked for before may have gone to another worker's partition: ask again when due
        self._expiring.clear()
        # "idle" counts from here: a worker that just got its partitions has not read their backlog yet, and
        # closing the windows it recovered at the first tick would count that backlog as late
        self._last_item_wall = time.monotonic()

    async def _on_shutdown(self, sender: Any = None, **kwargs: Any) -> None:
        # A batch still held is not finished here: its events were not acked, so they are read again.
        self.stage.close()
        if self.judge is not None:
            await self.judge.aclose()
            self.judge.close()

    # -- helpers ------------------------------------------------------------------------------

    async def _produce(self, topic: str, key: bytes | None, value: bytes, timestamp: float | None = None) -> Any:
        """Hand one output record to faust's aiokafka producer and return its delivery future (its result is
        the RecordMetadata). Not through faust's topic buffer: that path (FutureMessage, buffer task, sensors)
        cost about as much per record as the agent's own work. At-least-once still holds: faust flushes this
        same producer before it commits the input offsets."""
        return await self.app.producer.send(topic, key, value, partition=None, timestamp=timestamp, headers=None)

    async def _dead_letter(self, letter: DeadLetter) -> Any:
        """Send a letter to the DLQ; returns its delivery future."""
        self.metrics.dead_letters.labels(letter.kind).inc()
        raw = encode_letter(letter)
        key = letter.key_b64.encode() if letter.key_b64 else None
        fut = await self.dlq_topic.send(key=key, value=raw, timestamp=_ts(letter.timestamp))
        log.warning("dead letter (%s) from %s[%s]@%s: %s", letter.kind, letter.source_topic, letter.partition,
                    letter.offset, letter.reason[:200])
        return fut

    # -- 1. assembly ----------------------------------------------------------------------------

    async def _assemble(self, stream: Any) -> None:
        """Records come in batches and go to the batch work raw (see the module doc), so that decoding,
        assembly and scoring run beside the event loop. A batch is held while the next one is taken, and
        finished at the next batch or as soon as the input pauses: its dead letters, scored traces and window
        record are published, and once the broker has them its states are written and its records acked."""
        s = self.settings.streams
        self._held = None
        try:
            async for events in take_batches(stream, s.batch_max_events, s.batch_within_s, s.batch_idle_s,
                                             held=True):
                if not events:  # the input paused: finish the held batch now
                    await self._finish_held(stream)
                    continue
                records = [self._record(event) for event in events]
                if self.judge is None:
                    work = self.stage.run(records)
                    await self._finish_held(stream)
                    self._held = _HeldBatch(events, work)  # take_batches yields a list of its own
                else:  # the held batch does not wait for this one's judge requests
                    await self._finish_held(stream)
                    work = self.stage.run(records, score=False)
                    traces = (await work).traces
                    reasoning = await self._judge_all(traces) if traces else []
                    scoring = self.stage.score([Job(t, None, r) for t, r in zip(traces, reasoning, strict=True)])
                    self._held = _HeldBatch(events, work, scoring)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Faust would restart this agent alone, with the held and the current batch neither finished nor
            # acked: the consumer is past their events, so they would come back only with a new process.
            log.exception("the assembler failed; stopping the worker so that its unacked events are read again")
            await self.app.crash(exc)
            raise

    def _record(self, event: Any) -> Record:
        msg = event.message
        source = self._sources[msg.topic]
        if source == EXPIRE:
            self._expiring.discard(trace_key(event.key))
        return Record(source, msg.topic, msg.partition, msg.offset, event.key, event.value)

    async def _finish_held(self, stream: Any) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        t0 = time.perf_counter()
        out = await held.work
        m = self.metrics
        for (role, result), n in out.events.items():
            m.events_in.labels(role, result).inc(n)
        m.traces_completed.inc(out.completed)
        m.traces_expired.inc(out.expired)
        m.processing_seconds.labels("assemble_batch").observe(out.seconds)
        sent = [await self._dead_letter(letter) for letter in out.letters]
        items: list[tuple[str, bytes | None]] = []
        refs: dict[str, int] = {}
        for sc in out.scored if held.scoring is None else await held.scoring:
            sent += await self._publish_scored(sc)
            if sc.scored_json is not None and sc.item_json is not None:
                items.append((sc.item_json, sc.example_json))
            if sc.reference is not None:
                refs[sc.task_id] = min(sc.reference, refs.get(sc.task_id, sc.reference))
        sent += await self._send_window_items(items)
        # The states say "done" (a completed trace's tombstone turns its redelivered events into duplicates):
        # they are written only once what was published for those traces (records, window items, dead
        # letters) is on the broker. Were both in the producer's buffer when the worker died, the
        # tombstones could survive and the rest not.
        await asyncio.gather(*sent)
        # once per task and batch; a reference only goes down
        lower = {task: ref for task, ref in refs.items() if (cur := self.references.get(task)) is None or ref < cur}
        # straight to the producer (streams.changelog); use_partitioner: the partition follows the key
        await write_many(self.references, lower, self.app.producer)
        await write_many(self.assembly, {k: v[0] for k, v in out.states.items() if v is not None}, self.app.producer)
        for key, v in out.states.items():
            if v is None:
                self._activity.pop(key, None)
                if key in self.assembly:
                    del self.assembly[key]
            else:
                self._activity[key] = (v[1], v[2])
        self.stage.written(out.states)
        for event in held.events:  # faust flushes the producer before it commits these offsets
            await stream.ack(event)
        m.processing_seconds.labels("finish_batch").observe(time.perf_counter() - t0)

    async def _send_window_items(self, items: list[tuple[str, bytes | None]]) -> list[asyncio.Future[Any]]:
        """One record per batch (`encode_window_record`), split so that a record stays well under the
        producer's request size; returns the delivery futures."""
        limit = max(64 * 1024, self.settings.streams.producer_max_batch_bytes // 2)
        chunk: list[tuple[str, bytes | None]] = []
        futures = []
        size = 0
        for item in items:
            n = len(item[0]) + len(item[1] or b"") + 2
            if chunk and size + n > limit:
                futures.append(await self._produce(self.windows_name, b"w", encode_window_record(chunk)))
                chunk, size = [], 0
            chunk.append(item)
            size += n
        if chunk:  # one partition: the records keep their order
            futures.append(await self._produce(self.windows_name, b"w", encode_window_record(chunk)))
        return futures

    async def _expiry_tick(self) -> None:
        """Find idle traces on this worker's partitions and ask for their expiry (see module doc)."""
        now = time.time()
        timeout = self.settings.streams.assembly_timeout_s
        open_traces = 0
        activity: dict[str, tuple[float, bool]] = {}
        idle = []
        for key, value in list(self.assembly.items()):  # no await in this loop: finishing a batch updates both
            act = self._activity.get(key)
            if act is None:  # a state this worker did not write (recovered from the changelog): read it once
                state = as_model(AssemblyState, value)
                if state is None:
                    continue
                act = (state.updated_at.timestamp(), state.completed)
            activity[key] = act
            open_traces += not act[1]
            if key not in self._expiring and now - act[0] >= timeout:
                idle.append(key)
        self._activity = activity  # without the traces deleted or moved away since
        self.metrics.assembly_open.set(open_traces)
        for key in idle:
            self._expiring.add(key)
            await self.expire_topic.send(key=key.encode(), value=b"expire")

    # -- 2. scoring -----------------------------------------------------------------------------

    async def _judge_all(self, traces: list[AgentTrace]) -> list[float]:
        """The LLM judge's reasoning scores, `judge.max_concurrency` requests at a time. The judge is sent the
        trace redacted (it is outside the stream: PII does not leave it), and any failure of a request falls
        back to the heuristic for that trace."""
        assert self.judge is not None
        judge = self.judge
        limit = asyncio.Semaphore(self.settings.streams.judge.max_concurrency)
        redact = self.settings.streams.redact_pii
        unexpected = 0

        async def one(trace: AgentTrace) -> float:
            nonlocal unexpected
            shown = default_redactor.redact_trace(trace)[0] if redact else trace
            async with limit:
                try:
                    return await judge.ascore(shown)
                except Exception as exc:  # e.g. an invalid URL; the judge itself falls back on HTTP errors
                    unexpected += 1
                    log.warning("LLM judge failed on %s (%r): the heuristic scores its reasoning", trace.trace_id,
                                exc)
                    return judge.fallback.score(trace)

        t0 = time.perf_counter()
        calls, errors = judge.n_calls, judge.n_errors
        scores = await asyncio.gather(*(one(t) for t in traces))
        failed = judge.n_errors - errors + unexpected
        self.metrics.judge_calls.labels("ok").inc(max(0, judge.n_calls - calls - failed))
        self.metrics.judge_calls.labels("fallback").inc(failed)
        self.metrics.processing_seconds.labels("judge").observe(time.perf_counter() - t0)
        return list(scores)

    async def _publish_scored(self, sc: Scored) -> list[Any]:
        """Metrics, dead letters and the ScoredTrace of one scored trace; returns the delivery futures."""
        m = self.metrics
        dims, verdicts, seconds = self._per_trace
        for hist, value in zip(dims, sc.dims, strict=True):
            hist.observe(value)
        verdicts[sc.passed].inc()
        m.workload_traces.labels(self._workload_labels.label(sc.workload),
                                 "passed" if sc.passed else "rejected").inc()
        for gate in sc.rejected_by:
            m.gate_rejections.labels(gate).inc()
        for kind, n in sc.redactions.items():
            m.pii_redactions.labels(kind).inc(n)
        seconds.observe(sc.seconds)
        letters = [await self._dead_letter(make_dead_letter(
            None, source_topic=self.outcomes_name, key=sc.trace_id.encode(), kind=kind, reason=reason,
            service=SERVICE,
        )) for kind, reason in sc.errors]
        if sc.scored_json is None:  # not publishable: the letter says why, and there is no window item
            return letters
        fut = await self._produce(self.settings.topics.traces_scored, sc.task_id.encode(), sc.scored_json,
                                  sc.timestamp)
        m.trace_latency.observe(max(0.0, time.time() - sc.timestamp))
        return [*letters, fut]

    # -- 2. windows -----------------------------------------------------------------------------

    def _book(self) -> WindowBook:
        return as_model(WindowBook, self.windows.get(BOOK_KEY)) or WindowBook()

    async def _window(self, stream: Any) -> None:
        async for event in stream.events():
            t0 = time.perf_counter()
            msg = event.message
            if event.value == _TICK:
                await self._idle_close()
                continue
            try:
                batch = decode_window_record(event.value)
            except ValueError as exc:
                await self._dead_letter(make_dead_letter(
                    event.value, source_topic=msg.topic, partition=msg.partition, offset=msg.offset,
                    key=event.key, kind="schema", reason=f"window items: {exc}", service=SERVICE,
                ))
                continue
            self._last_item_wall = time.monotonic()
            work = _WindowWork(self._book())
            for item, example in batch:
                await self._window_item(work, item, example)
            await self._flush_window_work(work)
            self.metrics.processing_seconds.labels("window").observe(time.perf_counter() - t0)

    async def _window_item(self, work: _WindowWork, item: WindowItem, example: bytes | None) -> None:
        """Count one scored trace: book, pair candidate, SFT example; close what the watermark passed."""
        s = self.settings.streams
        m = self.metrics
        cand = item.candidate
        entry = book_observe(work.book, item.event_time, task_id=cand.task_id, size_s=s.window_size_s,
                             passed=item.passed, sft=example is not None, max_tasks=s.max_tasks_per_window,
                             workload=cand.workload)
        if entry.late:
            m.late_traces.inc()
        if entry.keep_candidate:
            cand = window_candidate(item, example)
            ckey = f"c:{entry.window_key}:{cand.task_id}"
            work.candidates[ckey], _ = merge_candidate(work.candidates_of(ckey, self.windows), cand,
                                                       s.max_candidates_per_task)
        if example is not None:
            key = (item.example_id or "").encode()
            fut = await self._produce(self.settings.topics.dataset_sft, key, example, _ts(item.event_time))
            self._pending.setdefault(entry.window_key, _PendingWindow()).futures.append(fut)
            m.dataset_records.labels("sft").inc()
        work.book, closing = book_advance(entry.book, item.event_time, grace_s=s.window_grace_s,
                                          now=datetime.now(UTC), max_ahead_s=s.max_clock_skew_s)
        for w, tasks in closing:
            await self._close(work, w, tasks)

    async def _flush_window_work(self, work: _WindowWork) -> None:
        """Write what one record changed: the book once, each touched candidate key once (straight to the
        producer, `streams.changelog`: the windows table has one partition)."""
        sets: dict[str, Any] = {BOOK_KEY: work.book}
        for key, cands in work.candidates.items():
            if cands is None:
                if key in self.windows:
                    del self.windows[key]
            else:
                sets[key] = cands
        await write_many(self.windows, sets, self.app.producer)
        if work.book.mark.watermark is not None:
            self.metrics.watermark.set(work.book.mark.watermark.timestamp())

    async def _close(self, work: _WindowWork, w: WindowState, tasks: list[str]) -> None:
        s = self.settings.streams
        wkey = window_key(w.start)
        cand_keys = [f"c:{wkey}:{task}" for task in tasks]
        candidates = [c for k in cand_keys for c in work.candidates_of(k, self.windows)]
        pairs = mine_pairs(candidates, min_gap=s.pair_min_gap, require_chosen_passed=s.pair_require_chosen_passed,
                           window_start=w.start)
        pending = self._pending.pop(wkey, _PendingWindow())
        for pair in pairs:
            fut = await self._produce(self.settings.topics.dataset_dpo, pair.pair_id.encode(), encode(pair),
                                      _ts(pair.timestamp))
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
            work.candidates[k] = None  # deleted at the flush
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
        work = _WindowWork(self._book())
        if not work.book.windows:
            return
        work.book, closing = book_close_all(work.book, grace_s=s.window_grace_s)
        for w, tasks in closing:
            await self._close(work, w, tasks)
        await self._flush_window_work(work)

    async def _window_tick(self) -> None:
        # Every worker ticks; only the one that owns the windows partition acts on it (in the agent).
        if time.monotonic() - self._last_item_wall >= self.settings.streams.window_idle_close_s:
            await self.windows_topic.send(key=b"w", value=_TICK)


def create_app(settings: StreamsSettings, *, partitions: int, metrics: StreamsMetrics | None = None) -> StreamsApp:
    return StreamsApp(settings, partitions=partitions, metrics=metrics)
