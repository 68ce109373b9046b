"""The retrain consumer through the real broker: window events crossing the threshold trigger exactly one
run; a restart triggers none (from the disk state, and from the training.runs topic alone); an
interrupted run is closed as failed and retried once, a retry never again."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stillflow.contracts import DatasetWindowClosed, ModelVersionEvent, TrainingRunEvent, decode, encode
from stillflow.kafka import make_producer
from stillflow.settings import StillflowSettings
from tests.helpers import read_topics
from trainer.consumer import STATE_FILE, RetrainConsumer, RunOutcome, RunRequest
from trainer.data import TrainingData, Watermark
from trainer.settings import with_trainer

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, tzinfo=UTC)


class StubJob:
    """Stands in for the training job (the consumer's wiring is real)."""

    def __init__(self) -> None:
        self.requests: list[RunRequest] = []
        self.lock = threading.Lock()

    def __call__(self, request: RunRequest, data: TrainingData) -> RunOutcome:
        with self.lock:
            self.requests.append(request)
        version = f"v{len(self.requests):04d}"
        event = ModelVersionEvent(model_name=request.model_name, version=version, status="candidate")
        return RunOutcome(version=version, status="promoted", metrics={"quality_ratio": 0.95}, events=[event])


def _window(i: int, n_sft: int, window_id: str | None = None) -> DatasetWindowClosed:
    start = T0 + timedelta(minutes=i)
    return DatasetWindowClosed(window_id=window_id or f"w-{int(start.timestamp())}", window_start=start,
                               window_end=start + timedelta(minutes=1), n_traces=n_sft + 2, n_passed=n_sft,
                               n_sft=n_sft, n_pairs=1)


async def _send_windows(settings: StillflowSettings, windows: list[DatasetWindowClosed]) -> None:
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for w in windows:
            await producer.send_and_wait(settings.topics.dataset_windows, encode(w), key=w.window_id.encode())
    finally:
        await producer.stop()


def _trainer_settings(settings: StillflowSettings, registry: Path):
    return with_trainer(settings, registry_dir=registry, retrain_threshold=10, min_training_examples=15,
                        poll_timeout_s=0.2)


async def _run_consumer(ts, job: StubJob) -> int:
    consumer = RetrainConsumer(ts, job=job)
    await consumer.start()
    try:
        return await consumer.run_once(idle_s=1.5, max_s=60)
    finally:
        await consumer.stop()


async def test_threshold_crossing_triggers_exactly_one_run_and_restarts_none(
    settings: StillflowSettings, tmp_path: Path
) -> None:
    ts = _trainer_settings(settings, tmp_path / "registry")
    job = StubJob()
    # 6 + 6 = 12 new examples crosses the threshold (10) but not the minimum (15); +5 crosses both;
    # a window delivered twice counts once; 3 more afterwards are pending, below the threshold
    w = [_window(0, 6), _window(1, 6), _window(2, 5)]
    await _send_windows(ts, [w[0], w[1], w[1], w[2]])
    assert await _run_consumer(ts, job) == 1
    assert len(job.requests) == 1
    req = job.requests[0]
    assert req.n_new_examples == 17 and req.total_examples == 17
    assert req.watermark.windows == 3  # the offset of the last window event counted

    await _send_windows(ts, [_window(3, 3)])
    # restart: the same data must not train again
    assert await _run_consumer(ts, job) == 0
    # restart with the disk state lost: the training.runs topic still holds the watermark
    (ts.trainer.model_dir() / STATE_FILE).unlink()
    assert await _run_consumer(ts, job) == 0
    assert len(job.requests) == 1

    # new data crossing the threshold again: one more run, covering only the new windows
    await _send_windows(ts, [_window(4, 8)])
    assert await _run_consumer(ts, job) == 1
    assert job.requests[1].n_new_examples == 11 and job.requests[1].total_examples == 28

    records = await read_topics(ts, [ts.topics.training_runs, ts.topics.model_versions], expected=8, timeout=20)
    runs = [decode(r.value, TrainingRunEvent) for r in records if r.topic == ts.topics.training_runs]
    by_run: dict[str, list[str]] = {}
    for ev in runs:
        by_run.setdefault(ev.run_id, []).append(ev.status)
    assert sorted(by_run.values()) == [["requested", "started", "finished"]] * 2
    first = next(ev for ev in runs if ev.status == "requested" and ev.n_new_examples == 17)
    assert Watermark.from_json(first.watermark).windows == 3
    finished = [ev for ev in runs if ev.status == "finished"]
    assert {ev.version for ev in finished} == {"v0001", "v0002"} and finished[0].metrics == {"quality_ratio": 0.95}
    versions = [decode(r.value, ModelVersionEvent) for r in records if r.topic == ts.topics.model_versions]
    assert [v.version for v in versions] == ["v0001", "v0002"]


async def _publish_run(ts, event: TrainingRunEvent) -> None:
    producer = make_producer(ts.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(ts.topics.training_runs, encode(event), key=event.run_id.encode())
    finally:
        await producer.stop()


async def test_an_interrupted_run_is_closed_and_retried_once(settings: StillflowSettings, tmp_path: Path) -> None:
    ts = _trainer_settings(settings, tmp_path / "registry")
    await _send_windows(ts, [_window(0, 20)])
    # a previous trainer requested a run covering that window, then died
    wm = Watermark({}, windows=0)
    await _publish_run(ts, TrainingRunEvent(run_id="run-old", status="started", model_name=ts.trainer.model_name,
                                            n_new_examples=20, watermark=wm.to_json()))
    job = StubJob()
    assert await _run_consumer(ts, job) == 1  # the retry; the window itself is covered: no new run
    assert [(r.run_id, r.watermark) for r in job.requests] == [("run-old-retry", wm)]
    records = await read_topics(ts, [ts.topics.training_runs], expected=5, timeout=20)
    events = [decode(r.value, TrainingRunEvent) for r in records]
    assert [(e.run_id, e.status, e.retry_of) for e in events] == [
        ("run-old", "started", None), ("run-old", "failed", None), ("run-old-retry", "requested", "run-old"),
        ("run-old-retry", "started", "run-old"), ("run-old-retry", "finished", "run-old")]
    assert "interrupted" in (events[1].error or "") and "retried once" in (events[1].error or "")
    # a restart does not retry it again
    assert await _run_consumer(ts, StubJob()) == 0


async def test_an_interrupted_retry_is_closed_and_not_retried_again(settings: StillflowSettings,
                                                                    tmp_path: Path) -> None:
    ts = _trainer_settings(settings, tmp_path / "registry")
    await _send_windows(ts, [_window(0, 20)])
    wm = Watermark({}, windows=0).to_json()
    model = ts.trainer.model_name
    # run-old was interrupted and closed, its retry was interrupted too (and a third run, closed as
    # interrupted by an older trainer whose retry never got published, is still owed its retry)
    for ev in (TrainingRunEvent(run_id="run-old", status="started", model_name=model, watermark=wm),
               TrainingRunEvent(run_id="run-old", status="failed", model_name=model, watermark=wm,
                                error="interrupted: the trainer stopped before the run finished; retried once"),
               TrainingRunEvent(run_id="run-old-retry", status="started", model_name=model, watermark=wm,
                                retry_of="run-old"),
               TrainingRunEvent(run_id="run-other", status="failed", model_name=model, watermark=wm,
                                error="interrupted: the trainer stopped before the run finished")):
        await _publish_run(ts, ev)
    job = StubJob()
    assert await _run_consumer(ts, job) == 1
    assert [r.run_id for r in job.requests] == ["run-other-retry"]
    records = await read_topics(ts, [ts.topics.training_runs], expected=8, timeout=20)
    events = [decode(r.value, TrainingRunEvent) for r in records]
    closed = events[4]
    assert (closed.run_id, closed.status, closed.retry_of) == ("run-old-retry", "failed", "run-old")
    assert "not retried again" in (closed.error or "")
    assert [(e.run_id, e.status) for e in events[5:]] == [("run-other-retry", s) for s in
                                                          ("requested", "started", "finished")]
    assert await _run_consumer(ts, StubJob()) == 0


async def test_a_failing_job_is_reported_and_not_retried(settings: StillflowSettings, tmp_path: Path) -> None:
    ts = _trainer_settings(settings, tmp_path / "registry")
    await _send_windows(ts, [_window(0, 16)])

    def broken(request: RunRequest, data: TrainingData) -> RunOutcome:
        raise RuntimeError("out of memory")

    consumer = RetrainConsumer(ts, job=broken)
    await consumer.start()
    try:
        assert await consumer.run_once(idle_s=1.0) == 1
    finally:
        await consumer.stop()
    records = await read_topics(ts, [ts.topics.training_runs], expected=3, timeout=20)
    events = [decode(r.value, TrainingRunEvent) for r in records]
    assert [e.status for e in events] == ["requested", "started", "failed"]
    assert events[-1].error == "RuntimeError: out of memory"
    assert await _run_consumer(ts, StubJob()) == 0


class PromotingJob(StubJob):
    """A job whose version is promoted at `promoted_at` (event time), as the trainer's gate would."""

    def __init__(self, promoted_at: datetime) -> None:
        super().__init__()
        self.promoted_at = promoted_at

    def __call__(self, request: RunRequest, data: TrainingData) -> RunOutcome:
        with self.lock:
            self.requests.append(request)
        version = f"v{len(self.requests):04d}"
        events = [ModelVersionEvent(model_name=request.model_name, version=version, status="candidate"),
                  ModelVersionEvent(model_name=request.model_name, version=version, status="promoted",
                                    timestamp=self.promoted_at)]
        return RunOutcome(version=version, status="promoted", metrics={}, events=events)


async def test_after_a_promotion_the_next_run_waits_for_data_from_after_it(
    settings: StillflowSettings, tmp_path: Path
) -> None:
    ts = with_trainer(settings, registry_dir=tmp_path / "registry", retrain_threshold=10, min_training_examples=10,
                      retrain_after_promotion=4, poll_timeout_s=0.2)
    # v0001 is promoted at minute 3: windows ending at or before it were served before the new student
    job = PromotingJob(promoted_at=T0 + timedelta(minutes=3))
    consumer = RetrainConsumer(ts, job=job)
    await consumer.start()
    try:
        await _send_windows(ts, [_window(0, 12)])
        assert await consumer.run_once(idle_s=1.0, max_s=30) == 1
        # 20 examples of windows that closed before the promotion: in the data, not a reason to retrain
        await _send_windows(ts, [_window(1, 10), _window(2, 10)])
        assert await consumer.run_once(idle_s=1.0, max_s=30) == 0
        assert consumer.state.total == 32 and consumer.state.pending == 0
        # the new student's traffic: 4 examples after the promotion trigger the run its fallbacks feed
        await _send_windows(ts, [_window(3, 4)])
        assert await consumer.run_once(idle_s=1.0, max_s=30) == 1
    finally:
        await consumer.stop()
    assert [r.n_new_examples for r in job.requests] == [12, 4]
    assert job.requests[1].total_examples == 36
