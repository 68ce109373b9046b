"""The SDK under a paused broker (SIGSTOP on a broker of the test's own): it blocks, then raises
`BackpressureTimeout` after `send_timeout_s`, never drops silently and never holds more than its
in-flight bound; after SIGCONT everything it accepted is delivered exactly once. And a broker paused
for ~15 s while an emitter keeps sending loses nothing."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import uuid
from collections import Counter

import pytest

from stillflow.broker import EmbeddedBroker
from stillflow.contracts import TraceStepEvent, decode
from stillflow.kafka import ensure_named_topics, read_to_end, with_bootstrap
from stillflow.sdk import BackpressureTimeout, SyncTraceEmitter, TraceEmitter
from stillflow.settings import KafkaSettings, SDKSettings, StillflowSettings, TopicNames

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEP = {"step_type": "reasoning", "content": "r" * 300}




async def _settings(broker: EmbeddedBroker, *, max_in_flight: int, send_timeout_s: float) -> StillflowSettings:
    s = with_bootstrap(StillflowSettings(
        kafka=KafkaSettings(request_timeout_ms=30_000),
        topics=TopicNames().with_prefix(f"bp{uuid.uuid4().hex[:8]}."),
        sdk=SDKSettings(max_in_flight=max_in_flight, send_timeout_s=send_timeout_s),
    ), broker.bootstrap_servers)
    await ensure_named_topics(s, {s.topics.trace_steps: (1, {})})
    return s


async def _read_ids(settings: StillflowSettings) -> Counter[str]:
    return Counter(decode(v, TraceStepEvent).event_id for v in await read_to_end(settings, settings.topics.trace_steps))


@pytest.mark.parametrize("bound", [200, 20_000], ids=["in-flight-bound", "aiokafka-batch-bound"])
async def test_paused_broker_blocks_then_raises_and_delivers_what_it_accepted(own_broker, bound) -> None:
    """200: the emitter's own bound is reached first (exactly 200 accepted). 20 000 (the default):
    aiokafka's per-partition batches (one in flight, one filling) fill first; that wait is bounded by
    send_timeout_s too (it used to take request_timeout_ms and raise a plain EmitError)."""
    timeout = 1.0
    settings = await _settings(own_broker, max_in_flight=bound, send_timeout_s=timeout)
    accepted: list[str] = []
    async with TraceEmitter(settings) as em:
        accepted.append((await em.emit_step(trace_id="warm", task_id="k", seq=0, step=STEP)).event_id)
        await em.flush()  # connected, metadata known
        own_broker.pause()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            seq = 1
            t0 = time.monotonic()
            with pytest.raises(BackpressureTimeout):
                while time.monotonic() - t0 < 30:
                    t1 = time.monotonic()
                    ev = await em.emit_step(trace_id="bp", task_id="k", seq=seq, step=STEP)
                    accepted.append(ev.event_id)
                    seq += 1
                    assert len(em._pending) <= bound
            waited = time.monotonic() - t0
            assert time.monotonic() - t1 < timeout + 2, "the blocked call waited about send_timeout_s"
            held = len(accepted) - 1
            if bound == 200:
                assert held == bound, "accepted exactly the in-flight bound, then blocked"
            else:
                assert 0 < held < bound
            peak_first = tracemalloc.get_traced_memory()[1] - base
            # more attempts while paused: each waits about the timeout and raises; nothing more is held
            for _ in range(2):
                t1 = time.monotonic()
                with pytest.raises(BackpressureTimeout):
                    await em.emit_step(trace_id="bp", task_id="k", seq=seq, step=STEP)
                assert timeout * 0.9 <= time.monotonic() - t1 < timeout + 2
                assert len(em._pending) == held
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
            own_broker.resume()  # before the emitter's close flushes
        print(f"\npaused (max_in_flight={bound}): {held} accepted, raised after {waited:.2f}s; traced peak "
              f"{peak / 1e6:.2f} MB (after the first timeout {peak_first / 1e6:.2f} MB)")
        assert peak < 8 * 1024 * held  # a few KiB per event held, however long the pause
        assert peak < peak_first + 256 * 1024  # and it does not grow with more attempts
        await em.flush()
        assert em.failed == 0  # nothing accepted failed (the refused calls raised, nothing was sent)
    got = await _read_ids(settings)
    assert set(got) == set(accepted) and all(n == 1 for n in got.values()), "delivered exactly once"


async def test_sync_emitter_blocks_then_raises(own_broker) -> None:
    bound, timeout = 200, 1.0
    settings = await _settings(own_broker, max_in_flight=bound, send_timeout_s=timeout)
    accepted: list[str] = []

    def work() -> float:
        with SyncTraceEmitter(settings) as em:
            accepted.append(em.emit_step(trace_id="warm", task_id="k", seq=0, step=STEP).event_id)
            em.flush()
            own_broker.pause()
            t0 = time.monotonic()
            try:
                with pytest.raises(BackpressureTimeout):
                    for seq in range(1, 10 * bound):
                        accepted.append(em.emit_step(trace_id="bp", task_id="k", seq=seq, step=STEP).event_id)
                        assert em.emitter.in_flight <= bound
                waited = time.monotonic() - t0
            finally:
                own_broker.resume()
            em.flush()
            return waited

    waited = await asyncio.to_thread(work)
    assert len(accepted) - 1 == bound and waited < timeout + 5
    got = await _read_ids(settings)
    assert set(got) == set(accepted) and all(n == 1 for n in got.values())


async def test_broker_paused_15s_loses_nothing(own_broker) -> None:
    settings = await _settings(own_broker, max_in_flight=1000, send_timeout_s=25)
    sent: list[str] = []
    async with TraceEmitter(settings) as em:
        async def produce() -> None:
            for seq in range(4000):
                sent.append((await em.emit_step(trace_id=f"t{seq % 50}", task_id="k", seq=seq, step=STEP)).event_id)
                if seq % 20 == 0:
                    await asyncio.sleep(0.1)  # ~200 events/s for ~20 s

        task = asyncio.create_task(produce())
        await asyncio.sleep(2)
        own_broker.pause()
        try:
            await asyncio.sleep(15)
            blocked_at = len(sent)
        finally:
            own_broker.resume()
        await task
        await em.flush()
        assert em.failed == 0
    print(f"\n15 s pause: {len(sent)} sent, {blocked_at} accepted when the broker came back")
    got = await _read_ids(settings)
    assert set(got) == set(sent), f"lost {len(set(sent) - set(got))}"
    assert all(n == 1 for n in got.values()), "duplicates"
