"""Ingest bench: trace events/s through the full streams pipeline vs a faust no-op agent vs a raw
aiokafka consumer (+ JSON decode), on the same embedded broker in one run.

Each measurement drains the same backlog of sim teacher traces (steps + outcomes), produced after the
consumer is up; the faust runs end when their output shows the last record (the pipeline: the last
ScoredTrace; the no-op: one record sent after the last event). Target: pipeline / no-op >= 0.5.

    python -m benchmarks.ingest [--traces 800]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from benchmarks.common import bench_broker, emit_result, progress
from sim.policies import make_policy
from sim.runner import iter_offline
from stillflow.broker import free_port
from stillflow.contracts import TraceOutcomeEvent, TraceStepEvent, encode
from stillflow.kafka import ensure_named_topics, ensure_topics, make_producer, timestamp_ms, with_bootstrap
from stillflow.settings import StillflowSettings, TopicNames


def _records(n_traces: int) -> list[tuple[str, bytes, bytes, int]]:
    start = datetime.now(UTC) - timedelta(minutes=5)
    out = []
    for t in iter_offline(n_traces, make_policy("teacher"), seed=1, start=start, rate=50.0):
        for seq, step in enumerate(t.steps):
            ev = TraceStepEvent(trace_id=t.trace_id, task_id=t.task_id, agent_id=t.agent_id, seq=seq, step=step,
                                timestamp=step.timestamp)
            out.append(("steps", t.trace_id.encode(), encode(ev), timestamp_ms(step.timestamp)))
        oc = TraceOutcomeEvent.from_trace(t)
        out.append(("outcomes", t.trace_id.encode(), encode(oc), timestamp_ms(oc.timestamp)))
    return out


async def _produce(settings: StillflowSettings, records) -> None:
    producer = make_producer(settings.kafka, linger_ms=5)
    await producer.start()
    topics = {"steps": settings.topics.trace_steps, "outcomes": settings.topics.trace_outcomes}
    try:
        for kind, key, value, ts in records:
            await producer.send(topics[kind], value, key=key, timestamp_ms=ts)
        await producer.flush()
    finally:
        await producer.stop()


async def _settings(bootstrap: str) -> StillflowSettings:
    s = with_bootstrap(StillflowSettings(topics=TopicNames().with_prefix(f"b{uuid.uuid4().hex[:6]}.")), bootstrap)
    await ensure_topics(s)
    return s


async def _raw(bootstrap: str, records) -> float:
    s = await _settings(bootstrap)
    consumer = AIOKafkaConsumer(s.topics.trace_steps, s.topics.trace_outcomes, bootstrap_servers=bootstrap,
                                group_id=f"raw-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest",
                                session_timeout_ms=6000, heartbeat_interval_ms=1000)
    await consumer.start()
    try:
        t0 = time.perf_counter()
        await _produce(s, records)
        n = 0
        while n < len(records):
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for recs in batch.values():
                for r in recs:
                    json.loads(r.value)
                n += sum(1 for _ in recs)
        return len(records) / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


async def _wait_output(bootstrap: str, topic: str, expected: int, timeout: float) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        n, deadline = 0, time.monotonic() + timeout
        while n < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: {n} of {expected} records after {timeout}s")
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            n += sum(len(v) for v in batch.values())
    finally:
        await consumer.stop()


def _env(s: StillflowSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLFLOW_")}
    env["STILLFLOW_KAFKA__BOOTSTRAP_SERVERS"] = s.kafka.bootstrap_servers or ""
    for role, name in s.topics.model_dump().items():
        env[f"STILLFLOW_TOPICS__{role.upper()}"] = name
    return env


async def _faust(bootstrap: str, records, kind: str, n_traces: int, log_dir: Path) -> float:
    s = await _settings(bootstrap)
    env = _env(s)
    app_id = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    port = free_port()
    if kind == "noop":
        done = f"{app_id}-done"
        await ensure_named_topics(s, {done: (1, {})})
        env.update(BENCH_EXPECTED=str(len(records)), BENCH_APP_ID=app_id, BENCH_WEB_PORT=str(port),
                   BENCH_DONE_TOPIC=done)
        cmd = [sys.executable, "-m", "benchmarks.noop_app", "worker", "-l", "warn", "--web-port", str(port)]
        out_topic, expected = done, 1
    else:
        env.update(STILLFLOW_STREAMS__APP_ID=app_id, STILLFLOW_STREAMS__SESSION_TIMEOUT_S="6",
                   STILLFLOW_STREAMS__STANDBY_REPLICAS="0")
        cmd = [sys.executable, "-m", "stillflow.cli", "streams", "--web-port", str(port), "--loglevel", "warning"]
        out_topic, expected = s.topics.traces_scored, n_traces
        if os.environ.get("BENCH_PROFILE"):  # cProfile the pipeline worker (written when it stops)
            cmd = [sys.executable, "-m", "cProfile", "-o", os.environ["BENCH_PROFILE"], *cmd[1:]]
    with open(log_dir / f"{kind}.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        await _wait_ready(port, proc)
        t0 = time.perf_counter()
        await _produce(s, records)
        await _wait_output(bootstrap, out_topic, expected, timeout=600)
        return len(records) / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(30)


async def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """The worker's web server answers once it has started; then give the group join time to settle."""
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
            try:
                await client.get(f"http://127.0.0.1:{port}/", timeout=1)
                await asyncio.sleep(4)  # partition assignment completes after the web server is up
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.3)
    raise TimeoutError("worker not ready")


async def run(n_traces: int) -> dict:
    records = _records(n_traces)
    log_dir = Path(tempfile.mkdtemp(prefix="stillflow-bench-"))
    with bench_broker() as bootstrap:
        progress(f"{len(records)} events ({n_traces} traces); logs in {log_dir}")
        raw = await _raw(bootstrap, records)
        progress(f"raw aiokafka consumer: {raw:,.0f} events/s")
        noop = await _faust(bootstrap, records, "noop", n_traces, log_dir)
        progress(f"faust no-op agent:     {noop:,.0f} events/s")
        pipe = await _faust(bootstrap, records, "pipeline", n_traces, log_dir)
        progress(f"streams pipeline:      {pipe:,.0f} events/s")
    ratio = pipe / noop
    return {
        "events": len(records),
        "traces": n_traces,
        "raw_consumer_events_per_s": round(raw),
        "faust_noop_events_per_s": round(noop),
        "pipeline_events_per_s": round(pipe),
        "pipeline_traces_per_s": round(pipe * n_traces / len(records), 1),
        "ratio_pipeline_over_noop": round(ratio, 3),
        "ratio_noop_over_raw": round(noop / raw, 3),
        "target_ratio": 0.5,
        "meets_target": ratio >= 0.5,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=800)
    args = ap.parse_args()
    emit_result("ingest", asyncio.run(run(args.traces)))


if __name__ == "__main__":
    main()
