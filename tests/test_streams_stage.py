"""`streams.stage`: the batch work in a child process or in the worker, states handed over between batches,
and a child that dies or hangs (no broker)."""

from __future__ import annotations

import asyncio
import os
import random
import signal

import pytest

from streams.batch_work import WorkConfig
from streams.score_stage import Job
from streams.settings import StreamsSettings
from streams.stage import InlineStage, ProcessStage, make_stage
from tests.helpers import teacher_traces
from tests.test_streams_batch_work import _same, records_of


@pytest.fixture(scope="module")
def traces():
    return teacher_traces(60, seed=11)


@pytest.fixture(scope="module")
def records(traces):
    out = [r for t in traces for r in records_of(t)]
    random.Random(7).shuffle(out)  # traces interleaved: most of them span several batches
    return out


def config() -> WorkConfig:
    return WorkConfig.from_settings(StreamsSettings())


class _App:
    """What the streams app does with a stage: a table it writes each result to once it is finished."""

    def __init__(self, stage) -> None:
        self.stage = stage
        self.table: dict[str, bytes] = {}
        self.refs: dict[str, int] = {}
        stage.bind(self.table.get, lambda: dict(self.refs))

    def finish(self, out) -> None:
        for k, v in out.states.items():
            if v is None:
                self.table.pop(k, None)
            else:
                self.table[k] = v[0]
        for sc in out.scored:
            if sc.reference is not None:
                self.refs[sc.task_id] = min(sc.reference, self.refs.get(sc.task_id, sc.reference))
        self.stage.written(out.states)


async def _run_all(app: _App, records, chunk: int, in_flight: int = 2, between=None) -> list:
    """Batches submitted ahead of their finishing, as the app holds one while it takes the next."""
    futures = [app.stage.run(records[i:i + chunk]) for i in range(0, len(records), chunk)]
    scored = []
    for n, f in enumerate(futures):
        out = await f
        app.finish(out)
        scored += out.scored
        if between is not None:
            await between(n)
    return scored


async def test_the_process_gives_what_the_worker_gives(records) -> None:
    here = await _run_all(_App(InlineStage(config())), records, chunk=23)
    stage = ProcessStage(config())
    stage.start()
    try:
        there = await _run_all(_App(stage), records, chunk=23)
    finally:
        stage.close()
    assert len(here) == 60 and _same(here, there)


def _kill_child(stage: ProcessStage, sig: int = signal.SIGKILL) -> None:
    if stage._child is not None:
        os.kill(stage._child.proc.pid, sig)


async def test_a_child_that_dies_is_replaced_and_given_the_states_it_held(records) -> None:
    here = await _run_all(_App(InlineStage(config())), records, chunk=23)
    stage = ProcessStage(config())
    stage.start()

    async def kill(n: int) -> None:
        if n == 3:
            _kill_child(stage)

    try:
        there = await _run_all(_App(stage), records, chunk=23, between=kill)
    finally:
        stage.close()
    assert stage.restarts == 1 and stage._inline is None
    assert _same(here, there)  # nothing lost, nothing twice, the same references


async def test_after_forget_the_table_is_the_truth(records, traces) -> None:
    app = _App(InlineStage(config()))
    half = len(records) // 2
    scored = await _run_all(app, records[:half], chunk=50)
    app.stage.work.states.clear()  # as if the work had lost what it held: only the table has it now
    app.stage.forget()
    scored += await _run_all(app, records[half:], chunk=50)
    assert sorted(sc.trace_id for sc in scored) == sorted(t.trace_id for t in traces)


async def test_a_hung_child_is_replaced(records) -> None:
    stage = ProcessStage(config(), timeout_s=1.0)
    stage.start()
    app = _App(stage)
    try:
        app.finish(await stage.run(records[:10]))
        _kill_child(stage, signal.SIGSTOP)  # as if stuck forever
        app.finish(await stage.run(records[10:]))
    finally:
        stage.close()
    assert stage.restarts == 1 and len(app.table) == 60


async def test_two_batches_in_flight_when_the_child_dies_are_both_done(records, traces) -> None:
    stage = ProcessStage(config())
    stage.start()
    app = _App(stage)
    try:
        app.finish(first := await stage.run(records[:5]))
        a = stage.run(records[5:200])
        b = stage.run(records[200:])
        await asyncio.sleep(0.05)
        _kill_child(stage)
        outs = [first, await a, await b]
    finally:
        stage.close()
    assert sorted(sc.trace_id for o in outs for sc in o.scored) == sorted(t.trace_id for t in traces)
    assert stage.restarts <= 1 and stage._inline is None


async def test_a_child_that_cannot_live_leaves_the_work_to_the_worker(records, monkeypatch) -> None:
    stage = ProcessStage(config())
    app = _App(stage)
    done = 0
    app.finish(out := await stage.run(records[:100]))
    done += out.completed
    monkeypatch.setattr(stage, "_spawn", lambda: _BrokenChild())
    _kill_child(stage)
    for i in range(100, len(records), 100):
        app.finish(out := await stage.run(records[i:i + 100]))
        done += out.completed
    stage.close()
    assert stage._inline is not None and stage.restarts == 2 and done == 60


class _BrokenChild:
    """A scoring process that dies before it answers anything."""

    def wait_ready(self) -> None:
        from streams.stage import _ChildDied

        raise _ChildDied("cannot start")

    def call(self, fn, *args):
        from streams.stage import _ChildDied

        raise _ChildDied("cannot start")

    def kill(self) -> None:
        pass


