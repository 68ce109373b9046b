"""Event-time tumbling windows: alignment, grace, watermark closing, late events, restart."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from stillflow.contracts import DatasetWindowClosed, OffsetRange, decode, encode
from streams.pairs import PairCandidate, mine_pairs
from streams.windows import (
    Watermark,
    WindowBook,
    WindowState,
    advance_watermark,
    book_advance,
    book_observe,
    count_late,
    is_late,
    merge_candidate,
    observe,
    to_closed_event,
    window_end_for,
    window_id_for,
    window_key,
    window_start_for,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # epoch 1772366400, a multiple of 60
SIZE, GRACE = 60.0, 10.0
MARK_KEY = "__watermark__"  # where the test's stand-in table keeps the watermark


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Stream:
    """The wiring a faust agent does, over a dict standing in for the table."""

    def __init__(self, size: float = SIZE, grace: float = GRACE) -> None:
        self.size, self.grace = size, grace
        self.table: dict[str, Any] = {}
        self.closed: list[WindowState] = []
        self.late: list[datetime] = []

    @property
    def mark(self) -> Watermark:
        return Watermark.model_validate(self.table.get(MARK_KEY, {}))

    def windows(self) -> list[WindowState]:
        return [WindowState.model_validate(v) for k, v in self.table.items() if k != MARK_KEY]

    def event(self, ts: datetime, **obs: Any) -> bool:
        mark = self.mark
        key = window_key(window_start_for(ts, self.size))
        cur = self.table.get(key)
        res = observe(WindowState.model_validate(cur) if cur else None, ts, mark=mark, size_s=self.size, **obs)
        if res.late:
            self.late.append(ts)
            mark = count_late(mark)
        else:
            assert res.state is not None
            self.table[key] = res.state.model_dump(mode="json")
        mark, closing = advance_watermark(mark, ts, grace_s=self.grace, windows=self.windows())
        self.table[MARK_KEY] = mark.model_dump(mode="json")
        for w in closing:
            self.closed.append(w)
            del self.table[window_key(w.start)]
        return res.late


# ----------------------------------------------------------------------------- alignment


def test_window_start_and_ids() -> None:
    assert window_start_for(at(0), 60) == T0
    assert window_start_for(at(59.999), 60) == T0
    assert window_start_for(at(60), 60) == at(60)
    assert window_start_for(at(61.5), 0.5) == at(61.5)
    assert window_start_for(at(61.7), 0.5) == at(61.5)
    assert window_end_for(T0, 60) == at(60)
    # naive = UTC; other zones are converted
    assert window_start_for(datetime(2026, 3, 1, 12, 0, 30), 60) == T0
    cet = timezone(timedelta(hours=1))
    assert window_start_for(datetime(2026, 3, 1, 13, 0, 30, tzinfo=cet), 60) == T0
    assert window_key(T0) == "1772366400"
    assert window_id_for(T0) == "w-1772366400"
    assert window_id_for(at(0.5)) == "w-1772366400.500"
    with pytest.raises(ValueError):
        window_start_for(T0, 0)


# ----------------------------------------------------------------------------- observe


def _cand(tid: str, overall: float, task: str = "task-1", **kw: Any) -> PairCandidate:
    return PairCandidate(trace_id=tid, task_id=task, overall=overall, timestamp=T0, **kw)


def test_observe_counts() -> None:
    mark = Watermark()
    r1 = observe(None, at(1), mark=mark, size_s=SIZE, passed=True, sft=True)
    r2 = observe(r1.state, at(2), mark=mark, size_s=SIZE, passed=False)
    r3 = observe(r2.state, at(3), mark=mark, size_s=SIZE, passed=True, sft=True)
    s = r3.state
    assert s is not None and not r3.late
    assert (s.n_traces, s.n_passed, s.n_sft, s.n_pairs) == (3, 2, 2, 0)
    assert s.start == T0 and s.end == at(60) and s.offsets == {} and not s.closed
    assert r1.state is not None and r1.state.n_traces == 1  # states are not mutated


def test_observe_refuses_a_state_of_another_window() -> None:
    s = observe(None, at(1), mark=Watermark(), size_s=SIZE).state
    with pytest.raises(ValueError):
        observe(s, at(61), mark=Watermark(), size_s=SIZE)


class BookStream:
    """The wiring of the app's window agent (`_window_item` / `_close`): the book, and each task's
    pair candidates under their own key `c:<window key>:<task>`, bounded by `merge_candidate`."""

    def __init__(self, max_tasks: int = 256, max_per_task: int = 4) -> None:
        self.max_tasks, self.max_per_task = max_tasks, max_per_task
        self.book = WindowBook()
        self.cands: dict[str, list[PairCandidate]] = {}
        self.dropped = 0  # candidates not kept: too many tasks, or evicted from a full task
        self.closed: list[tuple[WindowState, list[PairCandidate]]] = []

    def event(self, ts: datetime, cand: PairCandidate, *, passed: bool = False, sft: bool = False) -> bool:
        e = book_observe(self.book, ts, task_id=cand.task_id, size_s=SIZE, passed=passed, sft=sft,
                         max_tasks=self.max_tasks)
        if e.keep_candidate:
            key = f"c:{e.window_key}:{cand.task_id}"
            self.cands[key], dropped = merge_candidate(self.cands.get(key, []), cand, self.max_per_task)
            self.dropped += dropped
        else:
            self.dropped += 1
        self.book, closing = book_advance(e.book, ts, grace_s=GRACE)
        for w, tasks in closing:
            keys = [f"c:{window_key(w.start)}:{task}" for task in tasks]
            self.closed.append((w, [c for k in keys for c in self.cands.pop(k, [])]))
        return e.late


def test_candidates_are_bounded_per_task_and_per_window() -> None:
    st = BookStream(max_tasks=2, max_per_task=3)
    key = f"c:{window_key(T0)}:task-1"
    for i, score in enumerate([0.9, 0.1, 0.5, 0.6, 0.4, 0.95]):
        st.event(at(1), _cand(f"t{i}", score))
    kept = sorted(c.overall for c in st.cands[key])
    assert len(kept) == 3 and kept[0] == 0.1 and kept[-1] == 0.95  # the extremes survive
    assert st.dropped == 3
    # a redelivered trace replaces itself
    st.event(at(2), _cand("t1", 0.1))
    assert len(st.cands[key]) == 3 and st.dropped == 3
    # too many tasks: new tasks are not kept (but their traces are counted)
    for i in range(3):
        st.event(at(3), _cand(f"x{i}", 0.5, task=f"other-{i}"))
    assert sorted(st.cands) == [f"c:{window_key(T0)}:other-0", key]
    assert st.book.tasks[window_key(T0)] == ["task-1", "other-0"]
    assert st.dropped == 5
    assert st.book.windows[window_key(T0)].n_traces == 10


# ----------------------------------------------------------------------------- watermark


def test_window_closes_when_the_watermark_passes_its_end() -> None:
    st = Stream()
    st.event(at(5))
    st.event(at(65))  # watermark 55: window [0, 60) still open
    assert st.closed == []
    st.event(at(69.999))
    assert st.closed == []
    st.event(at(70))  # watermark 60 = end
    assert [w.start for w in st.closed] == [T0]
    assert st.closed[0].closed and st.closed[0].n_traces == 1
    st.event(at(200))  # closes [60, 120) exactly once; [0, 60) is not returned again
    assert [w.start for w in st.closed] == [T0, at(60)]


def test_out_of_order_within_grace_counts_and_beyond_grace_is_late() -> None:
    st = Stream()
    st.event(at(5))
    st.event(at(65))  # watermark 55
    assert st.event(at(50)) is False  # older, but its window is still open
    st.event(at(71))  # watermark 61: [0, 60) closes with 2 traces
    assert st.closed[0].n_traces == 2
    assert st.event(at(30)) is True  # its window closed: late, reported
    assert st.late == [at(30)] and st.mark.n_late == 1
    assert window_key(T0) not in st.table  # and not re-created


def test_the_watermark_never_goes_back() -> None:
    mark, _ = advance_watermark(Watermark(), at(100), grace_s=10, windows=[])
    mark2, _ = advance_watermark(mark, at(20), grace_s=10, windows=[])
    assert mark2.watermark == at(90) and mark2.max_event_time == at(100)
    assert is_late(mark2, at(29), 60) and not is_late(mark2, at(60), 60)


def test_closing_returns_each_window_once_and_oldest_first() -> None:
    ws = [WindowState(start=at(s), end=at(s + 60)) for s in (120, 0, 60, 180)]
    mark, closing = advance_watermark(Watermark(), at(200), grace_s=10, windows=ws)
    assert [w.start for w in closing] == [T0, at(60), at(120)]
    assert all(w.closed for w in closing)
    stored = [*closing, ws[3]]
    _, again = advance_watermark(mark, at(201), grace_s=10, windows=stored)
    assert again == []


def test_a_skewed_clock_cannot_close_everything() -> None:
    ws = [WindowState(start=at(0), end=at(60)), WindowState(start=at(60), end=at(120))]
    now = at(30)
    mark, closing = advance_watermark(Watermark(), at(10_000), grace_s=10, windows=ws, now=now, max_ahead_s=60)
    assert mark.max_event_time == at(90) and mark.watermark == at(80)
    assert [w.start for w in closing] == [T0]


def test_event_time_none_rechecks_after_a_restart() -> None:
    mark = Watermark(max_event_time=at(100), watermark=at(90))
    _, closing = advance_watermark(mark, None, grace_s=10, windows=[WindowState(start=T0, end=at(60))])
    assert [w.start for w in closing] == [T0]
    assert advance_watermark(Watermark(), None, grace_s=10, windows=[WindowState(start=T0, end=at(60))])[1] == []


# ----------------------------------------------------------------------------- close


def test_closed_event_is_deterministic_and_round_trips() -> None:
    s = observe(None, at(1), mark=Watermark(), size_s=SIZE, passed=True, sft=True).state
    assert s is not None
    # at close the app sets the pairs mined and the offset ranges of what the window wrote
    offsets = [OffsetRange(topic="b", partition=1, first=5, last=9), OffsetRange(topic="a", partition=0, first=3, last=3)]
    s = s.model_copy(update={"n_pairs": 4, "closed": True, "offsets": {f"{o.topic}:{o.partition}": o for o in offsets}})
    e = to_closed_event(s)
    assert e.window_id == "w-1772366400" == e.event_id
    assert e.timestamp == at(60) and e.window_start == T0 and e.window_end == at(60)
    assert (e.n_traces, e.n_passed, e.n_sft, e.n_pairs) == (1, 1, 1, 4)
    assert [(o.topic, o.partition, o.first, o.last) for o in e.offsets] == [("a", 0, 3, 3), ("b", 1, 5, 9)]
    assert to_closed_event(s) == e
    assert to_closed_event(s, n_pairs=7).n_pairs == 7
    assert decode(encode(e), DatasetWindowClosed) == e


def test_pairs_are_mined_from_a_closed_window() -> None:
    msgs = lambda text: [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]  # noqa: E731
    st = BookStream()
    st.event(at(1), _cand("good", 0.9, messages=msgs("right")), passed=True)
    st.event(at(2), _cand("bad", 0.2, messages=msgs("wrong")))
    st.event(at(3), _cand("other", 0.5, task="task-2", messages=msgs("alone")))
    st.event(at(100), _cand("next", 0.5, task="task-3"))
    ((w, cands),) = st.closed
    assert sorted(c.trace_id for c in cands) == ["bad", "good", "other"]
    assert not any(k.startswith(f"c:{window_key(T0)}:") for k in st.cands)  # dropped with the window
    pairs = mine_pairs(cands, window_start=w.start)
    assert [(p.chosen_trace_id, p.rejected_trace_id) for p in pairs] == [("good", "bad")]
    e = to_closed_event(w.model_copy(update={"n_pairs": len(pairs)}))
    assert (e.n_pairs, e.n_traces, e.n_passed) == (1, 3, 1)


# ----------------------------------------------------------------------------- restart and a whole stream


def _stream_events(n: int, seed: int, max_delay: float) -> list[datetime]:
    rng = random.Random(seed)
    times = [at(i * 0.7) for i in range(n)]
    # bounded disorder: each event may be delayed by up to max_delay seconds
    return [t for _, t in sorted((t + timedelta(seconds=rng.uniform(0, max_delay)), t) for t in times)]


def test_disorder_within_grace_loses_nothing_and_closes_each_window_once() -> None:
    events = _stream_events(600, seed=3, max_delay=GRACE - 0.5)
    st = Stream()
    for t in events:
        st.event(t, passed=True)
    st.event(at(10_000))  # flush
    assert st.late == []
    starts = [w.start for w in st.closed]
    assert starts == sorted(set(starts))
    assert sum(w.n_traces for w in st.closed) == 600
    expected = {window_start_for(t, SIZE) for t in events}
    assert set(starts) - {window_start_for(at(10_000), SIZE)} == expected


def test_disorder_beyond_grace_is_reported_late_never_dropped_silently() -> None:
    events = _stream_events(600, seed=4, max_delay=40)
    st = Stream()
    for t in events:
        st.event(t)
    st.event(at(10_000))
    counted = sum(w.n_traces for w in st.closed)
    assert st.late and counted + len(st.late) == 600
    assert st.mark.n_late == len(st.late)


def test_a_restart_rebuilt_from_the_changelog_gives_the_same_result() -> None:
    events = _stream_events(300, seed=5, max_delay=8)
    straight = Stream()
    for t in events:
        straight.event(t, passed=True, sft=True)
    restarted = Stream()
    for i, t in enumerate(events):
        if i % 50 == 25:  # "restart": only what the table's changelog holds survives, as JSON
            table = json.loads(json.dumps(restarted.table))
            closed = restarted.closed
            restarted = Stream()
            restarted.table, restarted.closed = table, closed
        restarted.event(t, passed=True, sft=True)
    assert [to_closed_event(w) for w in restarted.closed] == [to_closed_event(w) for w in straight.closed]
    assert restarted.table == straight.table


def test_a_book_restarted_from_json_closes_the_same_windows() -> None:
    events = _stream_events(300, seed=6, max_delay=25)  # some beyond grace: late ones move windows
    tasks = [f"task-{i % 7}" for i in range(len(events))]
    straight = BookStream(max_tasks=5, max_per_task=3)
    for i, (t, task) in enumerate(zip(events, tasks, strict=True)):
        straight.event(t, _cand(f"tr-{i}", (i * 37 % 100) / 100, task=task), passed=i % 3 == 0)
    restarted = BookStream(max_tasks=5, max_per_task=3)
    for i, (t, task) in enumerate(zip(events, tasks, strict=True)):
        if i % 50 == 25:  # "restart": the book and the candidate keys come back from the changelog as JSON
            book = json.loads(json.dumps(restarted.book.__json__()))
            cands = json.loads(json.dumps({k: [c.model_dump(mode="json") for c in v] for k, v in restarted.cands.items()}))
            restarted.book = WindowBook.model_validate(book)
            restarted.cands = {k: [PairCandidate.model_validate(c) for c in v] for k, v in cands.items()}
        restarted.event(t, _cand(f"tr-{i}", (i * 37 % 100) / 100, task=task), passed=i % 3 == 0)
    assert straight.book.mark.n_late > 0  # the late path was exercised
    assert restarted.book == straight.book and restarted.cands == straight.cands
    assert [(to_closed_event(w), c) for w, c in restarted.closed] == [(to_closed_event(w), c) for w, c in straight.closed]
    assert sum(w.n_traces for w, _ in straight.closed) + sum(w.n_traces for w in straight.book.windows.values()) == 300


# -- the window book (what the faust window agent stores) ---------------------------------------



def _obs(book: WindowBook, t: float, task: str = "task-1", *, passed: bool = True, max_tasks: int = 256):
    return book_observe(book, at(t), task_id=task, size_s=SIZE, passed=passed, sft=passed, max_tasks=max_tasks)


def test_book_counts_closes_once_and_drops_closed_windows() -> None:
    book = WindowBook()
    for t, task in [(1, "a"), (2, "b"), (59, "a"), (61, "c")]:
        e = _obs(book, t, task)
        assert not e.late and e.keep_candidate
        book, closing = book_advance(e.book, at(t), grace_s=GRACE)
        assert closing == []
    assert sorted(book.windows) == [window_key(T0), window_key(at(60))]
    assert book.tasks[window_key(T0)] == ["a", "b"]  # one entry per task, not per trace
    book, closing = book_advance(book, at(70), grace_s=GRACE)  # watermark 60: the first window ends
    assert [(w.start, w.n_traces, w.n_sft, w.closed, tasks) for w, tasks in closing] == [
        (T0, 3, 3, True, ["a", "b"])
    ]
    assert sorted(book.windows) == [window_key(at(60))] and window_key(T0) not in book.tasks
    _, again = book_advance(book, at(75), grace_s=GRACE)
    assert again == []  # each window closes exactly once


def test_book_late_trace_counts_in_the_window_holding_the_watermark() -> None:
    book = WindowBook()
    book, _ = book_advance(_obs(book, 5).book, at(5), grace_s=GRACE)
    book, closing = book_advance(_obs(book, 130).book, at(130), grace_s=GRACE)  # watermark 120
    assert [w.start for w, _ in closing] == [T0]
    e = _obs(book, 30, "late-task")  # its window [0, 60) closed long ago
    assert e.late and e.window_key == window_key(at(120)) and e.book.mark.n_late == 1
    assert e.book.windows[window_key(at(120))].n_traces == 2
    assert "late-task" in e.book.tasks[window_key(at(120))]


def test_book_bounds_tasks_with_candidates() -> None:
    book = WindowBook()
    for task in ["a", "b"]:
        book = _obs(book, 1, task, max_tasks=2).book
    e = _obs(book, 2, "c", max_tasks=2)
    assert not e.keep_candidate and e.book.tasks[window_key(T0)] == ["a", "b"]
    assert e.book.windows[window_key(T0)].n_traces == 3  # still counted
    assert _obs(e.book, 3, "a", max_tasks=2).keep_candidate  # a known task keeps its place


def test_book_round_trips_through_json() -> None:
    book = _obs(WindowBook(), 1, "a").book
    assert WindowBook.model_validate(book.__json__()) == book


def test_merge_candidate_keeps_extremes_and_replaces_redelivery() -> None:
    cands: list[PairCandidate] = []
    for tid, score in [("t1", 0.9), ("t2", 0.5), ("t3", 0.1)]:
        cands, dropped = merge_candidate(cands, _cand(tid, score), 3)
        assert dropped == 0
    cands, dropped = merge_candidate(cands, _cand("t2", 0.55), 3)
    assert dropped == 0 and sorted(c.trace_id for c in cands) == ["t1", "t2", "t3"]
    cands, dropped = merge_candidate(cands, _cand("t4", 0.6), 3)
    assert dropped == 1 and {c.trace_id for c in cands} >= {"t1", "t3"} and len(cands) == 3


def test_book_from_a_changelog_written_with_the_removed_candidate_fields_still_loads() -> None:
    book = _obs(WindowBook(), 1, "a").book
    old = book.__json__()
    for w in old["windows"].values():  # what books held before candidates left WindowState
        w.update(candidates={}, n_candidates_dropped=0)
    assert WindowBook.model_validate(json.loads(json.dumps(old))) == book
    with pytest.raises(ValueError):  # other unknown fields are still refused
        WindowState.model_validate({**book.windows[window_key(T0)].model_dump(), "bogus": 1})
