"""Where the assembler's batch work (`streams.batch_work.BatchWork`) runs: in one child process beside the
event loop (`ProcessStage`), or in the worker (`InlineStage`); `make_stage(settings)` picks by
`streams.scoring` (`auto`: the process when this process may use 2+ CPUs).

Both keep the books that let `BatchWork` hold the assembly states between batches:
- `known` — the traces whose state the work holds now; a batch carries the states of the others it names,
  looked up in `overlay` (results not yet written to the table) and then the table (`bind`);
- `forget()` after a rebalance: the work drops what it holds and the table is the truth again; the
  `references` table is sent again too (it is also sent to a new child).
Batches run one at a time, in the order submitted (an asyncio lock), each built when its turn comes, so that
it sees every state the batch before it produced.

The process (`_Child`): spawned (the worker has threads, which fork does not copy), talked to over a pipe of
which the worker holds only its own end (a death is EOF, even in the middle of a reply), ignores SIGINT (the
worker stops it) and dies with its worker. If it dies, or takes longer than `timeout_s` over a batch (it is
then killed), the batch runs again in a new one; if that fails too, this batch and all later ones run in the
worker (logged): a crash there never loses a trace, and a child that cannot live is not restarted for every
batch.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any

from stillflow.broker import die_with_parent
from stillflow.contracts import AgentTrace, Limits, set_limits
from streams.batch_work import BatchIn, BatchOut, BatchWork, Record, WorkConfig, held_keys, lookup_states
from streams.score_stage import Job, Scored
from streams.settings import StreamsSettings

__all__ = ["InlineStage", "ProcessStage", "make_stage"]

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0  # a child's imports; a batch's own bound (timeout_s) starts once it is ready


class _Stage:
    def __init__(self, config: WorkConfig) -> None:
        self.config = config
        self.known: set[str] = set()
        self.overlay: dict[str, bytes | None] = {}  # trace_id -> encoded state (None: deleted), not yet written
        self._forget_due = False
        self._seed_due = True
        self._table_value: Callable[[str], Any] = lambda key: None
        self._references: Callable[[], dict[str, int]] = dict
        self._order = asyncio.Lock()

    def bind(self, table_value: Callable[[str], Any], references: Callable[[], dict[str, int]]) -> None:
        """Where states and references come from: the assembly table's value for a key, the references table."""
        self._table_value, self._references = table_value, references

    def forget(self) -> None:
        self._forget_due = self._seed_due = True

    def written(self, states: Mapping[str, tuple[bytes, float, bool] | None]) -> None:
        """These results are in the table now: the overlay no longer needs them (unless changed since)."""
        for k, v in states.items():
            if k in self.overlay and self.overlay[k] is (None if v is None else v[0]):
                del self.overlay[k]

    def run(self, records: list[Record], *, score: bool = True) -> asyncio.Future[BatchOut]:
        return asyncio.ensure_future(self._run(records, score))

    def score(self, jobs: list[Job]) -> asyncio.Future[list[Scored]]:
        return asyncio.ensure_future(self._score(jobs))

    async def _run(self, records: list[Record], score: bool) -> BatchOut:
        async with self._order:
            keys = held_keys(records)

            def build(fresh: bool) -> BatchIn:
                # the requests are taken here, not after the call: a rebalance while it runs asks again
                forget, self._forget_due = fresh or self._forget_due, False
                if forget:
                    self.known.clear()
                return BatchIn(records, lookup_states(keys, self.known, self._table_value, self.overlay),
                               forget=forget, references=self._seed(fresh), score=score)

            batch, out = await self._call_run(build)
            self.known |= batch.states.keys()
            for k, v in out.states.items():
                if v is None:
                    self.known.discard(k)
                    self.overlay[k] = None
                else:
                    self.known.add(k)
                    self.overlay[k] = v[0]
            return out

    async def _score(self, jobs: list[Job]) -> list[Scored]:
        if not jobs:
            return []
        async with self._order:
            return await self._call_score(jobs, self._seed)

    def _seed(self, fresh: bool) -> dict[str, int] | None:
        """The references table, when the work is new or a rebalance asked for it since it was last sent."""
        due, self._seed_due = fresh or self._seed_due, False
        return self._references() if due else None

    async def _call_run(self, build: Callable[[bool], BatchIn]) -> tuple[BatchIn, BatchOut]:
        raise NotImplementedError

    async def _call_score(self, jobs: list[Job], seed: Callable[[bool], dict[str, int] | None]) -> list[Scored]:
        raise NotImplementedError

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


