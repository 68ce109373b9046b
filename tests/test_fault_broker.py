"""Fault: the broker paused (SIGSTOP) for 15 s and resumed (issue 8).

A broker of the test's own (SIGSTOP on the session broker would stall every other test), a real
streams worker (`stillflow streams`, short session timeouts) and an SDK emitter sending sim teacher
traces before, during and after the pause (the emits during it wait in the SDK, within its send
timeout). After SIGCONT the worker carries on by itself (no restart, nothing to repair); every trace
emitted is scored exactly once after dedupe by trace id (scored records are at-least-once), every
passing trace is one SFT record after dedupe by `example_id` (redeliveries identical), nothing else
appears, and the worker is still running.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from sim.policies import make_policy
from sim.runner import iter_offline
from stillflow.broker import EmbeddedBroker
from stillflow.contracts import ScoredTrace, SFTExample, decode
from stillflow.kafka import ensure_topics, read_to_end, with_bootstrap
from stillflow.sdk import TraceEmitter
from stillflow.settings import KafkaSettings, SDKSettings, StillflowSettings, TopicNames
from tests.streams_worker import StreamsWorker, streams_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]

PAUSE_S = 15.0




async def _read(settings: StillflowSettings, topic: str, model):  # type: ignore[no-untyped-def]
    return [decode(v, model) for v in await read_to_end(settings, topic)]


async def test_broker_paused_15s_services_carry_on_nothing_lost_or_duplicated(own_broker: EmbeddedBroker,
                                                                               tmp_path) -> None:
    settings = with_bootstrap(StillflowSettings(
        kafka=KafkaSettings(session_timeout_ms=6000, heartbeat_interval_ms=1000, request_timeout_ms=30_000),
        topics=TopicNames().with_prefix(f"fb{uuid.uuid4().hex[:8]}."),
        sdk=SDKSettings(send_timeout_s=30),  # emits during the pause wait for the broker, not fail
    ), own_broker.bootstrap_servers)
    await ensure_topics(settings)
    start = datetime.now(UTC) - timedelta(seconds=20)
    # more than are sent: the producer goes on at ~10 traces/s until 20 went after the resume (the worker's
    # start, before the pause, takes as long as the machine needs)
    traces = list(iter_offline(600, make_policy("teacher"), seed=21, start=start, rate=10.0))
    worker = StreamsWorker(streams_env(settings, f"fb-{uuid.uuid4().hex[:8]}"), tmp_path / "worker.log").start()
    loop = asyncio.get_running_loop()
    try:
        async with TraceEmitter(settings) as em:
            sent_at: dict[str, float] = {}

            resumed: list[float] = []

            async def produce() -> None:  # ~10 traces/s until 20 were sent after the resume
                after = 0
                for t in traces:
                    await em.emit_trace(t)
                    sent_at[t.trace_id] = time.monotonic()
                    after += bool(resumed and sent_at[t.trace_id] > resumed[0])
                    if after >= 20:
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError("ran out of traces before 20 were sent after the resume")

            # before: the worker is up and scoring
            producing = asyncio.create_task(produce())
            deadline = loop.time() + 60
            while loop.time() < deadline:
                if len(await read_to_end(settings, settings.topics.traces_scored)) >= 10:
                    break
                await asyncio.sleep(0.5)
            else:
                raise AssertionError(f"the worker scored nothing before the pause\n{worker.log()[-3000:]}")
            own_broker.pause()
            t_pause = time.monotonic()
            try:
                await asyncio.sleep(PAUSE_S)
            finally:
                own_broker.resume()
                t_resume = time.monotonic()
                resumed.append(t_resume)
            await producing
            await em.flush()
            assert em.failed == 0
        during = [tid for tid, t in sent_at.items() if t_pause <= t <= t_resume]
        after = [tid for tid, t in sent_at.items() if t > t_resume]
        before = len(sent_at) - len(during) - len(after)
        assert before and after, (before, len(during), len(after))

        ids = set(sent_at)
        deadline = loop.time() + 120
        scored: list[ScoredTrace] = []
        while loop.time() < deadline:
            scored = await _read(settings, settings.topics.traces_scored, ScoredTrace)
            if ids <= {s.trace.trace_id for s in scored}:
                break
            await asyncio.sleep(1)
        t_caught_up = time.monotonic()
        got = Counter(s.trace.trace_id for s in scored)
        assert set(got) == ids, (f"missing {len(ids - set(got))}, unexpected {len(set(got) - ids)}\n"
                                 f"{worker.log()[-3000:]}")
        latest = {s.trace.trace_id: s for s in scored}
        passing = {tid for tid, s in latest.items() if s.passed}
        # SFT records follow the scored ones (the window agent): wait for every passing trace
        deadline = loop.time() + 60
        sft: list[SFTExample] = []
        while loop.time() < deadline:
            sft = await _read(settings, settings.topics.dataset_sft, SFTExample)
            if {e.trace_id for e in sft} >= passing:
                break
            await asyncio.sleep(1)
        unique = {e.example_id: e for e in sft}
        assert {e.trace_id for e in unique.values()} == passing
        assert len(unique) == len(passing)
        for e in sft:
            assert e.messages == unique[e.example_id].messages, "a redelivered record is identical"
        assert worker.alive(), worker.log()[-3000:]
        print(f"\nbroker paused {PAUSE_S:.0f} s: {len(sent_at)} traces ({before} before, {len(during)} during, "
              f"{len(after)} after); all scored {t_caught_up - t_resume:.1f} s after SIGCONT; scored records "
              f"{len(scored)} ({len(scored) - len(got)} redelivered), SFT records {len(sft)} for {len(passing)} "
              f"passing traces ({len(sft) - len(unique)} redelivered)")
    finally:
        own_broker.resume()
        assert worker.stop() == 0 or worker.log()
