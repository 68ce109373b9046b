"""`stillflow dataset build`: files of recorded traces → the export layout of `streams.export`, offline (no
broker), through the stream's own functions (not a copy of them):

- rows are `AgentTrace`s as JSON, one per line (`.gz` too; `ScoredTrace` rows, a dump of the scored topic,
  give their trace); a row that does not parse is reported with its file, line and reason, counted, written
  to `unreadable.jsonl` and skipped; a row of another kind (an SFT example, a pair, a step event) says what
  it is;
- duplicates by `trace_id` are dropped (the first kept), the rest ordered by event time (stable), which is
  the order the stream would see them in, had they been sent as they happened;
- each trace is scored by `streams.score_stage.score_trace` with its task's efficiency reference carried
  from trace to trace in that order (`_Chain`: the fewest steps of the correct traces before it, as the
  stream's `references` table does); the work is shared by task among worker processes (a reference is
  per task, so each task's traces stay in one chain and in order);
- windows, pair candidates and pairs are the window agent's: `book_observe` / `merge_candidate` /
  `book_advance` per trace in event-time order, `mine_pairs` per closed window, the open ones closed at the
  end of the input as the stream does when traffic goes idle (`book_close_all`);
- out: `sft.jsonl`, `dpo.jsonl` (trl or OpenAI format, sorted by id, as `stillflow export` writes them),
  `rejected.jsonl` (trace id, gates, reasons), `unreadable.jsonl`, `dead_letters.jsonl` (what the stream
  would dead-letter: a scored trace or an example over the size limit) and `manifest.json` (counts, per gate
  too; ids; sha256 of each file; the inputs).

Not the stream's: the LLM judge is not called (the heuristic reasoning score is used; the manifest says so
when the settings enable a judge), and a row without a `trace_id` gets one derived from its content, one
without a `timestamp` the time the build started (both counted).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from stillflow.contracts import AgentTrace, Id, Limits, PreferencePair, set_limits
from stillflow.progress import Progress
from streams.export import dpo_row, jsonl_line, sft_row_of, write_jsonl, write_lines
from streams.pairs import PairCandidate, mine_pairs
from streams.score_stage import Job, ScoringConfig, WindowItem, _Chain, window_candidate
from streams.settings import StreamsSettings
from streams.windows import (
    WindowBook,
    WindowState,
    book_advance,
    book_close_all,
    book_observe,
    merge_candidate,
    window_key,
)

__all__ = ["BuildError", "BuildReport", "build_dataset", "read_rows"]

CHUNK = 250  # traces per call to a worker process
INLINE_BELOW = 2_000  # fewer traces are scored in this process: starting workers costs seconds
SHOW_PROBLEMS = 5  # unreadable rows named on stderr (all of them are in unreadable.jsonl)


class BuildError(Exception):
    """The build cannot run (no input file, nothing readable at all, an unknown format)."""


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    reason: str

    def row(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class _Row:
    order: int  # position in the input: files in the order given, lines in order
    file: str
    line: int
    trace_id: str
    task_id: str
    timestamp: datetime
    text: str  # the trace as JSON
    fill: dict[str, Any]  # fields the row lacked (trace_id, timestamp), set after parsing


class _Head(BaseModel):
    """What ordering and dedupe need, parsed without the steps' validation (the trace's own parse follows)."""

    model_config = ConfigDict(extra="ignore")

    trace_id: Id | None = None
    task_id: Id
    timestamp: datetime | None = None


def _what_else(obj: Any) -> str | None:
    """A clear word for rows that are not traces."""
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not an object: each line must be one trace (an AgentTrace)"
    if "messages" in obj and "trace_id" not in obj:
        return ("an SFT example (a dataset row), not a trace: this file is already a dataset — train on its "
                "directory with `stillflow train --from-jsonl DIR`")
    if "chosen" in obj and "rejected" in obj:
        return "a preference pair (a dataset row), not a trace"
    if "step" in obj and "seq" in obj:
        return "a trace step event, not a whole trace: give one AgentTrace per line (its steps inside)"
    return None


def _brief(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "(the row)"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _open_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if gz else path.open("rb")) as fp:
        yield from fp


def read_rows(paths: Sequence[str | Path], *, now: datetime,
              problems: list[Problem], counts: Counter[str]) -> list[_Row]:
    """Every readable trace row of `paths`, in input order; what cannot be read goes to `problems`."""
    rows: list[_Row] = []
    order = 0
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise BuildError(f"{path}: no such file")
        name = str(path)
        lineno = 0
        try:
            for lineno, raw in enumerate(_open_lines(path), 1):
                if not raw.strip():
                    continue
                counts["rows"] += 1
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    problems.append(Problem(name, lineno, f"not UTF-8 text: {exc}"))
                    continue
                row = _read_row(line, name, lineno, order, now, problems, counts)
                if row is not None:
                    rows.append(row)
                    order += 1
        except (OSError, EOFError, zlib.error) as exc:  # a truncated or corrupt .gz
            counts["rows"] += 1
            problems.append(Problem(name, lineno + 1, f"the file cannot be read from here on: {exc}"))
    return rows


def _read_row(line: str, name: str, lineno: int, order: int, now: datetime, problems: list[Problem],
              counts: Counter[str]) -> _Row | None:
    text = line.strip()
    try:
        head = _Head.model_validate_json(text)
    except ValidationError as exc:
        try:
            obj = json.loads(text)
        except ValueError as jexc:
            problems.append(Problem(name, lineno, f"not JSON: {jexc}"))
            return None
        if isinstance(obj, dict) and isinstance(obj.get("trace"), dict) and "score" in obj:
            counts["scored_rows"] += 1  # a ScoredTrace (e.g. a dump of the scored topic): its trace
            return _read_row(json.dumps(obj["trace"], ensure_ascii=False), name, lineno, order, now, problems,
                             counts)
        other = _what_else(obj)
        problems.append(Problem(name, lineno, other or f"not a trace: {_brief(exc)}"))
        return None
    fill: dict[str, Any] = {}
    trace_id = head.trace_id
    if trace_id is None:
        trace_id = f"row-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"
        fill["trace_id"] = trace_id
        counts["derived_trace_ids"] += 1
    ts = head.timestamp
    if ts is None:
        ts = now
        fill["timestamp"] = now
        counts["timestamps_filled"] += 1
    elif ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)  # as the contract reads a naive time
    return _Row(order, name, lineno, trace_id, head.task_id, ts, text, fill)


# ---- scoring (in worker processes, or here) ----

@dataclass(frozen=True)
class _Out:
    """What the parent needs of one scored trace (small: it crosses a pipe)."""

    trace_id: str
    task_id: str
    passed: bool
    rejected_by: tuple[str, ...]
    reasons: tuple[str, ...]  # the gates' reasons (redacted), for a rejected trace
    overall: float
    redactions: dict[str, int]
    item: WindowItem | None  # None: the scored trace could not be encoded (a dead letter, no window item)
    candidate: PairCandidate | None  # the item's, with its messages (`window_candidate`)
    sft_line: str | None  # the SFT example's row as sft.jsonl holds it
    errors: tuple[tuple[str, str], ...]


_chain: _Chain | None = None


def _init_worker(config: ScoringConfig) -> None:
    global _chain
    set_limits(Limits(*config.limits))
    _chain = _Chain(config, config.pipeline())


def _score_rows(chain: _Chain, rows: list[tuple[int, str, dict[str, Any]]], refs: dict[str, int]
                ) -> tuple[list[tuple[int, _Out | str]], dict[str, int]]:
    """Parse and score `rows` (position, text, fill) in order with `refs` carried; returns each row's `_Out`
    or the reason it does not parse, by position, and the references after them."""
    chain.refs = refs
    out: list[tuple[int, _Out | str]] = []
    jobs: list[tuple[int, Job]] = []
    for order, text, fill in rows:
        try:
            trace = AgentTrace.model_validate_json(text)
        except ValidationError as exc:
            out.append((order, _what_else(json.loads(text)) or f"not a valid trace: {_brief(exc)}"))
            continue
        if fill:
            trace = trace.model_copy(update=fill)
        jobs.append((order, Job(trace)))
    for (order, _), s in zip(jobs, chain.run([j for _, j in jobs]), strict=True):
        # what the window agent does with the stream's records, read back here (in parallel, not in the parent)
        item = WindowItem.model_validate_json(s.item_json) if s.item_json is not None else None
        example = json.loads(s.example_json) if s.example_json is not None else None
        line = None
        if item is not None and example is not None and item.example_id is not None:
            line = jsonl_line(sft_row_of(example["messages"], example.get("tools") or [], "trl"))  # same in both
        cand = window_candidate(item, example) if item is not None else None
        out.append((order, _Out(s.trace_id, s.task_id, s.passed, s.rejected_by, s.reasons, s.dims[-1],
                                s.redactions, item, cand, line, s.errors)))
    out.sort(key=lambda x: x[0])
    return out, chain.refs


def _worker_score(rows: list[tuple[int, str, dict[str, Any]]], refs: dict[str, int]
                  ) -> tuple[list[tuple[int, _Out | str]], dict[str, int]]:
    assert _chain is not None, "worker not initialised"
    return _score_rows(_chain, rows, refs)


def _shard_of(task_id: str, n: int) -> int:
    return zlib.crc32(task_id.encode("utf-8", "surrogatepass")) % n


def _scored_in_order(rows: list[_Row], config: ScoringConfig, workers: int
                     ) -> Iterator[tuple[_Row, _Out | str]]:
    """Each row with its result, in the order of `rows`; the scoring itself in `workers` processes (by task)."""
    if workers <= 1:
        chain = _Chain(config, config.pipeline())
        refs: dict[str, int] = {}
        for start in range(0, len(rows), CHUNK):
            part = [(start + j, r.text, r.fill) for j, r in enumerate(rows[start:start + CHUNK])]
            results, refs = _score_rows(chain, part, refs)
            for i, res in results:
                yield rows[i], res
        return
    shards: list[list[int]] = [[] for _ in range(workers)]  # positions in `rows`, in order
    for i, r in enumerate(rows):
        shards[_shard_of(r.task_id, workers)].append(i)
    done: dict[int, _Out | str] = {}
    next_i = 0
    # fork when this process runs no other thread: the workers start with the imports and caches done here (a
    # spawned one spends about a CPU second on them); with threads, spawn (a fork copies only this one, and a
    # lock another thread held would stay locked in the child)
    alone = threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if alone else "spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(config,)) as pool:
        cursor = [0] * workers
        shard_refs: list[dict[str, int]] = [{} for _ in range(workers)]
        running: dict[Future[Any], int] = {}

        def submit(k: int) -> None:
            part = shards[k][cursor[k]:cursor[k] + CHUNK]
            if part:
                cursor[k] += len(part)
                payload = [(i, rows[i].text, rows[i].fill) for i in part]
                running[pool.submit(_worker_score, payload, shard_refs[k])] = k

        for k in range(workers):
            submit(k)
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                k = running.pop(fut)
                try:
                    results, shard_refs[k] = fut.result()
                except BrokenProcessPool as exc:  # killed (out of memory?): say so, not a traceback
                    raise BuildError(f"a scoring process died ({exc}); nothing was written. Run again, or with "
                                     f"--workers 1 to score in one process") from None
                submit(k)  # a shard's chunks one after another: its references carry over
                done.update(results)
            while next_i in done:
                yield rows[next_i], done.pop(next_i)
                next_i += 1


# ---- the build ----

@dataclass
class BuildReport:
    out_dir: Path
    fmt: str
    counts: Counter[str] = field(default_factory=Counter)
    rejected_by_gate: Counter[str] = field(default_factory=Counter)
    redactions: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        c = self.counts
        gates = ", ".join(f"{g} {n}" for g, n in sorted(self.rejected_by_gate.items())) or "none"
        return (f"built {c['sft']} SFT examples and {c['dpo']} preference pairs ({self.fmt}) in {self.out_dir} from "
                f"{c['traces']} traces ({c['passed']} passed, {c['rejected']} rejected: {gates}); "
                f"{c['unreadable']} unreadable rows, {c['duplicates']} duplicates dropped, "
                f"{c['dead_letters']} dead letters; {self.seconds:.1f} s")


def build_dataset(paths: Sequence[str | Path], out_dir: str | Path, *, fmt: str = "trl",
                  settings: StreamsSettings | None = None, workers: int | None = None,
                  progress: bool = True, log: Callable[[str], None] | None = None) -> BuildReport:
    """Build the dataset of the trace files `paths` into `out_dir` (see the module doc)."""
    t0 = time.monotonic()
    if fmt not in ("trl", "openai"):
        raise BuildError(f"unknown format {fmt!r}: trl or openai")
    if not paths:
        raise BuildError("no input: pass --from FILE (one or more)")
    say = log or (lambda _msg: None)
    settings = settings or StreamsSettings()
    settings.limits.apply()  # the stream's limits: a record it would refuse is refused here
    s = settings.streams
    out = Path(out_dir)
    report = BuildReport(out_dir=out, fmt=fmt)
    c = report.counts
    now = datetime.now(UTC)
    rows = read_rows(paths, now=now, problems=report.problems, counts=c)
    # dedupe by trace id (the first kept), then event-time order (stable: input order among equal times)
    seen: set[str] = set()
    unique: list[_Row] = []
    for r in rows:
        if r.trace_id in seen:
            c["duplicates"] += 1
        else:
            seen.add(r.trace_id)
            unique.append(r)
    unique.sort(key=lambda r: r.timestamp)
    if not unique and report.problems:
        _write_problems(out, report)
        raise BuildError(f"no readable trace in {len(report.problems)} rows; the first: {report.problems[0]} "
                         f"(all in {out / 'unreadable.jsonl'})")
    if not unique:
        raise BuildError(f"no trace in {', '.join(str(p) for p in paths)}: the input is empty")
    if s.judge.enabled:
        report.notes.append("the LLM judge of the settings is not called offline: reasoning quality is the "
                            "heuristic's")
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    n_workers = max(1, min(n_workers, 8))
    if workers is None and len(unique) < INLINE_BELOW:
        n_workers = 1
    config = ScoringConfig.from_settings(settings)  # with the limits applied above (the workers get them too)

    book = WindowBook()
    candidates: dict[str, list[PairCandidate]] = {}  # c:<window key>:<task> -> candidates, as the stream keys them
    examples: dict[str, str] = {}  # example id -> its row in sft.jsonl
    pairs: dict[str, PreferencePair] = {}
    rejected: list[dict[str, Any]] = []
    letters: list[dict[str, Any]] = []

    def close(closing: list[tuple[WindowState, list[str]]]) -> None:
        for w, tasks in closing:
            wkey = window_key(w.start)
            cands = [x for t in tasks for x in candidates.pop(f"c:{wkey}:{t}", [])]
            for pair in mine_pairs(cands, min_gap=s.pair_min_gap, require_chosen_passed=s.pair_require_chosen_passed,
                                   window_start=w.start):
                pairs.setdefault(pair.pair_id, pair)
            c["windows"] += 1

    bar = Progress(len(unique), "traces scored", enabled=progress)
    say(f"scoring {len(unique)} traces ({c['duplicates']} duplicates dropped, {len(report.problems)} unreadable "
        f"rows) in {n_workers} process{'es' if n_workers > 1 else ''}")
    for i, (row, res) in enumerate(_scored_in_order(unique, config, n_workers), 1):
        bar.update(i)
        if isinstance(res, str):
            report.problems.append(Problem(row.file, row.line, res))
            continue
        c["traces"] += 1
        report.redactions.update(res.redactions)
        for kind, reason in res.errors:
            letters.append({"trace_id": res.trace_id, "kind": kind, "reason": reason})
        if res.passed:
            c["passed"] += 1
        else:
            c["rejected"] += 1
            report.rejected_by_gate.update(res.rejected_by)
            rejected.append({"trace_id": res.trace_id, "task_id": res.task_id, "gates": list(res.rejected_by),
                             "reasons": list(res.reasons), "overall": res.overall, "file": row.file,
                             "line": row.line})
        item, cand = res.item, res.candidate
        if item is None or cand is None:  # the stream dead-letters the trace: no window item, no example
            continue
        entry = book_observe(book, item.event_time, task_id=cand.task_id, size_s=s.window_size_s,
                             passed=item.passed, sft=res.sft_line is not None, max_tasks=s.max_tasks_per_window)
        c["late"] += entry.late
        if entry.keep_candidate:
            ckey = f"c:{entry.window_key}:{cand.task_id}"
            candidates[ckey], _ = merge_candidate(candidates.get(ckey, []), cand, s.max_candidates_per_task)
        if res.sft_line is not None and item.example_id is not None:
            examples.setdefault(item.example_id, res.sft_line)
        book, closing = book_advance(entry.book, item.event_time, grace_s=s.window_grace_s, now=now,
                                     max_ahead_s=s.max_clock_skew_s)
        close(closing)
    bar.finish()
    book, closing = book_close_all(book, grace_s=s.window_grace_s)  # the input ended: as when traffic goes idle
    close(closing)
    file_pos = {str(Path(p)): i for i, p in reversed(list(enumerate(paths)))}
    report.problems.sort(key=lambda p: (file_pos.get(p.file, len(file_pos)), p.line))  # as they are in the input
    c["unreadable"] = len(report.problems)
    c["dead_letters"] = len(letters)
    c["passed_without_example"] = c["passed"] - len(examples)

    dpo_rows = [dpo_row(pairs[k], fmt) for k in sorted(pairs)]
    c["sft"], c["dpo"] = len(examples), len(dpo_rows)
    out.mkdir(parents=True, exist_ok=True)
    report.files["sft.jsonl"] = write_lines(out / "sft.jsonl", [examples[k] for k in sorted(examples)])
    report.files["dpo.jsonl"] = write_jsonl(out / "dpo.jsonl", dpo_rows)
    report.files["rejected.jsonl"] = write_jsonl(out / "rejected.jsonl", rejected)
    report.files["dead_letters.jsonl"] = write_jsonl(out / "dead_letters.jsonl", letters)
    _write_problems(out, report)
    report.seconds = time.monotonic() - t0
    manifest = {
        "format": fmt,
        "built_by": "stillflow dataset build",
        "built_at": now.isoformat(),
        "inputs": [{"path": str(p), "sha256": _sha256_file(Path(p))} for p in paths],
        "counts": {
            "rows": c["rows"], "unreadable": c["unreadable"], "duplicates_dropped": c["duplicates"],
            "traces": c["traces"], "passed": c["passed"], "rejected": c["rejected"], "sft": c["sft"],
            "dpo": c["dpo"], "passed_without_example": c["passed_without_example"],
            "dead_letters": c["dead_letters"], "windows": c["windows"], "late": c["late"],
            "scored_rows_unwrapped": c["scored_rows"], "derived_trace_ids": c["derived_trace_ids"],
            "timestamps_filled": c["timestamps_filled"],
        },
        "rejected_by_gate": dict(sorted(report.rejected_by_gate.items())),
        "redactions": dict(sorted(report.redactions.items())),
        "references": "carried per task in event-time order: the fewest steps of the correct traces before it",
        "notes": report.notes,
        "sha256": report.files,
        "sft_ids": sorted(examples),
        "pair_ids": sorted(pairs),
        "seconds": round(report.seconds, 2),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return report


def _write_problems(out: Path, report: BuildReport) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report.files["unreadable.jsonl"] = write_jsonl(out / "unreadable.jsonl", [p.row() for p in report.problems])


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fp:
        for block in iter(lambda: fp.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