class InlineStage(_Stage):
    """The batch work in this process (one core, or `streams.scoring=inline`)."""

    def __init__(self, config: WorkConfig) -> None:
        super().__init__(config)
        self.work = BatchWork(config)

    async def _call_run(self, build: Callable[[bool], BatchIn]) -> tuple[BatchIn, BatchOut]:
        batch = build(False)
        return batch, self.work.run(batch)

    async def _call_score(self, jobs: list[Job], seed: Callable[[bool], dict[str, int] | None]) -> list[Scored]:
        return self.work.score(jobs, seed(False))


_child: BatchWork | None = None


def _child_init(config: WorkConfig, parent: int) -> None:
    global _child
    # Ctrl-C reaches the whole process group: the worker stops its child itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker killed with -9 closes nothing: the child must not stay behind
    die_with_parent()
    if os.getppid() != parent:  # the worker died before the line above
        os._exit(0)
    set_limits(Limits(*config.scoring.limits))
    _child = BatchWork(config)


def _the_child() -> BatchWork:
    if _child is None:
        raise RuntimeError("the scoring process was not initialised")
    return _child


def _child_run(batch: BatchIn) -> BatchOut:
    return _the_child().run(batch)


def _child_score(refs: dict[str, int] | None, payload: list[tuple[str, int | None, float | None]]) -> list[Scored]:
    # traces go over as JSON: pickling pydantic models is slower than their JSON both ways
    return _the_child().score([Job(AgentTrace.model_validate_json(raw), ref, rq) for raw, ref, rq in payload], refs)


def _child_main(conn: Connection, config: WorkConfig, parent: int) -> None:
    """The scoring process: calls (a module function and its arguments) in, ("ok", result) or ("error", exc)
    out, one at a time, until the worker closes its end."""
    _child_init(config, parent)
    conn.send(("ready", None))  # imports done: the worker's batch timeout starts counting from here
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:
            return
        except Exception:  # a call that does not unpickle here: its bytes were read, the pipe is in step
            conn.send(("error", traceback.format_exc()))
            continue
        try:
            reply: tuple[str, Any] = ("ok", fn(*args))
        except Exception:
            # as text: an exception may pickle here and not unpickle there, and the traceback would be lost
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except Exception:  # a result that does not pickle (nothing was written)
            conn.send(("error", traceback.format_exc()))


class _ChildDied(Exception):
    pass


class ScoringProcessError(RuntimeError):
    """A call failed in the scoring process; the message ends with its traceback there."""


