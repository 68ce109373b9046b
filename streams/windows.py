"""Event-time tumbling windows with a grace period, closed by the watermark.

Exports:
- `window_start_for(ts, size_s)`, `window_end_for(start, size_s)`, `window_key(start)` (the table
  key: epoch seconds as a string), `window_id_for(start)` (`w-<epoch-seconds>`);
- `WindowState` — one window's bookkeeping (counts; the offset ranges per topic-partition of what
  it wrote, set at close); a pydantic model;
- `Watermark` — the max event time seen and the watermark (max event time − grace);
- `observe(state, event_time, *, mark, size_s, passed, sft)` → `ObserveResult` (late events are
  reported, not dropped silently), `is_late(mark, event_time, size_s)`;
- `advance_watermark(mark, event_time, *, grace_s, windows, ...)` → (new mark, windows now closed);
  `count_late(mark)`;
- `to_closed_event(state, n_pairs=...)` → `DatasetWindowClosed` (id and event time deterministic);
- `WindowBook` — the mark, the open windows and, per window, the tasks with pair candidates, in one
  table value (so a restart rebuilds it from the changelog); `book_observe(book, ...)` →
  `BookEntry`, `book_advance(book, ...)` → (new book, closed windows with their task ids);
- `merge_candidate(candidates, cand, max_per_task)` — one task's bounded pair candidates (the app
  keeps them under their own table keys, and mines them with `streams.pairs` at close).

Why not faust's windowed tables: their expiry runs on wall-clock time and is not rebuilt after a
restart. Here a window [start, start + size) closes when the watermark reaches its end; an event
whose window already closed is late. Each window is returned by `advance_watermark` exactly once
(it comes back with `closed=True`: store that, or delete the key). Counts are at-least-once: a
redelivered trace may be counted twice (dataset records themselves are deduplicated by id).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from stillflow.contracts import DatasetWindowClosed, OffsetRange
from streams.pairs import PairCandidate
from streams.tables import TableModel

__all__ = [
    "window_start_for",
    "window_end_for",
    "window_key",
    "window_id_for",
    "WindowState",
    "Watermark",
    "ObserveResult",
    "is_late",
    "observe",
    "advance_watermark",
    "count_late",
    "to_closed_event",
    "WindowBook",
    "BookEntry",
    "book_observe",
    "book_advance",
    "book_close_all",
    "merge_candidate",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_LEGACY_FIELDS = frozenset({"candidates", "n_candidates_dropped"})  # removed from WindowState


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _size_ms(size_s: float) -> int:
    ms = round(size_s * 1000)
    if ms <= 0:
        raise ValueError(f"window size must be at least 1 ms, got {size_s} s")
    return ms


def _epoch_ms(ts: datetime) -> int:
    return (_aware(ts) - _EPOCH) // _MS


def window_start_for(ts: datetime, size_s: float) -> datetime:
    """The start of the tumbling window of `size_s` seconds (aligned on the epoch) holding `ts`."""
    ms = _epoch_ms(ts)
    size = _size_ms(size_s)
    return _EPOCH + timedelta(milliseconds=ms - ms % size)


def window_end_for(start: datetime, size_s: float) -> datetime:
    return _aware(start) + timedelta(milliseconds=_size_ms(size_s))


def _epoch_label(start: datetime) -> str:
    ms = _epoch_ms(start)
    sec, rem = divmod(ms, 1000)
    return str(sec) if rem == 0 else f"{sec}.{rem:03d}"


def window_key(start: datetime) -> str:
    """The table key of the window starting at `start`: epoch seconds (`1700000040`)."""
    return _epoch_label(start)


def window_id_for(start: datetime) -> str:
    """`w-<epoch-seconds>` (with `.mmm` when the start is not on a whole second)."""
    return f"w-{_epoch_label(start)}"


class WindowState(TableModel):
    """One window's bookkeeping."""

    model_config = ConfigDict(extra="forbid")

    start: datetime
    end: datetime
    n_traces: int = 0
    n_passed: int = 0
    n_sft: int = 0
    n_pairs: int = 0
    offsets: dict[str, OffsetRange] = Field(default_factory=dict)  # "topic:partition" -> range
    closed: bool = False
    sft_by_workload: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_fields(cls, data: Any) -> Any:
        # Books written before these fields went hold them (always empty: candidates live under their
        # own keys), so a restart from an older changelog still loads.
        if isinstance(data, dict) and _LEGACY_FIELDS & data.keys():
            data = {k: v for k, v in data.items() if k not in _LEGACY_FIELDS}
        return data


