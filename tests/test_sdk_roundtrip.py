"""The SDK through the real broker: nothing lost, nothing altered, per-trace order kept."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from stillflow.contracts import TraceOutcomeEvent, TraceStepEvent, decode
from stillflow.sdk import SyncTraceEmitter, TraceEmitter
from tests.helpers import make_trace, read_topics

pytestmark = pytest.mark.integration

N_TRACES, N_STEPS = 200, 50


def _check_roundtrip(traces, records, settings) -> None:
    steps: dict[str, list[tuple[int, int, TraceStepEvent]]] = defaultdict(list)
    outcomes: dict[str, TraceOutcomeEvent] = {}
    for rec in records:
        if rec.topic == settings.topics.trace_steps:
            ev = decode(rec.value, TraceStepEvent)
            assert rec.key.decode() == ev.trace_id
            assert rec.timestamp == int(ev.timestamp.timestamp() * 1000)  # record time = event time
            steps[ev.trace_id].append((rec.partition, rec.offset, ev))
        else:
            ev = decode(rec.value, TraceOutcomeEvent)
            assert ev.trace_id not in outcomes, "an outcome arrived twice"
            outcomes[ev.trace_id] = ev
    assert len(outcomes) == len(traces)
    for trace in traces:
        got = steps[trace.trace_id]
        assert len({p for p, _, _ in got}) == 1, "one trace's steps span partitions"
        got.sort(key=lambda t: t[1])
        # Offset order == emission order == seq order, and every step is unchanged.
        assert [ev.seq for _, _, ev in got] == list(range(len(trace.steps)))
        assert [ev.step for _, _, ev in got] == trace.steps
        assert outcomes[trace.trace_id].to_trace([ev.step for _, _, ev in got]) == trace


async def test_async_emitter_roundtrip(settings) -> None:
    traces = [make_trace(i, N_STEPS) for i in range(N_TRACES)]
    async with TraceEmitter(settings) as em:
        for trace in traces:
            await em.emit_trace(trace)
        await em.flush()
        assert em.sent == N_TRACES * (N_STEPS + 1) and em.failed == 0
    records = await read_topics(
        settings, [settings.topics.trace_steps, settings.topics.trace_outcomes],
        expected=N_TRACES * (N_STEPS + 1),
    )
    assert len(records) == N_TRACES * (N_STEPS + 1)
    _check_roundtrip(traces, records, settings)


async def test_sync_facade_roundtrip(settings) -> None:
    traces = [make_trace(i, N_STEPS) for i in range(N_TRACES)]

    def emit_all() -> None:
        with SyncTraceEmitter(settings) as em:
            for trace in traces:
                em.emit_trace(trace)
            em.flush()

    await asyncio.to_thread(emit_all)  # a sync agent lives outside any event loop
    records = await read_topics(
        settings, [settings.topics.trace_steps, settings.topics.trace_outcomes],
        expected=N_TRACES * (N_STEPS + 1),
    )
    assert len(records) == N_TRACES * (N_STEPS + 1)
    _check_roundtrip(traces, records, settings)


async def test_steps_in_outcome_is_one_event(settings) -> None:
    trace = make_trace(1, 7)
    async with TraceEmitter(settings) as em:
        await em.emit_trace(trace, steps_in_outcome=True)
    records = await read_topics(settings, [settings.topics.trace_steps, settings.topics.trace_outcomes], expected=1)
    assert len(records) == 1
    outcome = decode(records[0].value, TraceOutcomeEvent)
    assert outcome.steps == trace.steps and outcome.n_steps == 7
