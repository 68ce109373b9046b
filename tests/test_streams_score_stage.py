"""`score_trace`: one completed trace to what the worker publishes for it (no broker)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from sim.policies import make_policy
from sim.runner import iter_offline
from stillflow.contracts import Limits, ScoredTrace, SFTExample, decode, get_limits, set_limits
from streams.pipeline import TracePipeline
from streams.score_stage import (
    DIMENSIONS,
    Job,
    ScoringConfig,
    ScoringPool,
    ScoringStage,
    WindowBatch,
    WindowItem,
    decode_window_record,
    encode_window_record,
    make_stage,
    score_trace,
)
from streams.settings import StreamsSettings
from streams.windows import window_start_for

START = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def traces():
    return list(iter_offline(60, make_policy("teacher"), seed=11, start=START, rate=20.0))


@pytest.fixture(scope="module")
def pipeline() -> TracePipeline:
    return TracePipeline.from_settings(StreamsSettings())


def test_outputs_are_the_pipelines_encoded(traces, pipeline) -> None:
    for t in traces:
        sc = score_trace(pipeline, t, reference_steps=None, window_size_s=60)
        p = pipeline.process(t, window_start=window_start_for(t.timestamp, 60))
        assert decode(sc.scored_json, ScoredTrace) == p.scored
        assert sc.passed == p.verdict.passed and sc.rejected_by == tuple(p.verdict.rejected_by)
        assert sc.dims == tuple(getattr(p.scored.score, d) for d in DIMENSIONS)
        assert (sc.trace_id, sc.task_id, sc.timestamp) == (t.trace_id, t.task_id, t.timestamp.timestamp())
        item = WindowItem.model_validate_json(sc.item_json)
        assert item.event_time == t.timestamp and item.passed == sc.passed
        assert sc.has_example == (p.example is not None) == (sc.example_json is not None)
        assert item.example_json is None  # the example travels beside the item
        if sc.example_json is not None:
            example = decode(sc.example_json, SFTExample)
            assert example == p.example and item.example_id == example.example_id
            assert item.candidate.messages is None and item.candidate.tools == []  # sent once, in the example
            assert example.tools == p.candidate.tools
        else:
            assert item.example_id is None and item.candidate.messages == p.candidate.messages
        assert not sc.errors


def test_a_window_record_carries_items_and_examples_in_order(traces, pipeline) -> None:
    scored = [score_trace(pipeline, t) for t in traces[:12]]
    assert any(sc.has_example for sc in scored) and not all(sc.has_example for sc in scored)
    raw = encode_window_record([(sc.item_json, sc.example_json) for sc in scored])
    back = decode_window_record(raw)
    assert [item.candidate.trace_id for item, _ in back] == [sc.trace_id for sc in scored]
    assert [ex for _, ex in back] == [sc.example_json for sc in scored]
    # the examples stay byte for byte what the SFT topic gets
    for item, ex in back:
        if ex is not None:
            assert decode(ex, SFTExample).example_id == item.example_id


def test_an_older_record_with_examples_inside_its_items_still_reads(traces, pipeline) -> None:
    sc = next(sc for sc in (score_trace(pipeline, t) for t in traces) if sc.has_example)
    old = WindowItem.model_validate_json(sc.item_json).model_copy(update={"example_json": sc.example_json.decode()})
    [(item, ex)] = decode_window_record(WindowBatch(items=[old]).model_dump_json().encode())
    assert ex == sc.example_json and item.example_id == old.example_id


@pytest.mark.parametrize("cut", ["missing", "extra"])
def test_a_record_whose_examples_do_not_match_its_items_is_refused(traces, pipeline, cut) -> None:
    scored = [sc for sc in (score_trace(pipeline, t) for t in traces[:12]) if sc.has_example][:2]
    raw = encode_window_record([(sc.item_json, sc.example_json) for sc in scored])
    raw = raw.rsplit(b"\n", 1)[0] if cut == "missing" else raw + b"\n" + scored[0].example_json
    with pytest.raises(ValueError, match="window record"):
        decode_window_record(raw)


def test_the_reference_only_goes_down(traces, pipeline) -> None:
    correct = [t for t in traces if t.success and t.ground_truth and t.final_output == t.ground_truth]
    t = correct[0]
    n = len(t.steps)
    assert score_trace(pipeline, t, reference_steps=None).reference == n
    assert score_trace(pipeline, t, reference_steps=n + 3).reference == n
    assert score_trace(pipeline, t, reference_steps=1).reference == 1
    # a reference makes efficiency relative to it
    loose = score_trace(pipeline, t, reference_steps=max(1, n // 2))
    tight = score_trace(pipeline, t, reference_steps=n)
    assert loose.dims[DIMENSIONS.index("efficiency")] < tight.dims[DIMENSIONS.index("efficiency")]


def test_the_judges_reasoning_score_is_used(traces, pipeline) -> None:
    sc = score_trace(pipeline, traces[0], reasoning_quality=0.123)
    assert sc.dims[DIMENSIONS.index("reasoning_quality")] == pytest.approx(0.123)


def test_a_trace_too_big_to_publish_is_a_dead_letter_not_an_item(traces, pipeline) -> None:
    old = get_limits()
    set_limits(Limits(max_step_content_chars=old.max_step_content_chars, max_event_bytes=2_000))
    try:
        sc = score_trace(pipeline, traces[0])
    finally:
        set_limits(old)
    assert sc.scored_json is None and sc.item_json is None and not sc.has_example
    [(kind, reason)] = sc.errors
    assert kind == "oversize" and reason.startswith(f"scored trace {traces[0].trace_id}:")
    assert json.dumps(sc.dims)  # the figures are still there for the metrics


def test_window_items_keep_the_window_of_their_trace(pipeline) -> None:
    later = list(iter_offline(20, make_policy("teacher"), seed=2, start=START + timedelta(seconds=61), rate=1.0))
    scored = [sc for sc in (score_trace(pipeline, t, window_size_s=60) for t in later) if sc.has_example]
    assert scored
    for sc in scored:
        item = WindowItem.model_validate_json(sc.item_json)
        assert decode(sc.example_json, SFTExample).window_start == window_start_for(item.event_time, 60)


def _same(a: list, b: list) -> bool:
    return [{**x.__dict__, "seconds": 0} for x in a] == [{**x.__dict__, "seconds": 0} for x in b]


async def _run(stage, traces, chunk: int) -> list:
    futures = [stage.submit([Job(t) for t in traces[i:i + chunk]]) for i in range(0, len(traces), chunk)]
    return [sc for f in futures for sc in await f]


async def test_the_scoring_process_gives_what_scoring_here_gives(traces) -> None:
    config = ScoringConfig.from_settings(StreamsSettings())
    here = [score for chunk in [await ScoringStage(config).submit([Job(t) for t in traces])] for score in chunk]
    pool = ScoringPool(config)
    pool.start()
    try:
        # chunks in flight at once, none of them told the references the earlier ones set
        there = await _run(pool, traces, chunk=7)
    finally:
        pool.close()
    assert _same(here, there)
    # and both are what scoring one after another with the table's references gives
    refs: dict[str, int] = {}
    sequential = []
    for t in traces:
        sc = score_trace(ScoringConfig.from_settings(StreamsSettings()).pipeline(), t,
                         reference_steps=refs.get(t.task_id))
        if sc.reference is not None:
            refs[t.task_id] = sc.reference
        sequential.append(sc)
    assert _same(sequential, here)
    assert any(t.task_id in refs for t in traces)


async def test_a_scoring_process_that_dies_is_replaced_without_losing_a_chunk(traces) -> None:
    import os
    import signal

    pool = ScoringPool(ScoringConfig.from_settings(StreamsSettings()))
    pool.start()
    try:
        first = await pool.submit([Job(traces[0])])
        for proc in list(pool._executor._processes.values()):  # the child, as a crash would
            os.kill(proc.pid, signal.SIGKILL)
        again = await pool.submit([Job(t) for t in traces[:5]])
    finally:
        pool.close()
    assert pool.restarts == 1
    assert [sc.trace_id for sc in again] == [t.trace_id for t in traces[:5]]
    assert _same(first, again[:1])


def test_auto_scoring_is_a_process_with_two_cores(monkeypatch) -> None:
    monkeypatch.setattr("streams.score_stage._usable_cpus", lambda: 2)
    assert isinstance(make_stage(StreamsSettings()), ScoringPool)
    monkeypatch.setattr("streams.score_stage._usable_cpus", lambda: 1)
    assert isinstance(make_stage(StreamsSettings()), ScoringStage)
    monkeypatch.setenv("STILLFLOW_STREAMS__SCORING", "inline")
    monkeypatch.setattr("streams.score_stage._usable_cpus", lambda: 8)
    assert isinstance(make_stage(StreamsSettings()), ScoringStage)


async def test_a_hung_scoring_process_is_replaced(traces) -> None:
    pool = ScoringPool(ScoringConfig.from_settings(StreamsSettings()), timeout_s=1.0)
    pool.start()
    try:
        await pool.submit([Job(traces[0])])
        import os
        import signal

        for proc in list(pool._executor._processes.values()):  # as if stuck forever
            os.kill(proc.pid, signal.SIGSTOP)
        got = await pool.submit([Job(t) for t in traces[:3]])
    finally:
        pool.close()
    assert pool.restarts == 1 and [sc.trace_id for sc in got] == [t.trace_id for t in traces[:3]]


async def test_two_chunks_in_flight_when_the_process_dies_are_both_scored(traces) -> None:
    import os
    import signal

    pool = ScoringPool(ScoringConfig.from_settings(StreamsSettings()))
    pool.start()
    try:
        await pool.submit([Job(traces[0])])
        a = pool.submit([Job(t) for t in traces[:20]])
        b = pool.submit([Job(t) for t in traces[20:40]])
        await asyncio.sleep(0.05)
        for proc in list((pool._executor._processes if pool._executor else {}).values()):
            os.kill(proc.pid, signal.SIGKILL)
        got = (await a) + (await b)
    finally:
        pool.close()
    assert [sc.trace_id for sc in got] == [t.trace_id for t in traces[:40]]
    assert pool.restarts <= 1 and pool._inline is None


def test_the_scoring_process_dies_with_a_killed_worker() -> None:
    """A worker killed with -9 closes nothing; its child must not stay behind waiting on the pool's queue."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import asyncio\n"
        "from streams.settings import StreamsSettings\n"
        "from streams.score_stage import ScoringConfig, ScoringPool\n"
        "async def main():\n"
        "    pool = ScoringPool(ScoringConfig.from_settings(StreamsSettings()))\n"
        "    pool.start()\n"
        "    await pool.submit([])\n"
        "    while not pool._executor._processes:\n"
        "        await asyncio.sleep(0.05)\n"
        "    print(' '.join(str(p) for p in pool._executor._processes), flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        children = [int(x) for x in proc.stdout.readline().split()]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert children

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in children if alive(pid)]
    for pid in left:  # do not leave it behind for the rest of the run
        os.kill(pid, signal.SIGKILL)
    assert not left, "the scoring process outlived its worker"