class _Child:
    """One spawned process and a pipe to it (spawned: the worker has threads, which fork does not copy).

    Only this end of the pipe stays open here, so the child's death reads as EOF, also in the middle of a
    message. (A ProcessPoolExecutor keeps both ends of its result pipe: a child killed while writing a large
    result left its reader waiting forever for the rest, and the interpreter then hung at exit joining it.)"""

    def __init__(self, config: WorkConfig) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_child_main, args=(theirs, config, os.getpid()), daemon=True,
                                name="stillflow-batch-work")
        self.proc.start()
        theirs.close()
        self.ready = False

    def wait_ready(self) -> None:
        """Block until the child has done its imports (blocking: run it in a thread); `_ChildDied` if it died."""
        if self.ready:
            return
        try:
            status, _ = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise _ChildDied(repr(exc)) from None
        if status != "ready":
            raise _ChildDied(f"the scoring process said {status!r} before it was ready")
        self.ready = True

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the child (blocking: run it in a thread). Raises `_ChildDied` if the child is gone."""
        try:
            self.conn.send((fn, args))
            status, value = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise _ChildDied(repr(exc)) from None
        if status == "error":
            raise ScoringProcessError(f"the scoring process failed:\n{value}")
        return value

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()  # a hung child would otherwise hold its batch forever
        self.proc.join(5)  # reaped: no zombie
        # the pipe is not closed here: a thread may still be reading it (it reads EOF now); closing its fd
        # under that thread could let a new child's pipe reuse the number. It closes with the last reference.


class ProcessStage(_Stage):
    """The batch work in one child process (see the module doc)."""

    def __init__(self, config: WorkConfig, *, timeout_s: float = 120.0) -> None:
        super().__init__(config)
        self.timeout_s = timeout_s
        self._child: _Child | None = None
        self._inline: InlineStage | None = None
        self._closed = False
        self.restarts = 0

    def _spawn(self) -> _Child:
        return _Child(self.config)

    def start(self) -> None:
        """Start the child now (its imports take a second or two), not on the first batch."""
        if self._child is None and self._inline is None and not self._closed:
            self._child = self._spawn()

    async def _in_child(self, fn: Callable[..., Any], make_args: Callable[[bool], tuple[Any, ...]]) -> Any:
        """`fn(*make_args(fresh))` in the child, again in a new child if it dies or hangs; None: it could not."""
        for attempt in (1, 2):
            if self._closed:  # the worker is stopping: no new child; the batch's records were not acked
                raise asyncio.CancelledError("the scoring process was closed")
            if self._inline is not None:
                return None
            fresh = self._child is None
            if fresh:
                self._child = self._spawn()
            child = self._child
            args = make_args(fresh)
            starting = True
            try:
                # its start (imports: seconds on a loaded machine) has its own bound, not the batch's
                await asyncio.wait_for(asyncio.to_thread(child.wait_ready), max(self.timeout_s, STARTUP_TIMEOUT_S))
                starting = False
                return args, await asyncio.wait_for(asyncio.to_thread(child.call, fn, *args), self.timeout_s)
            except (_ChildDied, TimeoutError) as exc:
                if self._closed:  # killed by close(): the worker is stopping, this is no crash
                    raise asyncio.CancelledError("the scoring process was closed") from None
                self.restarts += 1
                why = ("died" if isinstance(exc, _ChildDied) else
                       f"did not start in {max(self.timeout_s, STARTUP_TIMEOUT_S):g} s" if starting else
                       f"took over {self.timeout_s:g} s")
                log.error("the scoring process %s; %s", why,
                          "starting another" if attempt == 1 else "scoring in the worker from now on")
                self._kill()
            except BaseException:
                # cancelled (the agent stops), or failed here: the call may still be running in the child, and
                # its reply would be read as the next call's, so the next call gets a new child. (A failure the
                # child replied with leaves the pipe in step.)
                if child is self._child and not isinstance(sys.exc_info()[1], ScoringProcessError):
                    self._kill()
                raise
        self._inline = InlineStage(self.config)
        self._forget_due = self._seed_due = True  # the work in this process holds nothing yet
        return None

    async def _call_run(self, build: Callable[[bool], BatchIn]) -> tuple[BatchIn, BatchOut]:
        got = await self._in_child(_child_run, lambda fresh: (build(fresh),))
        if got is None:
            assert self._inline is not None
            return await self._inline._call_run(build)
        (batch,), out = got
        return batch, out

    async def _call_score(self, jobs: list[Job], seed: Callable[[bool], dict[str, int] | None]) -> list[Scored]:
        payload = [(j.trace.model_dump_json(), j.reference_steps, j.reasoning_quality) for j in jobs]
        got = await self._in_child(_child_score, lambda fresh: (seed(fresh), payload))
        if got is None:
            assert self._inline is not None
            return await self._inline._call_score(jobs, seed)
        return got[1]

    def _kill(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        # whatever the next call is, the next batch tells a new child the states it meets and the references
        self._forget_due = self._seed_due = True
        child.kill()

    def close(self) -> None:
        self._closed = True
        self._kill()


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity; a container's CPU quota is not seen)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def make_stage(settings: StreamsSettings) -> InlineStage | ProcessStage:
    """`streams.scoring`: `process`, `inline`, or `auto` (a process when this process may use 2+ CPUs)."""
    mode = settings.streams.scoring
    if mode == "auto":
        mode = "process" if _usable_cpus() >= 2 else "inline"
    config = WorkConfig.from_settings(settings)
    return ProcessStage(config, timeout_s=settings.streams.scoring_timeout_s) if mode == "process" \
        else InlineStage(config)
