"""The retrain consumer: counts new quality data from window events and trains when there is enough.

Exports `RunRequest`, `RunOutcome`, `ConsumerState`, `RetrainConsumer`, `recover_runs` and
`STATE_FILE`.

How it works:
- it reads the `dataset.windows` topic from the beginning on every start (no consumer group: the
  topic is small, one partition, kept forever) and counts each `DatasetWindowClosed` once (by window
  id): `total` is every SFT example announced, `pending` those announced after the last run's
  watermark (the window-topic offsets it covered);
- after a run that promoted a version, windows that closed before the promotion still count in `total`
  (and are in the next run's data) but not in `pending`: the next run is fed by the new student's traffic
  and its teacher fallbacks (`retrain_after_promotion` of those examples, default `retrain_threshold`);
- after each batch of window events, when `pending >= retrain_threshold` and
  `total >= min_training_examples`, it records a run: the watermark (the dataset topics' end offsets
  now, and the window offsets counted) is saved to disk *first*, then `TrainingRunEvent(requested)`
  (carrying the watermark) and `started` are published, the job runs (one at a time, in a worker
  thread, on the dataset topics materialised up to the watermark), and `finished` or `failed` follows;
- the watermark survives restarts twice over: `<registry>/<model>/trainer_state.json`, and the
  `training.runs` topic (the latest watermark of this model's run events). On start the most
  advanced of the two wins, so the same data never triggers a second run, even with the disk lost;
  a run that was requested but never finished (the trainer died: kill -9, OOM, a lost node) is
  closed as `failed` ("interrupted") and retried once, as a new run (`<run_id>-retry`, `retry_of`
  naming it) on the same watermark, before anything new is counted. A retry that is interrupted in
  turn is closed as failed and not retried again (a run that kills the trainer every time must not
  loop); its data is part of the next run anyway (runs train on all data up to their watermark).
  A job that fails by itself (an exception) is reported `failed` and not retried.

The job is injectable (`job=`): a callable `(RunRequest, TrainingData) -> RunOutcome`, run in a
thread. The default runs `trainer.job.TrainingJob` and publishes its `ModelVersionEvent`s.
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stillflow.contracts import (
    ContractError,
    DatasetWindowClosed,
    Event,
    ModelVersionEvent,
    TrainingRunEvent,
    decode,
    encode,
)
from stillflow.dlq import DeadLetterSink, decode_or_letter
from stillflow.kafka import make_consumer, make_producer, timestamp_ms
from trainer.data import TrainingData, Watermark, end_offsets, read_topics
from trainer.settings import TrainerSettings

__all__ = ["STATE_FILE", "RunRequest", "RunOutcome", "ConsumerState", "RetrainConsumer", "recover_runs"]

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
TERMINAL = ("finished", "failed")
INTERRUPTED = "interrupted"
RETRY_SUFFIX = "-retry"


@dataclass(frozen=True)
class RunRequest:
    run_id: str
    model_name: str
    n_new_examples: int
    total_examples: int
    watermark: Watermark


@dataclass(frozen=True)
class RunOutcome:
    version: str | None = None
    status: str | None = None  # promoted | rejected
    metrics: dict[str, float] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)  # e.g. ModelVersionEvents to publish


@dataclass
class ConsumerState:
    """What the consumer knows; persisted as `trainer_state.json` beside the model's versions."""

    model_name: str
    windows_offsets: dict[str, int] = field(default_factory=dict)  # "partition" -> last offset covered by a run
    pending: int = 0
    total: int = 0
    last_run: dict[str, Any] | None = None
    updated_at: float = 0.0

    @classmethod
    def load(cls, path: Path, model_name: str) -> ConsumerState:
        if not path.exists():
            return cls(model_name)
        obj = json.loads(path.read_text(encoding="utf-8"))
        return cls(model_name=obj.get("model_name", model_name),
                   windows_offsets={str(k): int(v) for k, v in (obj.get("windows_offsets") or {}).items()},
                   pending=int(obj.get("pending", 0)), total=int(obj.get("total", 0)), last_run=obj.get("last_run"),
                   updated_at=float(obj.get("updated_at", 0.0)))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.updated_at = time.time()
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    def covered(self, partition: int, offset: int) -> bool:
        return offset <= self.windows_offsets.get(str(partition), -1)


