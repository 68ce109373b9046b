"""SDK emit throughput vs a raw aiokafka producer sending the same bytes to the same broker.

Rounds alternate raw and SDK so that machine noise hits both; the ratio is taken per round and the
median reported. Target: sdk/raw >= 0.5.

    python -m benchmarks.sdk_emit [--traces 400 --steps 25 --rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from benchmarks.common import bench_broker, emit_result, progress, trace_records
from stillflow.kafka import ensure_topics, make_producer, with_bootstrap
from stillflow.sdk import TraceEmitter
from stillflow.settings import StillflowSettings, TopicNames
from tests.helpers import make_trace


async def _raw_round(settings: StillflowSettings, records) -> float:
    sdk = settings.sdk
    producer = make_producer(settings.kafka, linger_ms=sdk.linger_ms, max_batch_size=sdk.max_batch_size, acks=sdk.acks)
    await producer.start()
    topics = {"steps": settings.topics.trace_steps, "outcomes": settings.topics.trace_outcomes}
    try:
        t0 = time.perf_counter()
        for kind, key, value, ts in records:
            await producer.send(topics[kind], value, key=key, timestamp_ms=ts)
        await producer.flush()
        return time.perf_counter() - t0
    finally:
        await producer.stop()


async def _sdk_round(settings: StillflowSettings, traces) -> float:
    async with TraceEmitter(settings) as em:
        t0 = time.perf_counter()
        for t in traces:
            await em.emit_trace(t)
        await em.flush()
        return time.perf_counter() - t0


async def run(n_traces: int, n_steps: int, rounds: int) -> dict:
    with bench_broker() as bootstrap:
        traces = [make_trace(i, n_steps) for i in range(n_traces)]
        records = trace_records(traces)
        n_events = len(records)
        raw_rates, sdk_rates, ratios = [], [], []
        for r in range(rounds + 1):
            names = TopicNames().with_prefix(f"bench{uuid.uuid4().hex[:6]}.")
            settings = with_bootstrap(StillflowSettings(topics=names), bootstrap)
            await ensure_topics(settings)
            raw_s = await _raw_round(settings, records)
            sdk_s = await _sdk_round(settings, traces)
            if r == 0:
                continue  # warm-up: connections, JIT-free but cache-cold paths
            raw_rates.append(n_events / raw_s)
            sdk_rates.append(n_events / sdk_s)
            ratios.append(raw_s / sdk_s)
            progress(f"round {r}: raw {raw_rates[-1]:,.0f}/s  sdk {sdk_rates[-1]:,.0f}/s  ratio {ratios[-1]:.2f}")
        ratio = statistics.median(ratios)
        return {
            "events_per_round": n_events,
            "rounds": rounds,
            "raw_events_per_s": round(statistics.median(raw_rates)),
            "sdk_events_per_s": round(statistics.median(sdk_rates)),
            "ratio_sdk_over_raw": round(ratio, 3),
            "ratios": [round(x, 3) for x in ratios],
            "target_ratio": 0.5,
            "meets_target": ratio >= 0.5,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=400)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    emit_result("sdk_emit", asyncio.run(run(args.traces, args.steps, args.rounds)))


if __name__ == "__main__":
    main()
