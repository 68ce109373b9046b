"""Fault: `kill -9` of the trainer mid-run (issue 8).

A real `stillflow trainer` process (tiny student) is triggered by window events over real dataset
topics, killed with SIGKILL while its job is in SFT, and started again: the interrupted run is closed
as `failed`, retried once (`<run_id>-retry`, `retry_of`, the same watermark) and the retry finishes
with a registered version. The registry never shows a half-written version: the killed run left
none, and a half-copied `.tmp-*` directory (what a writer killed during `register` leaves; planted
here, the copy takes milliseconds) is never listed and is removed by the retry's registration; the
killed job's work directory (its checkpoints under $TMPDIR) is removed when the run is closed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stillflow.broker import die_with_parent
from stillflow.contracts import DatasetWindowClosed, ModelVersionEvent, TrainingRunEvent, decode, encode
from stillflow.kafka import make_producer, read_to_end
from stillflow.registry import ModelRegistry
from stillflow.settings import StillflowSettings
from tests.trainer_data import generate_sim_data

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]

# A tiny student and a two-task evaluation: the retry's whole job takes seconds on two cores.
TINY = {"STUDENT__HIDDEN_SIZE": "32", "STUDENT__NUM_LAYERS": "1", "STUDENT__NUM_HEADS": "2",
        "STUDENT__INTERMEDIATE_SIZE": "64", "STUDENT__VOCAB_SIZE": "400", "STUDENT__COPY_WARMUP_STEPS": "2",
        "SFT__MAX_STEPS": "2", "SFT__BATCH_SIZE": "4", "DPO__MAX_STEPS": "1", "DPO__BATCH_SIZE": "2",
        "DPO__MIN_PAIRS": "1", "EVAL__TASKS": "2", "EVAL__OFFLINE_EXAMPLES": "1", "EVAL__MAX_TURNS": "1",
        "EVAL__MAX_NEW_TOKENS": "8", "GATE__MIN_EVAL_TASKS": "1", "THREADS": "1", "POLL_TIMEOUT_S": "0.5"}


def _env(settings: StillflowSettings, tmp: Path, **trainer: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLFLOW_")}
    env["STILLFLOW_KAFKA__BOOTSTRAP_SERVERS"] = settings.kafka.bootstrap_servers or ""
    for role, name in settings.topics.model_dump().items():
        env[f"STILLFLOW_TOPICS__{role.upper()}"] = name
    for k, v in {**TINY, **trainer}.items():
        env[f"STILLFLOW_TRAINER__{k}"] = v
    env["TMPDIR"] = str(tmp)  # the job's work directory (a killed job leaves it behind)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(env: dict[str, str], registry: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "stillflow.cli", "trainer", "--registry", str(registry), "--threshold", "10",
         "--min-examples", "10", "--metrics-port", "0", "--device", "cpu"],
        env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
    )
    log.close()
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def _runs(settings: StillflowSettings) -> list[TrainingRunEvent]:
    return [decode(v, TrainingRunEvent) for v in await read_to_end(settings, settings.topics.training_runs)]


async def _wait(predicate, timeout: float, what: str, log_path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout}s (trainer rc {proc.poll()})\n"
                         f"{log_path.read_text(errors='replace')[-4000:]}")


async def test_trainer_killed_mid_sft_fails_the_run_and_retries_it_once(settings: StillflowSettings,
                                                                        tmp_path: Path) -> None:
    examples, pairs, _ = generate_sim_data(n_tasks=16, runs_per_task=2, seed=11)
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for e in examples:
            await producer.send_and_wait(settings.topics.dataset_sft, encode(e), key=e.example_id.encode())
        for p in pairs:
            await producer.send_and_wait(settings.topics.dataset_dpo, encode(p), key=p.pair_id.encode())
        window = DatasetWindowClosed(window_id="w-fault", window_start=t0, window_end=t0 + timedelta(minutes=1),
                                     n_traces=len(examples), n_passed=len(examples), n_sft=len(examples),
                                     n_pairs=len(pairs))
        await producer.send_and_wait(settings.topics.dataset_windows, encode(window), key=b"w-fault")
    finally:
        await producer.stop()

    registry = tmp_path / "registry"
    (tmp_path / "tmp").mkdir()
    log_path = tmp_path / "trainer.log"
    # first trainer: SFT that would run for hours, killed once it is in it
    proc = _start(_env(settings, tmp_path / "tmp", SFT__MAX_STEPS="1000000"), registry, log_path)
    try:
        async def started() -> bool:
            return any(e.status == "started" for e in await _runs(settings))

        await _wait(started, 60, "run started", log_path, proc)

        async def in_sft() -> bool:
            return "trainer.sft: sft step" in log_path.read_text(errors="replace")  # SFT steps are logged

        await _wait(in_sft, 60, "SFT steps under way", log_path, proc)
        await asyncio.sleep(0.5)
        assert proc.poll() is None, "the job must still be running when it is killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    killed_run = next(e.run_id for e in await _runs(settings) if e.status == "started")
    assert [p.name for p in (tmp_path / "tmp").glob(f"stillflow-{killed_run}-*")], "the killed job's work dir"
    reg = ModelRegistry(registry, "student")
    assert reg.versions() == []  # nothing registered by the killed run
    # what a writer killed during `register` leaves behind
    half = reg.dir / ".tmp-v0001-killed00"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"half a model")
    assert reg.versions() == []

    # second trainer: closes the interrupted run and retries it once, cheaply
    proc = _start(_env(settings, tmp_path / "tmp"), registry, log_path)
    try:
        async def retry_done() -> bool:
            return any(e.status in ("finished", "failed") and e.retry_of == killed_run for e in await _runs(settings))

        await _wait(retry_done, 90, "the retry finished", log_path, proc)
        await asyncio.sleep(1.0)  # nothing more is coming: no second retry, no new run
        runs = await _runs(settings)
        assert proc.poll() is None, "the trainer keeps running after the retry"
    finally:
        _stop(proc)

    retry = f"{killed_run}-retry"
    assert [(e.run_id, e.status, e.retry_of) for e in runs] == [
        (killed_run, "requested", None), (killed_run, "started", None),
        (killed_run, "failed", None),
        (retry, "requested", killed_run), (retry, "started", killed_run), (retry, "finished", killed_run),
    ], log_path.read_text(errors="replace")[-4000:]
    failed, finished = runs[2], runs[-1]
    assert failed.error and failed.error.startswith("interrupted") and "retried once" in failed.error
    assert runs[3].watermark == runs[0].watermark  # the retry trains on the same data

    # the registry: exactly the retry's version, verified whole; the half-written directory is gone
    assert finished.version == "v0001" and reg.versions() == ["v0001"]
    reg.verify("v0001")
    assert reg.manifest("v0001")["run_id"] == retry
    assert not [p.name for p in reg.dir.iterdir() if p.name.startswith(".tmp-")]
    assert not list((tmp_path / "tmp").glob("stillflow-run-*")), "work dirs of the killed run and the retry removed"
    versions = [decode(v, ModelVersionEvent) for v in await read_to_end(settings, settings.topics.model_versions)]
    assert [v.version for v in versions] == ["v0001", "v0001"] and versions[0].status == "candidate"