class Watermark(TableModel):
    """The event-time progress of one stream (one per table / worker partition)."""

    model_config = ConfigDict(extra="forbid")

    max_event_time: datetime | None = None
    watermark: datetime | None = None
    n_late: int = 0


@dataclass(frozen=True)
class ObserveResult:
    state: WindowState | None  # the window's new state (unchanged when late)
    window_start: datetime
    late: bool = False  # the event's window already closed: count it, dead-letter it, or re-route it


def is_late(mark: Watermark, event_time: datetime, size_s: float) -> bool:
    """True when the window of `event_time` ends at or before the watermark (it is closed)."""
    if mark.watermark is None:
        return False
    return window_end_for(window_start_for(event_time, size_s), size_s) <= mark.watermark


def observe(
    state: WindowState | None,
    event_time: datetime,
    *,
    mark: Watermark,
    size_s: float,
    passed: bool = False,
    sft: bool = False,
    workload: str | None = None,
) -> ObserveResult:
    """Count one scored trace in its window (created when `state` is None).

    `passed`: it passed every gate; `sft`: an SFT example was written for it (counted under `workload` too).
    A late event leaves `state` unchanged and comes back with `late=True`.
    """
    start = window_start_for(event_time, size_s)
    if state is not None and _aware(state.start) != start:
        raise ValueError(
            f"event at {event_time.isoformat()} belongs to window {start.isoformat()}, not {state.start.isoformat()}"
        )
    if is_late(mark, event_time, size_s) or (state is not None and state.closed):
        return ObserveResult(state=state, window_start=start, late=True)
    if state is None:
        state = WindowState(start=start, end=window_end_for(start, size_s))
    update: dict[str, Any] = {
        "n_traces": state.n_traces + 1,
        "n_passed": state.n_passed + int(passed),
        "n_sft": state.n_sft + int(sft),
    }
    if sft and workload is not None:
        update["sft_by_workload"] = {**state.sft_by_workload, workload: state.sft_by_workload.get(workload, 0) + 1}
    new = state.model_copy(update=update)
    return ObserveResult(state=new, window_start=start)


def advance_watermark(
    mark: Watermark,
    event_time: datetime | None,
    *,
    grace_s: float,
    windows: Iterable[WindowState],
    now: datetime | None = None,
    max_ahead_s: float | None = None,
) -> tuple[Watermark, list[WindowState]]:
    """Move the watermark to (max event time − grace) and close every open window that ends at or
    before it. Returns the new mark and the windows now closed (`closed=True`, oldest first).

    `event_time` None just re-checks `windows` (e.g. after a restart). With `now` and `max_ahead_s`
    an event time further than `max_ahead_s` past `now` (a skewed producer clock) advances the
    watermark only to `now + max_ahead_s`, so one bad clock cannot close every window.
    """
    max_t = mark.max_event_time
    if event_time is not None:
        t = _aware(event_time)
        if now is not None and max_ahead_s is not None:
            t = min(t, _aware(now) + timedelta(seconds=max_ahead_s))
        max_t = t if max_t is None else max(_aware(max_t), t)
    wm = mark.watermark
    if max_t is not None:
        candidate_wm = max_t - timedelta(seconds=grace_s)
        wm = candidate_wm if wm is None else max(_aware(wm), candidate_wm)
    new_mark = mark.model_copy(update={"max_event_time": max_t, "watermark": wm})
    if wm is None:
        return new_mark, []
    closing = sorted((w for w in windows if not w.closed and _aware(w.end) <= wm), key=lambda w: w.start)
    return new_mark, [w.model_copy(update={"closed": True}) for w in closing]


def count_late(mark: Watermark, n: int = 1) -> Watermark:
    """The mark with `n` more late events counted."""
    return mark.model_copy(update={"n_late": mark.n_late + n})


def to_closed_event(state: WindowState, *, n_pairs: int | None = None) -> DatasetWindowClosed:
    """The `DatasetWindowClosed` event: id `w-<epoch-seconds>` (also the event id), event time = end."""
    wid = window_id_for(state.start)
    return DatasetWindowClosed(
        event_id=wid,
        timestamp=state.end,
        window_id=wid,
        window_start=state.start,
        window_end=state.end,
        n_traces=state.n_traces,
        n_passed=state.n_passed,
        n_sft=state.n_sft,
        n_pairs=state.n_pairs if n_pairs is None else n_pairs,
        offsets=sorted(state.offsets.values(), key=lambda o: (o.topic, o.partition)),
        sft_by_workload=dict(state.sft_by_workload),
    )


