"""The faust-streaming app: thin wiring of the pure logic in `streams/` to topics and tables.

Two agents, each over a topic keyed the way its tables are keyed (faust writes a table's changelog to
the partition of the record being processed, so a table must be keyed like its source):

1. `assemble` — trace steps + outcomes (+ the internal expiry topic), keyed by trace_id; table
   `assembly` (trace_id → state). When a trace is whole it is scored, gated, formatted and redacted
   right there (`TracePipeline`), the ScoredTrace is published, and a small window item goes to
   `<app>-windows`. Table `references` (task_id → fewest steps of a correct trace) is written from
   whichever partition saw the trace: its values only ever go down (min), so changelog records of
   one task from several partitions merge to the same answer in any order. A timer finds idle traces
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
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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
    describe_incomplete,
    dump_state,
    is_expired,
)
from streams.metrics import StreamsMetrics
from streams.pairs import PairCandidate, mine_pairs, select_pairs
from streams.pipeline import TracePipeline
from streams.settings import StreamsSettings
from streams.tables import as_model
from streams.windows import (
    WATERMARK_KEY,
    Watermark,
    WindowState,
    advance_watermark,
    count_late,
    observe,
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
        brokers = ";".join(f"kafka://{b.strip()}" for b in kafka.bootstrap_servers.split(","))
        self.app = faust.App(
            s.app_id,
            broker=brokers,
            store=s.store,
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

        self.assembly = app.Table("assembly", default=None, partitions=partitions, key_type=str)
        self.references = app.Table("references", default=None, partitions=partitions, key_type=str)
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
        s = self.settings.streams
        m = self.metrics
        async for event in stream.events():
            t0 = time.perf_counter()
            msg = event.message
            topic = msg.topic
            if topic == self.expire_name:
                await self._expire(event.key.decode() if event.key else "")
                continue
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
                continue
            assert ev is not None
            key = ev.trace_id
            state = as_model(AssemblyState, self.assembly.get(key))
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
                continue
            if res.duplicate:
                m.events_in.labels(role, "conflict" if res.conflict else "duplicate").inc()
                continue
            m.events_in.labels(role, "ok").inc()
            self.assembly[key] = res.state
            m.processing_seconds.labels("assemble").observe(time.perf_counter() - t0)
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
            await self._dead_letter(make_dead_letter(
                json.dumps(dump_state(state)).encode(), source_topic=self.steps_name, kind="incomplete",
                reason=describe_incomplete(state), key=trace_id.encode(), service=SERVICE,
            ))
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
        await self.scored_topic.send(key=trace.task_id.encode(), value=scored, timestamp=_ts(trace.timestamp))
        item = {
            "event_time": trace.timestamp.isoformat(),
            "passed": p.verdict.passed,
            "example": None if p.example is None else p.example.model_dump(mode="json"),
            "candidate": p.candidate.model_dump(mode="json"),
        }
        await self.windows_topic.send(key=b"w", value=json.dumps(item).encode(), timestamp=_ts(trace.timestamp))
        m.trace_latency.observe(max(0.0, time.time() - trace.timestamp.timestamp()))

    # -- 2. windows -----------------------------------------------------------------------------

    def _mark(self) -> Watermark:
        return as_model(Watermark, self.windows.get(WATERMARK_KEY)) or Watermark()

    def _open_windows(self) -> list[WindowState]:
        out = []
        for key, value in list(self.windows.items()):
            if key.startswith("w:"):
                st = as_model(WindowState, value)
                if st is not None and not st.closed:
                    out.append(st)
        return out

    async def _window(self, stream: Any) -> None:
        s = self.settings.streams
        m = self.metrics
        async for event in stream.events():
            msg = event.message
            try:
                item = json.loads(event.value)
                if item.get("tick"):
                    await self._idle_close()
                    continue
                self._last_item_wall = time.monotonic()
                event_time = datetime.fromisoformat(item["event_time"])
                example = SFTExample.model_validate(item["example"]) if item.get("example") else None
                cand = PairCandidate.model_validate(item["candidate"])
            except (ValueError, KeyError, TypeError) as exc:
                await self._dead_letter(make_dead_letter(
                    event.value, source_topic=msg.topic, partition=msg.partition, offset=msg.offset,
                    key=event.key, kind="schema", reason=f"window item: {exc}", service=SERVICE,
                ))
                continue
            mark = self._mark()
            start = window_start_for(event_time, s.window_size_s)
            wkey = window_key(start)
            state = self._load_window(wkey)
            res = observe(state, event_time, mark=mark, size_s=s.window_size_s, passed=item["passed"],
                          sft=example is not None)
            if res.late:
                # Its window has closed: count it in the window holding the watermark (the next to
                # close, never a closed one) rather than lose it.
                m.late_traces.inc()
                mark = count_late(mark)
                assert mark.watermark is not None
                event_time = mark.watermark
                wkey = window_key(window_start_for(event_time, s.window_size_s))
                res = observe(self._load_window(wkey), event_time, mark=mark, size_s=s.window_size_s,
                              passed=item["passed"], sft=example is not None)
            assert res.state is not None
            self.windows[f"w:{wkey}"] = res.state
            self._add_candidate(wkey, cand)
            if example is not None:
                fut = await self.sft_topic.send(key=example.example_id.encode(), value=encode(example),
                                                timestamp=_ts(example.timestamp))
                self._pending.setdefault(wkey, _PendingWindow()).futures.append(fut)
                m.dataset_records.labels("sft").inc()
            new_mark, closing = advance_watermark(mark, event_time, grace_s=s.window_grace_s,
                                                  windows=self._open_windows(),
                                                  now=datetime.now(UTC), max_ahead_s=s.max_clock_skew_s)
            self._store_mark(new_mark)
            for w in closing:
                await self._close(w)

    def _store_mark(self, mark: Watermark) -> None:
        self.windows[WATERMARK_KEY] = mark
        if mark.watermark is not None:
            self.metrics.watermark.set(mark.watermark.timestamp())

    def _load_window(self, wkey: str) -> WindowState | None:
        return as_model(WindowState, self.windows.get(f"w:{wkey}"))

    def _add_candidate(self, wkey: str, cand: PairCandidate) -> None:
        s = self.settings.streams
        ckey = f"c:{wkey}:{cand.task_id}"
        raw = self.windows.get(ckey)
        cands = [] if raw is None else [as_model(PairCandidate, c) for c in raw]
        if raw is None and self._task_count(wkey) >= s.max_tasks_per_window:
            return  # bounded: a window keeps candidates for at most max_tasks_per_window tasks
        cands = [c for c in cands if c.trace_id != cand.trace_id] + [cand]
        if len(cands) > s.max_candidates_per_task:
            # keep the extremes (they make the pairs); drop one from the middle of the ranking
            cands.sort(key=lambda c: (-c.overall, c.trace_id))
            del cands[len(cands) // 2]
        self.windows[ckey] = cands

    def _task_count(self, wkey: str) -> int:
        prefix = f"c:{wkey}:"
        return sum(1 for k in self.windows if k.startswith(prefix))

    async def _close(self, w: WindowState) -> None:
        s = self.settings.streams
        wkey = window_key(w.start)
        prefix = f"c:{wkey}:"
        cand_keys = [k for k in list(self.windows) if k.startswith(prefix)]
        candidates = [as_model(PairCandidate, c) for k in cand_keys for c in (self.windows.get(k) or [])]
        pairs = mine_pairs(candidates, min_gap=s.pair_min_gap, require_chosen_passed=s.pair_require_chosen_passed,
                           window_start=w.start)
        if len(pairs) < len(select_pairs(candidates, min_gap=s.pair_min_gap,
                                         require_chosen_passed=s.pair_require_chosen_passed)):
            log.info("window %s: some pairs had no messages and were skipped", wkey)
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
        self.windows[f"w:{wkey}"] = closed
        for k in cand_keys:
            del self.windows[k]
        self.metrics.window_closes.inc()
        self.metrics.window_size.observe(closed.n_sft)
        log.info("window %s closed: %d traces, %d passed, %d SFT, %d pairs", event.window_id, closed.n_traces,
                 closed.n_passed, closed.n_sft, closed.n_pairs)
        self._forget_old_windows(w.start)

    def _forget_old_windows(self, newest_closed: datetime) -> None:
        """Closed windows are kept a while so that a redelivered item can tell it is late; then dropped."""
        horizon = newest_closed - timedelta(seconds=self.settings.streams.window_size_s * 10)
        for key in [k for k in list(self.windows) if k.startswith("w:")]:
            st = as_model(WindowState, self.windows.get(key))
            if st is not None and st.closed and st.start < horizon:
                del self.windows[key]

    async def _idle_close(self) -> None:
        """No traces for `window_idle_close_s` (wall clock): close every open window, so that the tail
        of a burst of traffic is not held back until the next event arrives."""
        s = self.settings.streams
        if time.monotonic() - self._last_item_wall < s.window_idle_close_s:
            return
        mark = self._mark()
        if mark.max_event_time is None:
            return
        open_windows = self._open_windows()
        if not open_windows:
            return
        newest_end = max(w.end for w in open_windows)
        target = newest_end + timedelta(seconds=s.window_grace_s)
        new_mark, closing = advance_watermark(mark, target, grace_s=s.window_grace_s, windows=open_windows)
        self._store_mark(new_mark)
        for w in closing:
            await self._close(w)

    async def _window_tick(self) -> None:
        # Only the worker that owns the windows partition acts on it (the table changes in the agent).
        if time.monotonic() - self._last_item_wall >= self.settings.streams.window_idle_close_s:
            await self.windows_topic.send(key=b"w", value=b'{"tick": true}')


def create_app(settings: StreamsSettings, *, partitions: int, metrics: StreamsMetrics | None = None) -> StreamsApp:
    return StreamsApp(settings, partitions=partitions, metrics=metrics)