async def recover_runs(settings: TrainerSettings, model_name: str, *, timeout_s: float = 5.0) -> tuple[
        dict[str, int], list[TrainingRunEvent], list[TrainingRunEvent]]:
    """From the `training.runs` topic: the most advanced window offsets a run of `model_name` covered,
    the runs left open (requested or started, never finished or failed), and the interrupted runs
    owed their one retry (open, or failed as interrupted, not a retry themselves, and no run names
    them in `retry_of`): the latest event of each."""
    topic = settings.topics.training_runs
    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    runs: dict[str, list[TrainingRunEvent]] = {}
    try:
        await consumer.topics()
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if tps:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            deadline = time.monotonic() + timeout_s
            async def behind() -> bool:
                return any([await consumer.position(tp) < ends[tp] for tp in tps])

            while await behind() and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for rec in records:
                        try:
                            ev = decode(rec.value or b"", TrainingRunEvent)
                        except ContractError:
                            continue
                        if ev.model_name == model_name:
                            runs.setdefault(ev.run_id, []).append(ev)
    finally:
        await consumer.stop()
    offsets: dict[str, int] = {}
    open_runs: list[TrainingRunEvent] = []
    to_retry: list[TrainingRunEvent] = []
    retried = {e.retry_of for events in runs.values() for e in events if e.retry_of}
    for run_id, events in runs.items():
        for ev in events:
            wm = Watermark.from_json(ev.watermark) if ev.watermark else None
            if wm is not None:
                for part, off in _window_offsets(wm).items():
                    offsets[part] = max(offsets.get(part, -1), off)
        statuses = {e.status for e in events}
        is_open = not statuses & set(TERMINAL)
        if is_open:
            open_runs.append(events[-1])
        interrupted = is_open or any(e.status == "failed" and (e.error or "").startswith(INTERRUPTED)
                                     for e in events)
        if interrupted and run_id not in retried and not any(e.retry_of for e in events):
            to_retry.append(events[-1])
    return offsets, open_runs, to_retry