async def test_judged_traces_are_scored_in_order_with_the_references(traces, records) -> None:
    stage = ProcessStage(config())
    try:
        out = await stage.run(records, score=False)
        assert out.scored == [] and len(out.traces) == 60
        scored = await stage.score([Job(t, None, 0.5) for t in out.traces])
    finally:
        stage.close()
    here = (await InlineStage(config()).run(records)).scored
    assert [sc.trace_id for sc in scored] == [sc.trace_id for sc in here]
    assert [sc.reference for sc in scored] == [sc.reference for sc in here]


def test_auto_is_a_process_with_two_cores(monkeypatch) -> None:
    monkeypatch.setattr("streams.stage._usable_cpus", lambda: 2)
    assert isinstance(make_stage(StreamsSettings()), ProcessStage)
    monkeypatch.setattr("streams.stage._usable_cpus", lambda: 1)
    assert isinstance(make_stage(StreamsSettings()), InlineStage)
    monkeypatch.setenv("STILLFLOW_STREAMS__SCORING", "inline")
    monkeypatch.setattr("streams.stage._usable_cpus", lambda: 8)
    assert isinstance(make_stage(StreamsSettings()), InlineStage)


def test_the_child_dies_with_a_killed_worker() -> None:
    """A worker killed with -9 closes nothing; its child must not stay behind waiting on the pool's queue."""
    import subprocess
    import sys
    import time

    code = (
        "import asyncio\n"
        "from streams.settings import StreamsSettings\n"
        "from streams.batch_work import WorkConfig\n"
        "from streams.stage import ProcessStage\n"
        "async def main():\n"
        "    stage = ProcessStage(WorkConfig.from_settings(StreamsSettings()))\n"
        "    stage.start()\n"
        "    await stage.run([])\n"
        "    print(stage._child.proc.pid, flush=True)\n"
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


async def test_a_rebalance_while_a_batch_runs_is_not_lost(records) -> None:
    stage = ProcessStage(config())
    stage.start()
    try:
        await stage.run(records[:5])
        assert not stage._forget_due and not stage._seed_due  # both taken by the first batch
        running = stage.run(records[5:400])
        await asyncio.sleep(0.02)  # built and handed over
        stage.forget()
        await running
        assert stage._forget_due and stage._seed_due  # the next batch forgets and gets the references
    finally:
        stage.close()


async def test_a_child_that_dies_while_judged_traces_are_scored_leaves_no_trace_behind(records, traces) -> None:
    """The LLM judge's path: a batch assembled unscored, then its traces scored; the child dies in between.
    The new child is told the states of the traces it meets next, so open traces still complete."""
    stage = ProcessStage(config())
    stage.start()
    app = _App(stage)
    scored = []
    killed = False
    try:
        for i in range(0, len(records), 40):
            out = await stage.run(records[i:i + 40], score=False)
            app.finish(out)
            if i >= 80 and out.traces and not killed:  # the score call meets the dead child
                _kill_child(stage)
                killed = True
            scored += await stage.score([Job(t) for t in out.traces])
    finally:
        stage.close()
    assert stage.restarts == 1
    assert sorted(sc.trace_id for sc in scored) == sorted(t.trace_id for t in traces)


async def test_a_closed_stage_starts_no_child(records) -> None:
    stage = ProcessStage(config())
    stage.start()
    stage.close()
    with pytest.raises(asyncio.CancelledError):
        await stage.run(records[:5])
    assert stage._child is None


def _die_in_the_middle_of_a_reply() -> None:
    """Run in the scoring process: start a large reply, then die before its end."""
    import gc
    import struct
    from multiprocessing.connection import Connection

    for conn in [o for o in gc.get_objects() if isinstance(o, Connection) and not o.closed]:
        os.write(conn.fileno(), struct.pack("!i", 1 << 20) + b"only the first bytes")
    os._exit(1)


async def test_a_child_that_dies_in_the_middle_of_a_reply_is_seen_dead_at_once() -> None:
    stage = ProcessStage(config(), timeout_s=600)  # only the death itself can end the wait in time
    stage.start()
    try:
        got = await asyncio.wait_for(stage._in_child(_die_in_the_middle_of_a_reply, lambda fresh: ()), 60)
    finally:
        stage.close()
    assert got is None and stage.restarts == 2 and stage._inline is not None  # twice, then in the worker


def _fail_there() -> None:
    from stillflow.contracts import ContractError

    raise ContractError("schema", "an error whose class does not unpickle from its args")


async def test_a_failure_in_the_child_comes_back_with_its_traceback_and_the_child_lives_on() -> None:
    from streams.stage import ScoringProcessError

    stage = ProcessStage(config())
    stage.start()
    try:
        with pytest.raises(ScoringProcessError, match="ContractError"):
            await stage._in_child(_fail_there, lambda fresh: ())
        pid = stage._child.proc.pid
        assert (await stage._in_child(os.getpid, lambda fresh: ()))[1] == pid  # same child, pipe in step
    finally:
        stage.close()
    assert stage.restarts == 0


async def test_a_cancelled_call_does_not_leave_its_reply_for_the_next_one() -> None:
    import time

    stage = ProcessStage(config())
    stage.start()
    try:
        call = asyncio.ensure_future(stage._in_child(time.sleep, lambda fresh: (1.0,)))
        await asyncio.sleep(0.2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        (_, pid) = await stage._in_child(os.getpid, lambda fresh: ())
        assert pid == stage._child.proc.pid  # a new child answered, not the sleep's reply
    finally:
        stage.close()


async def test_close_during_a_call_is_a_stop_not_a_crash(records) -> None:
    stage = ProcessStage(config())
    stage.start()
    running = stage.run(records)
    await asyncio.sleep(0.05)
    stage.close()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert stage.restarts == 0 and stage._inline is None and stage._child is None