# ---------------------------------------------------------------------------------------------
# The window book: everything the window agent keeps but the pair candidates, in one table value
# (one changelog write per trace instead of three, and no table scans per trace).


class WindowBook(TableModel):
    """The watermark, the open windows (closed ones are dropped: the watermark alone says an event is
    late) and, per open window, the tasks whose pair candidates are kept under their own keys."""

    model_config = ConfigDict(extra="forbid")

    mark: Watermark = Field(default_factory=Watermark)
    windows: dict[str, WindowState] = Field(default_factory=dict)  # window_key -> state
    tasks: dict[str, list[str]] = Field(default_factory=dict)  # window_key -> task ids with candidates


@dataclass(frozen=True)
class BookEntry:
    book: WindowBook
    window_key: str
    keep_candidate: bool  # False: the window already keeps candidates for max_tasks other tasks
    late: bool  # its own window had closed: counted in the window holding the watermark instead


def book_observe(
    book: WindowBook,
    event_time: datetime,
    *,
    task_id: str,
    size_s: float,
    passed: bool,
    sft: bool,
    max_tasks: int,
    workload: str | None = None,
) -> BookEntry:
    """Count one scored trace. A late one goes to the window that holds the watermark (the next to
    close, never a closed one), so that nothing counted is lost."""
    mark = book.mark
    late = is_late(mark, event_time, size_s)
    if late:
        assert mark.watermark is not None
        event_time = mark.watermark
        mark = count_late(mark)
    start = window_start_for(event_time, size_s)
    wkey = window_key(start)
    res = observe(book.windows.get(wkey), event_time, mark=mark, size_s=size_s, passed=passed, sft=sft,
                  workload=workload)
    assert res.state is not None and not res.late
    windows = dict(book.windows)
    windows[wkey] = res.state
    tasks = book.tasks
    known = tasks.get(wkey, [])
    keep = task_id in known or len(known) < max_tasks
    if keep and task_id not in known:
        tasks = dict(tasks)
        tasks[wkey] = [*known, task_id]
    new = book.model_copy(update={"mark": mark, "windows": windows, "tasks": tasks})
    return BookEntry(book=new, window_key=wkey, keep_candidate=keep, late=late)


def book_advance(
    book: WindowBook,
    event_time: datetime | None,
    *,
    grace_s: float,
    now: datetime | None = None,
    max_ahead_s: float | None = None,
) -> tuple[WindowBook, list[tuple[WindowState, list[str]]]]:
    """Move the watermark; return the book without the windows that closed, and those windows
    (`closed=True`, oldest first) each with its candidate task ids."""
    mark, closing = advance_watermark(book.mark, event_time, grace_s=grace_s, windows=book.windows.values(),
                                      now=now, max_ahead_s=max_ahead_s)
    if not closing:
        return book.model_copy(update={"mark": mark}), []
    gone = {window_key(w.start) for w in closing}
    out = [(w, book.tasks.get(window_key(w.start), [])) for w in closing]
    new = book.model_copy(update={
        "mark": mark,
        "windows": {k: v for k, v in book.windows.items() if k not in gone},
        "tasks": {k: v for k, v in book.tasks.items() if k not in gone},
    })
    return new, out


def book_close_all(book: WindowBook, *, grace_s: float) -> tuple[WindowBook, list[tuple[WindowState, list[str]]]]:
    """Close every open window (the traffic went idle, or the input ended): the watermark moves past the newest
    window's end. Returns what `book_advance` returns."""
    if not book.windows:
        return book, []
    newest_end = max(w.end for w in book.windows.values())
    return book_advance(book, newest_end + timedelta(seconds=grace_s), grace_s=grace_s)


def merge_candidate(
    candidates: list[PairCandidate], cand: PairCandidate, max_per_task: int
) -> tuple[list[PairCandidate], int]:
    """One task's candidates with `cand` added (a redelivered trace replaces itself); over the bound,
    one from the middle of the ranking is dropped (the extremes make the pairs). Returns the list and
    how many were dropped."""
    out = [c for c in candidates if c.trace_id != cand.trace_id] + [cand]
    if len(out) <= max_per_task:
        return out, 0
    out.sort(key=lambda c: (-c.overall, c.trace_id))
    del out[len(out) // 2]
    return out, 1