def _remove_work_dirs(run_id: str) -> None:
    """The scratch directories (`TrainingJob`'s checkpoints under the temp dir) of a run that died on
    this host; another host's are out of reach and harmless here."""
    for p in Path(tempfile.gettempdir()).glob(f"stillflow-{glob.escape(run_id)}-*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            log.info("removed %s, the work directory of interrupted run %s", p, run_id)


def _window_offsets(wm: Watermark) -> dict[str, int]:
    # Watermark.windows holds the offset of partition 0; `offsets` may hold "windows:<p>" entries too.
    out = {"0": wm.windows} if wm.windows >= 0 else {}
    for key, off in wm.offsets.items():
        if key.startswith("windows:"):
            out[key.split(":", 1)[1]] = off
    return out


JobFn = Callable[[RunRequest, TrainingData], RunOutcome]


class RetrainConsumer:
    """See the module docstring. `await run(stop)` until `stop` is set; `await run_once(idle_s)` in tests."""

    def __init__(
        self,
        settings: TrainerSettings,
        *,
        job: JobFn | None = None,
        metrics: Any = None,
        materialise: Callable[[Watermark], Awaitable[TrainingData]] | None = None,
    ) -> None:
        self.settings = settings
        self.section = settings.trainer
        self.model = self.section.model_name
        self.state_path = self.section.model_dir() / STATE_FILE
        self.job = job or self._default_job
        self.metrics = metrics
        self.materialise = materialise or (lambda wm: read_topics(self.settings, wm))
        self.state = ConsumerState(self.model)
        self.runs_started = 0
        self._seen_windows: set[str] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._sink: DeadLetterSink | None = None
        self._max_offsets: dict[str, int] = {}
        self._retries: list[TrainingRunEvent] = []  # interrupted runs owed their one retry (start() finds them)
        self._promoted_at: datetime | None = None  # the last promotion by this consumer's runs (this process)

    # ---- lifecycle ----

    async def start(self) -> None:
        disk = ConsumerState.load(self.state_path, self.model)
        topic_offsets, open_runs, to_retry = await recover_runs(self.settings, self.model)
        merged = dict(disk.windows_offsets)
        for part, off in topic_offsets.items():
            merged[part] = max(merged.get(part, -1), off)
        self.state = ConsumerState(self.model, merged, 0, 0, disk.last_run)
        if topic_offsets != disk.windows_offsets:
            log.info("trainer watermark: disk %s, training.runs topic %s → %s", disk.windows_offsets, topic_offsets,
                     merged)
        self._producer = make_producer(self.settings.kafka)
        await self._producer.start()
        self._sink = DeadLetterSink(self._producer, self.settings.topics.dlq)
        retry_ids = {ev.run_id for ev in to_retry}
        for ev in open_runs:
            then = ("retried once" if ev.run_id in retry_ids
                    else f"not retried again (it retried {ev.retry_of})" if ev.retry_of else "not retried")
            log.warning("run %s was %s but never finished (the trainer stopped): closing it as failed, %s",
                        ev.run_id, ev.status, then)
            await self._publish(TrainingRunEvent(run_id=ev.run_id, status="failed", model_name=self.model,
                                                 n_new_examples=ev.n_new_examples, watermark=ev.watermark,
                                                 retry_of=ev.retry_of,
                                                 error=f"{INTERRUPTED}: the trainer stopped before the run "
                                                       f"finished; {then}"))
            _remove_work_dirs(ev.run_id)
        self._retries = [ev for ev in to_retry if ev.watermark]
        topic = self.settings.topics.dataset_windows
        self._consumer = make_consumer(self.settings.kafka, group_id=None)
        await self._consumer.start()
        await self._consumer.topics()
        parts = self._consumer.partitions_for_topic(topic) or {0}
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self.state.save(self.state_path)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> RetrainConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- the loop ----

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until `stop` is set (or forever)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self.poll()

    async def run_once(self, idle_s: float = 2.0, max_s: float = 120.0) -> int:
        """Consume until no window event arrived for `idle_s` (and any triggered run finished); returns
        the number of runs started (tests, one-shot use)."""
        before = self.runs_started
        deadline = time.monotonic() + max_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            n = await self.poll()
            if n:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= idle_s:
                break
        return self.runs_started - before

    async def poll(self) -> int:
        """One batch: count window events, then maybe run a job. Returns the window events counted.
        An interrupted run's retry goes first (it counts as one event, so `run_once` waits for it)."""
        assert self._consumer is not None, "start() first"
        if self._retries:
            await self._retry(self._retries.pop(0))
            return 1
        batch = await self._consumer.getmany(timeout_ms=int(self.section.poll_timeout_s * 1000), max_records=500)
        counted = 0
        for records in batch.values():
            for rec in records:
                event, letter = decode_or_letter(rec.value, DatasetWindowClosed, source_topic=rec.topic,
                                                 partition=rec.partition, offset=rec.offset, key=rec.key,
                                                 service="trainer")
                key = str(rec.partition)
                self._max_offsets[key] = max(self._max_offsets.get(key, -1), rec.offset)
                if letter is not None:
                    assert self._sink is not None
                    await self._sink.send(letter)
                    continue
                assert event is not None
                counted += self._count(event, rec.partition, rec.offset)
        if counted:
            self._publish_gauges()
            self.state.save(self.state_path)
        if self._should_run():
            await self._trigger()
        return counted

    def _count(self, ev: DatasetWindowClosed, partition: int, offset: int) -> int:
        if ev.window_id in self._seen_windows:
            return 0  # a window announced twice (at-least-once): counted once
        self._seen_windows.add(ev.window_id)
        self.state.total += ev.n_sft
        before_promotion = self._promoted_at is not None and ev.window_end <= self._promoted_at
        if not self.state.covered(partition, offset) and not before_promotion:
            self.state.pending += ev.n_sft
        if self.metrics is not None:
            self.metrics.windows.inc()
        return 1

    def _publish_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.pending_examples.set(self.state.pending)
            self.metrics.total_examples.set(self.state.total)

    def _should_run(self) -> bool:
        need = self.section.retrain_threshold
        if self._promoted_at is not None and self.section.retrain_after_promotion is not None:
            need = self.section.retrain_after_promotion
        return self.state.pending >= need and self.state.total >= self.section.min_training_examples

    # ---- a run ----

    async def _trigger(self) -> None:
        run_id = f"run-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
        ends = await end_offsets(self.settings)
        windows = dict(self.state.windows_offsets)
        for part, off in self._max_offsets.items():
            windows[part] = max(windows.get(part, -1), off)
        offsets = dict(ends)
        for part, off in windows.items():
            if part != "0":
                offsets[f"windows:{part}"] = off
        wm = Watermark(offsets, windows.get("0", -1))
        n_new, total = self.state.pending, self.state.total
        # Persist first: whatever happens next, this data has been handed to a run.
        self.state.windows_offsets = windows
        self.state.pending = 0
        self._publish_gauges()
        await self._run(RunRequest(run_id, self.model, n_new, total, wm))

    async def _retry(self, interrupted: TrainingRunEvent) -> None:
        """The one retry of an interrupted run: same watermark (the same data), a new run id."""
        assert interrupted.watermark is not None
        run_id = f"{interrupted.run_id[:128 - len(RETRY_SUFFIX)]}{RETRY_SUFFIX}"
        log.warning("run %s was interrupted: retrying it once as %s", interrupted.run_id, run_id)
        n = interrupted.n_new_examples  # the total is not counted yet (windows are re-read after the retry)
        await self._run(RunRequest(run_id, self.model, n, max(n, self.state.total),
                                   Watermark.from_json(interrupted.watermark)), retry_of=interrupted.run_id)

    async def _run(self, request: RunRequest, *, retry_of: str | None = None) -> None:
        run_id, wm, n_new = request.run_id, request.watermark, request.n_new_examples
        self.state.last_run = {"run_id": run_id, "status": "requested", "watermark": json.loads(wm.to_json()),
                               "n_new_examples": n_new, "retry_of": retry_of}
        self.state.save(self.state_path)
        self.runs_started += 1
        base = dict(run_id=run_id, model_name=self.model, n_new_examples=n_new, watermark=wm.to_json(),
                    retry_of=retry_of)
        await self._publish(TrainingRunEvent(status="requested", **base))
        log.info("run %s: %d new examples (%d in total) → training%s", run_id, n_new, request.total_examples,
                 f" (retry of {retry_of})" if retry_of else "")
        await self._publish(TrainingRunEvent(status="started", **base))
        t0 = time.perf_counter()
        try:
            data = await self.materialise(wm)
            outcome = await asyncio.to_thread(self.job, request, data)
        except Exception as exc:
            log.exception("run %s failed", run_id)
            await self._publish(TrainingRunEvent(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000], **base))
            self.state.last_run = {**self.state.last_run, "status": "failed", "error": str(exc)[:500]}
            self.state.save(self.state_path)
            if self.metrics is not None:
                self.metrics.observe_run("failed", time.perf_counter() - t0)
            return
        for ev in outcome.events:
            await self._publish(ev)
            if isinstance(ev, ModelVersionEvent) and ev.status == "promoted":
                self._promoted_at = ev.timestamp
        await self._publish(TrainingRunEvent(status="finished", version=outcome.version, metrics=outcome.metrics,
                                             **base))
        self.state.last_run = {**self.state.last_run, "status": "finished", "version": outcome.version,
                               "outcome": outcome.status}
        self.state.save(self.state_path)

    async def _publish(self, event: Event) -> None:
        assert self._producer is not None
        if isinstance(event, TrainingRunEvent):
            topic, key = self.settings.topics.training_runs, event.run_id
        else:
            topic, key = self.settings.topics.model_versions, getattr(event, "model_name", self.model)
        try:
            await self._producer.send_and_wait(topic, encode(event), key=key.encode(),
                                               timestamp_ms=timestamp_ms(event.timestamp))
        except Exception as exc:  # the run goes on; the disk state still holds the watermark
            log.error("could not publish %s to %s: %s", type(event).__name__, topic, exc)

    def _default_job(self, request: RunRequest, data: TrainingData) -> RunOutcome:
        from trainer.job import TrainingJob

        job = TrainingJob(self.settings, metrics=self.metrics, progress=False)
        result = job.run(data, run_id=request.run_id, watermark=request.watermark.to_json())
        return RunOutcome(result.version, result.status, result.metrics, list(result.events))
