"""The assembler's scoring stage: completed traces in, what the app publishes for them out.

- `score_trace(pipeline, trace, ...)` — one trace through `TracePipeline` (score, gate, format, redact)
  and encoded for its topics: the `ScoredTrace` bytes, the window item, the SFT example's bytes, the
  figures for the metrics and the task's reference after it, as a picklable `Scored`. Pure: the faust
  agent only publishes what it returns.
- `ScoringPool` — scores chunks in one child process, so that scoring (about half of the worker's own
  CPU per trace) runs on another core while the event loop assembles the next batch; `ScoringStage`
  does it in this process. `make_stage(settings)` picks by `streams.scoring` (`auto`: the process when
  the machine has 2+ cores). In the ingest bench on 2 cores (broker, bench and worker on the same two)
  the process made rounds ~7% shorter (1.02 vs 1.10 s).
- `WindowItem` / `WindowBatch` / `encode_window_record` / `decode_window_record` — what the assembler
  tells the window agent (its internal topic).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from stillflow.broker import die_with_parent
from stillflow.contracts import AgentTrace, ContractError, Limits, encode, get_limits, set_limits
from stillflow.quality.scoring import next_reference
from stillflow.quality.settings import QualitySettings
from streams.pairs import PairCandidate
from streams.pipeline import TracePipeline
from streams.settings import StreamsSettings
from streams.windows import window_start_for

__all__ = [
    "DIMENSIONS",
    "Job",
    "Scored",
    "ScoringConfig",
    "ScoringPool",
    "ScoringStage",
    "WindowBatch",
    "WindowItem",
    "decode_window_record",
    "encode_window_record",
    "make_stage",
    "score_trace",
]

log = logging.getLogger(__name__)
_MAX_REMEMBERED = 65_536  # tasks whose reference a stage carries over (then it starts again)
DIMENSIONS = ("correctness", "efficiency", "tool_selection", "safety", "reasoning_quality", "overall")


class WindowItem(BaseModel):
    """What the assembling agent tells the window agent about one scored trace. Private to the streams app
    (its internal topic), not a contract between services."""

    event_time: datetime  # the trace's, which is also its SFT example's
    passed: bool
    example_id: str | None = None  # set when the trace has an SFT example (it travels beside the item)
    example_json: str | None = None  # records written before examples travelled beside the items
    candidate: PairCandidate  # without messages and tools when there is an example (they are in it)


class WindowBatch(BaseModel):
    """The window items of one assembler batch, in one record: one send, one window-agent event and one
    book write per batch instead of per trace (a hop through faust costs about a no-op event)."""

    items: list[WindowItem]


def encode_window_record(items: list[tuple[str, bytes | None]]) -> bytes:
    """One window record: the items (JSON) on the first line, then each SFT example as encoded for its
    topic, one per line, in the order of the items that have one. The window agent forwards the examples
    without parsing them (as JSON strings inside the items they had to be escaped and unescaped: a fifth
    of the window agent's time). Encoded JSON has no raw newline."""
    head = b'{"items":[' + ",".join(raw for raw, _ in items).encode() + b"]}"
    return b"\n".join([head, *(ex for _, ex in items if ex is not None)])


def decode_window_record(raw: bytes) -> list[tuple[WindowItem, bytes | None]]:
    """The items of a window record with their SFT examples. Raises ValueError for a malformed record."""
    head, sep, rest = raw.partition(b"\n")
    batch = WindowBatch.model_validate_json(head)
    examples = iter(rest.split(b"\n") if sep else [])
    out: list[tuple[WindowItem, bytes | None]] = []
    for item in batch.items:
        if item.example_json is not None:
            out.append((item, item.example_json.encode()))
        elif item.example_id is not None:
            ex = next(examples, None)
            if ex is None:
                raise ValueError(f"window record: the example of {item.example_id} is missing")
            out.append((item, ex))
        else:
            out.append((item, None))
    if next(examples, None) is not None:
        raise ValueError("window record: more examples than items that have one")
    return out


@dataclass(frozen=True)
class Scored:
    """Everything the app does with one scored trace, without the trace itself."""

    trace_id: str
    task_id: str
    timestamp: float  # the trace's event time, epoch seconds
    passed: bool
    rejected_by: tuple[str, ...]
    dims: tuple[float, ...]  # in DIMENSIONS order
    redactions: dict[str, int]
    reference: int | None  # the task's reference after this trace
    scored_json: bytes | None  # None: it could not be encoded (see errors); no window item then
    item_json: str | None
    example_json: bytes | None  # the SFT example as encoded for its topic
    errors: tuple[tuple[str, str], ...] = ()  # (kind, reason) for the DLQ
    seconds: float = 0.0  # time spent scoring it

    @property
    def has_example(self) -> bool:
        return self.example_json is not None


def score_trace(pipeline: TracePipeline, trace: AgentTrace, *, reference_steps: int | None = None,
                reasoning_quality: float | None = None, window_size_s: float = 60.0) -> Scored:
    """Score, gate, format and redact `trace`, and encode what is published for it."""
    t0 = time.perf_counter()
    wstart = window_start_for(trace.timestamp, window_size_s)
    p = pipeline.process(trace, reference_steps=reference_steps, reasoning_quality=reasoning_quality,
                         window_start=wstart)
    score = p.scored.score
    base = {
        "trace_id": trace.trace_id, "task_id": trace.task_id, "timestamp": trace.timestamp.timestamp(),
        "passed": p.verdict.passed, "rejected_by": tuple(p.verdict.rejected_by),
        "dims": tuple(float(getattr(score, d)) for d in DIMENSIONS), "redactions": dict(p.redactions),
        "reference": next_reference(reference_steps, trace, correct=p.assessment.correct),
    }
    try:
        scored_json = encode(p.scored)
    except ContractError as exc:  # a trace near the size limit plus its score can pass it
        return Scored(**base, scored_json=None, item_json=None, example_json=None,
                      errors=((exc.kind, f"scored trace {trace.trace_id}: {exc.message}"),),
                      seconds=time.perf_counter() - t0)
    errors: list[tuple[str, str]] = []
    example_json: bytes | None = None
    cand = p.candidate
    if p.example is not None:
        try:
            example_json = encode(p.example)
        except ContractError as exc:  # the redacted conversation alone over the size limit
            errors.append((exc.kind, f"SFT example of {trace.trace_id}: {exc.message}"))
        else:
            # the window agent reads them back from the example (when it keeps the candidate)
            cand = cand.model_copy(update={"messages": None, "tools": []})
    item = WindowItem(event_time=trace.timestamp, passed=p.verdict.passed, candidate=cand,
                      example_id=p.example.example_id if example_json is not None else None)
    return Scored(**base, scored_json=scored_json, item_json=item.model_dump_json(), example_json=example_json,
                  errors=tuple(errors), seconds=time.perf_counter() - t0)


# -- running it: in this process, or in one child process beside the event loop ---------------------


@dataclass(frozen=True)
class ScoringConfig:
    """What scoring needs from the settings, in a form a child process can be given."""

    quality: dict[str, Any]
    redact_pii: bool
    redact_scored: bool
    window_size_s: float
    limits: tuple[int, int]  # the contract limits (encode refuses larger records)

    @classmethod
    def from_settings(cls, settings: StreamsSettings) -> ScoringConfig:
        lim = get_limits()
        return cls(quality=settings.quality.model_dump(), redact_pii=settings.streams.redact_pii,
                   redact_scored=settings.streams.redact_scored, window_size_s=settings.streams.window_size_s,
                   limits=(lim.max_step_content_chars, lim.max_event_bytes))

    def pipeline(self) -> TracePipeline:
        return TracePipeline.from_quality(QualitySettings.model_validate(self.quality), redact=self.redact_pii,
                                          redact_scored=self.redact_scored)


@dataclass(frozen=True)
class Job:
    """One completed trace to score: its task's reference as the table had it when the trace was handed
    over, and the LLM judge's reasoning score when there is a judge."""

    trace: AgentTrace
    reference_steps: int | None = None
    reasoning_quality: float | None = None


@dataclass
class _Chain:
    """Scores jobs in order and remembers each task's reference from trace to trace: a trace handed over
    before the previous ones were published sees what they lowered it to (a reference only goes down, so
    the lower of the table's value and this one is what scoring one after another would have used)."""

    config: ScoringConfig
    pipeline: TracePipeline
    refs: dict[str, int] = field(default_factory=dict)

    def run(self, jobs: list[Job]) -> list[Scored]:
        out = []
        for job in jobs:
            task = job.trace.task_id
            known = self.refs.get(task)
            ref = known if job.reference_steps is None else (
                job.reference_steps if known is None else min(known, job.reference_steps))
            s = score_trace(self.pipeline, job.trace, reference_steps=ref, reasoning_quality=job.reasoning_quality,
                            window_size_s=self.config.window_size_s)
            if s.reference is not None:
                if len(self.refs) >= _MAX_REMEMBERED and task not in self.refs:
                    self.refs.clear()  # the table keeps every value; only the carrying over starts again
                self.refs[task] = s.reference
            out.append(s)
        return out


class ScoringStage:
    """Scores in this process (one core, or `streams.scoring=inline`): `submit` returns a finished future."""

    def __init__(self, config: ScoringConfig) -> None:
        self.config = config
        self._chain = _Chain(config, config.pipeline())

    def start(self) -> None:
        pass

    def submit(self, jobs: list[Job]) -> asyncio.Future[list[Scored]]:
        fut: asyncio.Future[list[Scored]] = asyncio.get_running_loop().create_future()
        fut.set_result(self._chain.run(jobs))
        return fut

    def close(self) -> None:
        pass


_child: _Chain | None = None


def _child_init(config: ScoringConfig, parent: int) -> None:
    global _child
    # Ctrl-C reaches the whole process group: the worker stops its child itself (closing the pool)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker killed with -9 closes nothing: without this its child would wait on the pool's queue forever
    # (it holds a write end of that pipe itself, so it never reads EOF).
    die_with_parent()
    if os.getppid() != parent:  # the worker died before the line above
        os._exit(0)
    set_limits(Limits(*config.limits))
    _child = _Chain(config, config.pipeline())


def _child_run(payload: list[tuple[str, int | None, float | None]]) -> list[Scored]:
    if _child is None:
        raise RuntimeError("the scoring process was not initialised")
    return _child.run([Job(AgentTrace.model_validate_json(raw), ref, rq) for raw, ref, rq in payload])


def _child_ping() -> bool:
    return _child is not None


class ScoringPool:
    """Scores in one child process (spawned: the worker has threads, which fork does not copy), so that
    scoring runs beside the event loop; chunks are taken in order, which keeps `_Chain`'s references right.

    Traces go over as JSON and come back as `Scored`; one chunk at a time. If the child dies, or takes
    longer than `timeout_s` over a chunk (it is then killed), the chunk is scored again in a new one; if that
    fails too, this chunk and all later ones are scored in the worker (logged): a crash there never loses a
    trace, and a child that cannot live is not restarted for every chunk."""

    def __init__(self, config: ScoringConfig, *, timeout_s: float = 120.0) -> None:
        self.config = config
        self.timeout_s = timeout_s
        self._executor: ProcessPoolExecutor | None = None
        self._inline: ScoringStage | None = None
        self._one_at_a_time = asyncio.Lock()  # chunks in order, and one executor torn down once
        self.restarts = 0

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_child_init, initargs=(self.config, os.getpid()))

    def start(self) -> None:
        """Start the child now (its imports take a second or two), not on the first chunk."""
        if self._executor is None and self._inline is None:
            self._executor = self._new_executor()
            self._executor.submit(_child_ping)

    def submit(self, jobs: list[Job]) -> asyncio.Future[list[Scored]]:
        return asyncio.ensure_future(self._score(jobs))

    async def _score(self, jobs: list[Job]) -> list[Scored]:
        if not jobs:
            return []
        payload = [(j.trace.model_dump_json(), j.reference_steps, j.reasoning_quality) for j in jobs]
        async with self._one_at_a_time:
            loop = asyncio.get_running_loop()
            for attempt in (1, 2):
                if self._inline is not None:
                    break
                if self._executor is None:
                    self._executor = self._new_executor()
                try:
                    return await asyncio.wait_for(loop.run_in_executor(self._executor, _child_run, payload),
                                                  self.timeout_s)
                except (BrokenProcessPool, TimeoutError) as exc:
                    self.restarts += 1
                    why = "died" if isinstance(exc, BrokenProcessPool) else f"took over {self.timeout_s:g} s"
                    log.error("the scoring process %s; %s", why,
                              "starting another" if attempt == 1 else "scoring in the worker from now on")
                    self._kill()
            if self._inline is None:
                self._inline = ScoringStage(self.config)
            return self._inline._chain.run(jobs)

    def _kill(self) -> None:
        ex, self._executor = self._executor, None
        if ex is None:
            return
        for proc in list((getattr(ex, "_processes", None) or {}).values()):
            if proc.is_alive():
                proc.kill()  # a hung child would otherwise hold the pool (and its chunk) forever
        ex.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._kill()


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity; a container's CPU quota is not seen)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def make_stage(settings: StreamsSettings) -> ScoringStage | ScoringPool:
    """`streams.scoring`: `process`, `inline`, or `auto` (a process when the machine has 2+ cores)."""
    mode = settings.streams.scoring
    if mode == "auto":
        mode = "process" if _usable_cpus() >= 2 else "inline"
    config = ScoringConfig.from_settings(settings)
    return ScoringPool(config, timeout_s=settings.streams.scoring_timeout_s) if mode == "process" \
        else ScoringStage(config)
