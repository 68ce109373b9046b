"""streams.otel.assembly (span state rules) and streams.otel.join (outcomes join trajectories).

Spans come from the recorded fixtures in tests/fixtures/otel/; times are explicit `now` datetimes, so
nothing here sleeps. Broker-free.
"""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stillflow.contracts import AgentTrace, DeadLetter, TraceOutcomeEvent
from streams.otel.assembly import (
    INCOMPLETE,
    SpanState,
    add_logs,
    add_outcome,
    add_spans,
    is_expired,
    is_late,
    is_ready,
    span_letter,
)
from streams.otel.join import (
    UNKNOWN,
    TaskState,
    joined_event,
    outcome_is_task_keyed,
    task_add_outcome,
    task_add_trajectory,
    task_due,
)
from streams.otel.otlp import (
    OtelLog,
    OtelSpan,
)
from streams.otel.trajectory import build_trajectory
from tests.otel_fixtures import NAMES as ALL
from tests.otel_fixtures import load

T0 = datetime(2026, 12, 4, 21, 0, tzinfo=UTC)
NAMES = [n for n in ALL if n != "genai-nocontent"]  # these build


def _load(name: str) -> tuple[dict[str, list[OtelSpan]], dict[str, list[OtelLog]]]:
    spans, logs, _episodes = load(name)
    return spans, logs


def traces(names: list[str] = NAMES) -> list[tuple[str, str]]:
    return [(n, tid) for n in names for tid in _load(n)[0]]


def trace_spans(name: str, tid: str) -> list[OtelSpan]:
    return [s.model_copy(deep=True) for s in _load(name)[0][tid]]


def trace_logs(name: str, tid: str) -> list[OtelLog]:
    return [r.model_copy(deep=True) for r in _load(name)[1].get(tid, [])]


def _ids(p: Any) -> str:
    return f"{p[0]}-{p[1][:8]}" if isinstance(p, tuple) else str(p)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def root_of(spans: list[OtelSpan]) -> OtelSpan:
    return next(s for s in spans if s.parent_span_id is None)


def feed(spans: list[OtelSpan], batches: list[list[OtelSpan]], now: datetime = T0) -> SpanState:
    state = None
    for b in batches:
        state = add_spans(state, spans[0].trace_id, b, now=now).state
    assert state is not None
    return state


# ---- add_spans ----

@pytest.mark.parametrize("case", traces(), ids=_ids)
def test_batches_in_any_order_with_duplicates_give_the_same_state(case: tuple[str, str]) -> None:
    name, tid = case
    spans = trace_spans(name, tid)
    whole = add_spans(None, tid, spans, now=T0)
    assert (whole.added, whole.duplicates) == (len(spans), 0)
    assert set(whole.state.spans) == {s.span_id for s in spans}
    assert whole.state.has_root() and whole.state.n_duplicates == whole.state.n_conflicts == 0
    for seed in range(8):
        rng = random.Random(seed)
        extra = [rng.choice(spans).model_copy(deep=True) for _ in range(rng.randint(1, len(spans)))]
        pool = spans + extra
        rng.shuffle(pool)
        cuts = sorted(rng.sample(range(1, len(pool)), k=min(3, len(pool) - 1)))
        batches = [pool[i:j] for i, j in zip([0, *cuts], [*cuts, len(pool)], strict=True)]
        state = None
        added = dups = 0
        for b in batches:
            res = add_spans(state, tid, b, now=T0)
            state, added, dups = res.state, added + res.added, dups + res.duplicates
        assert state is not None
        assert state.spans == whole.state.spans
        assert (added, dups) == (len(spans), len(extra))
        assert state.n_duplicates == len(extra) and state.n_conflicts == 0
        assert state.model_dump(exclude={"n_duplicates"}) == whole.state.model_dump(exclude={"n_duplicates"})
        # and what is built from it is the same trajectory
        a = build_trajectory(list(state.spans.values()), trace_logs(name, tid)).trace
        b_ = build_trajectory(list(whole.state.spans.values()), trace_logs(name, tid)).trace
        assert a.model_dump(exclude={"timestamp"}) == b_.model_dump(exclude={"timestamp"})


def test_duplicate_in_one_batch_counts() -> None:
    name, tid = traces(["genai"])[0]
    spans = trace_spans(name, tid)
    res = add_spans(None, tid, [spans[0], spans[0], spans[1]], now=T0)
    assert (res.added, res.duplicates) == (2, 1)
    assert res.state.n_duplicates == 1 and res.state.n_conflicts == 0


def test_conflicting_duplicate_first_copy_wins() -> None:
    name, tid = traces(["genai"])[1]
    spans = trace_spans(name, tid)
    state = add_spans(None, tid, spans, now=T0).state
    first = spans[0]
    other = first.model_copy(update={"name": "something else", "attributes": {**first.attributes, "x": 1}})
    res = add_spans(state, tid, [other, spans[1].model_copy(deep=True)], now=at(1))
    assert (res.added, res.duplicates) == (0, 2)
    assert res.state.n_duplicates == 2 and res.state.n_conflicts == 1
    assert res.state.spans[first.span_id] == first  # kept as first seen
    assert res.state.updated_at == T0  # nothing new: the settle clock is not reset
    res = add_spans(res.state, tid, [other.model_copy(update={"end_ns": first.end_ns + 1})], now=at(2))
    assert res.state.n_conflicts == 2 and res.state.n_duplicates == 3


def test_too_many_spans() -> None:
    name, tid = traces(["agents"])[1]
    spans = trace_spans(name, tid)
    add_spans(None, tid, spans, now=T0, max_spans=len(spans))  # exactly at the bound: fine
    with pytest.raises(ValueError, match="too_many_spans"):
        add_spans(None, tid, spans, now=T0, max_spans=len(spans) - 1)
    state = add_spans(None, tid, spans[:3], now=T0, max_spans=4).state
    assert add_spans(state, tid, spans[:3], now=T0, max_spans=4).duplicates == 3  # duplicates don't count
    with pytest.raises(ValueError, match="too_many_spans"):
        add_spans(state, tid, spans[3:5], now=T0, max_spans=4)


def test_completed_state_counts_everything_as_duplicate() -> None:
    name, tid = traces(["genai"])[0]
    spans = trace_spans(name, tid)
    state = add_spans(None, tid, spans, now=T0).state
    tomb = state.model_copy(update={"spans": {}, "logs": {}, "completed": True})
    res = add_spans(tomb, tid, spans, now=at(5))
    assert (res.added, res.duplicates) == (0, len(spans))
    assert res.state.spans == {} and res.state.completed and res.state.n_duplicates == len(spans)
    assert res.state.updated_at == tomb.updated_at
    logs = trace_logs("genai-events", traces(["genai-events"])[0][1])
    assert add_logs(tomb, tid, logs, now=at(5)).duplicates == len(logs)
    assert not is_ready(res.state, at(100), 0)


# ---- add_logs ----

@pytest.mark.parametrize("case", traces(["genai-events", "openai-v2-events"]), ids=_ids)
def test_add_logs_dedupes(case: tuple[str, str]) -> None:
    name, tid = case
    logs = trace_logs(name, tid)
    assert logs
    res = add_logs(None, tid, logs, now=T0)
    assert (res.added, res.duplicates) == (len(logs), 0)
    again = add_logs(res.state, tid, [r.model_copy(deep=True) for r in reversed(logs)], now=at(3))
    assert (again.added, again.duplicates) == (0, len(logs))
    assert again.state.logs == res.state.logs and again.state.n_duplicates == len(logs)
    assert again.state.updated_at == T0
    # a record that differs in anything is another record
    changed = logs[0].model_copy(update={"time_ns": logs[0].time_ns + 1})
    more = add_logs(again.state, tid, [changed], now=at(4))
    assert more.added == 1 and len(more.state.logs) == len(logs) + 1 and more.state.updated_at == at(4)
    with pytest.raises(ValueError, match="too_many_spans"):
        add_logs(None, tid, logs, now=T0, max_logs=len(logs) - 1)
    # spans and logs share the state
    both = add_spans(res.state, tid, trace_spans(name, tid), now=at(1)).state
    assert len(both.logs) == len(logs) and both.has_root()
    built = build_trajectory(list(both.spans.values()), list(both.logs.values()))
    assert built.trace.final_output


# ---- readiness, expiry, lateness ----

@pytest.mark.parametrize("case", traces(["agents", "genai", "openinference"]), ids=_ids)
def test_ready_only_with_the_root_and_after_settling(case: tuple[str, str]) -> None:
    name, tid = case
    spans = trace_spans(name, tid)
    root = root_of(spans)
    children = [s for s in spans if s is not root]
    state = add_spans(None, tid, children, now=T0).state
    assert not state.has_root()
    for later in (0, 5, 3600):
        assert not is_ready(state, at(later), 2.0)  # no root: never ready, however long
    state = add_spans(state, tid, [root], now=at(10)).state
    assert state.has_root() and state.updated_at == at(10) and state.first_seen == T0
    assert not is_ready(state, at(10), 2.0)
    assert not is_ready(state, at(11.999), 2.0)
    assert is_ready(state, at(12), 2.0)
    assert is_ready(state, at(12), timedelta(seconds=2))
    assert is_ready(state, at(10), 0)
    # a late child resets the settle clock
    extra = children[0].model_copy(update={"span_id": "f" * 16})
    state = add_spans(state, tid, [extra], now=at(11)).state
    assert not is_ready(state, at(12), 2.0) and is_ready(state, at(13), 2.0)
    # a clock that goes backwards never moves updated_at back
    state = add_spans(state, tid, [extra.model_copy(update={"span_id": "e" * 16})], now=at(1)).state
    assert state.updated_at == at(11)
    # a tombstone is never ready
    assert not is_ready(state.model_copy(update={"completed": True}), at(100), 2.0)


def test_root_first_is_ready_too() -> None:
    name, tid = traces(["genai"])[0]
    spans = trace_spans(name, tid)
    root = root_of(spans)
    state = add_spans(None, tid, [root], now=T0).state
    assert is_ready(state, at(2), 2.0)  # the caller's settle_s covers the children still on the way
    state = add_spans(state, tid, [s for s in spans if s is not root], now=at(1)).state
    assert not is_ready(state, at(2), 2.0) and is_ready(state, at(3), 2.0)


def test_expired() -> None:
    name, tid = traces(["genai"])[1]
    spans = [s for s in trace_spans(name, tid) if s.parent_span_id is not None]
    state = add_spans(None, tid, spans[:1], now=T0).state
    state = add_spans(state, tid, spans[1:], now=at(30)).state
    assert not is_expired(state, at(89.9), 60)
    assert is_expired(state, at(90), 60)
    assert is_expired(state, at(90), timedelta(minutes=1))
    # a tombstone expires the same way (deleted by the caller after max_lateness_s)
    tomb = state.model_copy(update={"completed": True, "spans": {}})
    assert is_expired(tomb, at(90), 60) and not is_expired(tomb, at(31), 60)


def test_incomplete_letter() -> None:
    name, tid = traces(["agents"])[0]
    spans = [s for s in trace_spans(name, tid) if s.parent_span_id is not None]
    state = add_spans(None, tid, spans, now=T0).state
    letter = span_letter(state, INCOMPLETE, "incomplete: no root", source_topic="stillflow.otlp.spans", now=at(1))
    assert isinstance(letter, DeadLetter) and letter.kind == INCOMPLETE and tid in letter.event_id
    summary = json.loads(base64.b64decode(letter.raw_b64))
    assert summary["trace_id"] == tid and summary["n_spans"] == len(spans) and summary["n_logs"] == 0
    assert {s["span_id"] for s in summary["spans"]} == {s.span_id for s in spans}
    assert "attributes" not in json.dumps(summary)  # ids and names, not the content
    assert base64.b64decode(letter.key_b64).decode() == tid
    # one id per trace and kind: a redelivered letter is the same letter
    assert span_letter(state, INCOMPLETE, "x", source_topic="t").event_id == letter.event_id


@pytest.mark.parametrize("case", traces(["genai", "agents"]), ids=_ids)
def test_late(case: tuple[str, str]) -> None:
    name, tid = case
    spans = trace_spans(name, tid)
    last_end = max(s.end_ns for s in spans) / 1e9
    end = datetime.fromtimestamp(last_end, tz=UTC)
    assert not is_late(spans, end, 60)
    assert not is_late(spans, end + timedelta(seconds=59), 60)
    assert is_late(spans, end + timedelta(seconds=61), 60)
    # one recent span in the record: not late
    fresh = spans[0].model_copy(update={"end_ns": int((last_end + 3600) * 1e9)})
    assert not is_late([*spans, fresh], end + timedelta(seconds=61), 60)
    # a span that never ended counts by its start
    open_ = spans[0].model_copy(update={"end_ns": 0})
    assert is_late([open_], datetime.fromtimestamp(open_.start_ns / 1e9, tz=UTC) + timedelta(seconds=61), 60)
    assert not is_late([], end + timedelta(days=1), 60)


def test_add_outcome_first_wins() -> None:
    tid = traces(["genai"])[0][1]
    o1, o2 = outcome(tid, "t", event_id="o1"), outcome(tid, "t", event_id="o2")
    st = add_outcome(None, tid, o1, now=T0)
    assert st.outcome == o1 and st.spans == {} and st.trace_id == tid
    st2 = add_outcome(st, tid, o2, now=at(1))
    assert st2.outcome == o1 and st2.n_duplicates == 1
    assert add_spans(st2, tid, trace_spans("genai", tid), now=at(2)).state.outcome == o1


# ---- the join ----

def built_trace(name: str = "genai", i: int = 0) -> AgentTrace:
    tid = list(_load(name)[0])[i]
    return build_trajectory(trace_spans(name, tid), trace_logs(name, tid)).trace


def outcome(trace_id: str, task_id: str, *, event_id: str | None = None, task_keyed: bool = False,
            success: bool = True, **kw: Any) -> TraceOutcomeEvent:
    meta = {"stillflow_join": "task"} if task_keyed else {}
    meta.update(kw.pop("metadata", {}))
    return TraceOutcomeEvent(trace_id=trace_id, task_id=task_id, n_steps=0, input_text="", success=success,
                             metadata=meta, **({"event_id": event_id} if event_id else {}), **kw)


def run_of(trace: AgentTrace, n: int) -> AgentTrace:
    """The same task run again: another trace id."""
    return trace.model_copy(update={"trace_id": f"{trace.trace_id[:24]}{n:08x}"})


def test_joined_event_with_an_outcome() -> None:
    trace = built_trace("genai", 1)
    o = outcome(trace.trace_id, trace.task_id, ground_truth="normal", expected_steps=7, quality_score=0.75,
                workload="recovery", cost_usd=0.5, metadata={"split": "train"}, task_keyed=True)
    ev = joined_event(trace, o, evaluation=False)
    assert isinstance(ev, TraceOutcomeEvent)
    assert ev.success is True  # the reported outcome wins over an evaluation
    assert (ev.ground_truth, ev.expected_steps, ev.quality_score, ev.workload, ev.cost_usd) == (
        "normal", 7, 0.75, "recovery", 0.5)
    assert ev.metadata["outcome"] == "reported" and ev.metadata["split"] == "train"
    assert "stillflow_join" not in ev.metadata
    assert ev.metadata["source"] == "otel"
    assert ev.steps == trace.steps and ev.n_steps == len(trace.steps) == 7
    assert (ev.trace_id, ev.task_id, ev.final_output, ev.input_text, ev.system_prompt, ev.tools, ev.total_tokens) == (
        trace.trace_id, trace.task_id, trace.final_output, trace.input_text, trace.system_prompt, trace.tools,
        trace.total_tokens)
    assert ev.timestamp == trace.timestamp
    # the outcome's error, else the trace's; its answer only when the trace has none
    failed = outcome(trace.trace_id, trace.task_id, success=False, error="wrong", final_output="other")
    ev = joined_event(trace.model_copy(update={"error": "root failed"}), failed, None)
    assert (ev.success, ev.error, ev.final_output) == (False, "wrong", trace.final_output)
    ev = joined_event(trace.model_copy(update={"error": "root failed", "final_output": ""}),
                      outcome(trace.trace_id, trace.task_id, final_output="other"), None)
    assert (ev.error, ev.final_output) == ("root failed", "other")


@pytest.mark.parametrize("verdict", [True, False])
def test_joined_event_with_an_evaluation_only(verdict: bool) -> None:
    trace = built_trace("openinference", 0)
    ev = joined_event(trace, None, verdict)
    assert ev.success is verdict and ev.metadata["outcome"] == "evaluation"
    assert ev.n_steps == len(trace.steps) and ev.steps == trace.steps


def test_joined_event_with_nothing() -> None:
    trace = built_trace("agents", 1)
    ev = joined_event(trace, None, None)
    assert ev.success is False and ev.metadata["outcome"] == UNKNOWN == "unknown"
    assert ev.n_steps == len(trace.steps) and ev.steps == trace.steps
    assert ev.ground_truth is None and ev.expected_steps is None


def test_outcome_is_task_keyed() -> None:
    assert outcome_is_task_keyed(outcome("a", "t", task_keyed=True))
    assert not outcome_is_task_keyed(outcome("a", "t"))


def _pairs(events: list[TraceOutcomeEvent]) -> list[tuple[str, bool, str | None]]:
    return [(e.trace_id, e.success, e.ground_truth) for e in events]


def assert_nothing_pending(st: TaskState | None, now: datetime, wait_s: float = 30) -> None:
    """All paired: nothing waits, no outcome is left to pair, and after the wait the state goes."""
    assert st is not None and st.waiting == [] and all(r.joined for r in st.outcomes)
    assert task_due(st, now + timedelta(seconds=wait_s), wait_s) == (None, [])


def test_fifo_trajectories_first() -> None:
    base = built_trace()
    task = base.task_id
    runs = [run_of(base, n) for n in range(3)]
    st: TaskState | None = None
    for n, r in enumerate(runs):
        st, out = task_add_trajectory(st, task, r, None, now=at(n))
        assert out == []
    assert st is not None and [w.trace.trace_id for w in st.waiting] == [r.trace_id for r in runs]
    got = []
    for n in range(3):
        st, out = task_add_outcome(st, task, outcome(task, task, task_keyed=True, ground_truth=f"g{n}",
                                                     success=n != 1), now=at(10 + n))
        got += out
    assert _pairs(got) == [(runs[0].trace_id, True, "g0"), (runs[1].trace_id, False, "g1"),
                           (runs[2].trace_id, True, "g2")]
    assert all(e.metadata["outcome"] == "reported" for e in got)
    assert_nothing_pending(st, at(20))


def test_fifo_outcomes_first() -> None:
    base = built_trace("openllmetry", 1)
    task = base.task_id
    st: TaskState | None = None
    for n in range(3):
        st, out = task_add_outcome(st, task, outcome(task, task, task_keyed=True, ground_truth=f"g{n}"), now=at(n))
        assert out == []
    assert st is not None and [r.outcome.ground_truth for r in st.outcomes] == ["g0", "g1", "g2"]
    runs = [run_of(base, n) for n in range(3)]
    got = []
    for n, r in enumerate(runs):
        st, out = task_add_trajectory(st, task, r, None, now=at(10 + n))
        got += out
    assert _pairs(got) == [(r.trace_id, True, f"g{n}") for n, r in enumerate(runs)]
    assert_nothing_pending(st, at(20))


def test_interleaved() -> None:
    base = built_trace()
    task = base.task_id
    r0, r1 = run_of(base, 0), run_of(base, 1)
    st, out = task_add_outcome(None, task, outcome(task, task, task_keyed=True, ground_truth="g0"), now=at(0))
    st, out0 = task_add_trajectory(st, task, r0, None, now=at(1))
    st, out = task_add_trajectory(st, task, r1, None, now=at(2))
    assert out == []
    st, out1 = task_add_outcome(st, task, outcome(task, task, task_keyed=True, ground_truth="g1"), now=at(3))
    assert _pairs(out0 + out1) == [(r0.trace_id, True, "g0"), (r1.trace_id, True, "g1")]


def test_an_outcome_naming_the_trace_takes_that_trajectory() -> None:
    base = built_trace("genai-events", 0)
    task = base.task_id
    runs = [run_of(base, n) for n in range(3)]
    st = None
    for n, r in enumerate(runs):
        st, _ = task_add_trajectory(st, task, r, None, now=at(n))
    st, out = task_add_outcome(st, task, outcome(runs[1].trace_id, task, task_keyed=True, ground_truth="mine"),
                               now=at(5))
    assert _pairs(out) == [(runs[1].trace_id, True, "mine")]
    # ... and not task-keyed: the same (it names the trace)
    st, out = task_add_outcome(st, task, outcome(runs[2].trace_id, task, ground_truth="two"), now=at(6))
    assert _pairs(out) == [(runs[2].trace_id, True, "two")]
    assert [w.trace.trace_id for w in st.waiting] == [runs[0].trace_id]
    # an outcome naming another trace, not task-keyed, takes no one
    st, out = task_add_outcome(st, task, outcome("f" * 32, task, ground_truth="other"), now=at(7))
    assert out == [] and [w.trace.trace_id for w in st.waiting] == [runs[0].trace_id]


def test_an_outcome_naming_the_trace_waits_for_it() -> None:
    base = built_trace("genai-events", 1)
    task = base.task_id
    r0, r1 = run_of(base, 0), run_of(base, 1)
    st, _ = task_add_outcome(None, task, outcome(r1.trace_id, task, task_keyed=True, ground_truth="for-r1"), now=at(0))
    st, _ = task_add_outcome(st, task, outcome(task, task, task_keyed=True, ground_truth="any"), now=at(1))
    st, out = task_add_trajectory(st, task, r1, None, now=at(2))
    assert _pairs(out) == [(r1.trace_id, True, "for-r1")]  # its own, not the older one
    st, out = task_add_trajectory(st, task, r0, None, now=at(3))
    assert _pairs(out) == [(r0.trace_id, True, "any")]


def test_an_outcome_for_another_trace_is_not_taken_by_fifo() -> None:
    base = built_trace()
    task = base.task_id
    r0 = run_of(base, 0)
    st, _ = task_add_outcome(None, task, outcome("e" * 32, task, ground_truth="not yours"), now=at(0))
    st, out = task_add_trajectory(st, task, r0, None, now=at(1))
    assert out == [] and [w.trace.trace_id for w in st.waiting] == [r0.trace_id]


def test_task_due() -> None:
    base = built_trace("openinference", 1)
    task = base.task_id
    r0, r1 = run_of(base, 0), run_of(base, 1)
    st, _ = task_add_trajectory(None, task, r0, True, now=at(0))
    st, _ = task_add_trajectory(st, task, r1, None, now=at(20))
    st, _ = task_add_outcome(st, task, outcome("d" * 32, task, ground_truth="stray"), now=at(5))
    assert len(st.waiting) == 2 and len(st.outcomes) == 1
    # nothing due yet: the same state back
    same, out = task_due(st, at(10), 30)
    assert same == st and out == []
    st, out = task_due(st, at(30), 30)
    assert [(e.trace_id, e.success, e.metadata["outcome"]) for e in out] == [(r0.trace_id, True, "evaluation")]
    assert [w.trace.trace_id for w in st.waiting] == [r1.trace_id] and len(st.outcomes) == 1
    st, out = task_due(st, at(35), 30)  # the stray outcome is dropped, the trajectory waits
    assert out == [] and len(st.outcomes) == 0 and len(st.waiting) == 1
    st2, out = task_due(st, at(50), 30)
    assert st2 is None
    assert [(e.trace_id, e.success, e.metadata["outcome"]) for e in out] == [(r1.trace_id, False, UNKNOWN)]
    assert out[0].steps == r1.steps and out[0].n_steps == len(r1.steps)


def test_task_due_drops_old_outcomes_alone() -> None:
    st, _ = task_add_outcome(None, "t-1", outcome("t-1", "t-1", task_keyed=True), now=at(0))
    st, out = task_due(st, at(59), 60)
    assert st is not None and out == []
    st, out = task_due(st, at(60), 60)
    assert st is None and out == []


def test_outcomes_kept_are_bounded() -> None:
    st = None
    for n in range(10):
        st, _ = task_add_outcome(st, "t-1", outcome("t-1", "t-1", task_keyed=True, event_id=f"o{n}"), now=at(n),
                                 max_kept=4)
    assert [r.outcome.event_id for r in st.outcomes] == ["o6", "o7", "o8", "o9"]


def test_redelivered_trajectory_is_not_paired_twice() -> None:
    base = built_trace()
    task = base.task_id
    r0, r1 = run_of(base, 0), run_of(base, 1)
    st, _ = task_add_trajectory(None, task, r0, None, now=at(0))
    st, out = task_add_trajectory(st, task, r0.model_copy(deep=True), None, now=at(1))
    assert out == [] and [w.trace.trace_id for w in st.waiting] == [r0.trace_id]
    st, _ = task_add_trajectory(st, task, r1, None, now=at(2))
    got = []
    for n in range(2):
        st, out = task_add_outcome(st, task, outcome(task, task, task_keyed=True, ground_truth=f"g{n}"),
                                   now=at(3 + n))
        got += out
    assert _pairs(got) == [(r0.trace_id, True, "g0"), (r1.trace_id, True, "g1")]


def test_redelivered_outcome_is_not_paired_twice() -> None:
    base = built_trace()
    task = base.task_id
    o = outcome(task, task, task_keyed=True, event_id="out-1", ground_truth="g0")
    st, _ = task_add_outcome(None, task, o, now=at(0))
    st, out = task_add_outcome(st, task, o.model_copy(deep=True), now=at(1))
    assert out == [] and len(st.outcomes) == 1
    r0, r1 = run_of(base, 0), run_of(base, 1)
    st, out0 = task_add_trajectory(st, task, r0, None, now=at(2))
    st, out1 = task_add_trajectory(st, task, r1, None, now=at(3))
    assert _pairs(out0) == [(r0.trace_id, True, "g0")] and out1 == []
    assert [w.trace.trace_id for w in st.waiting] == [r1.trace_id]


def test_redelivered_after_pairing_is_not_paired_again() -> None:
    """A retried outcome (same event id) after it was joined must not join the task's next run."""
    base = built_trace()
    task = base.task_id
    r0, r1 = run_of(base, 0), run_of(base, 1)
    o = outcome(task, task, task_keyed=True, event_id="out-1", ground_truth="g0")
    st, _ = task_add_trajectory(None, task, r0, None, now=at(0))
    st, out = task_add_outcome(st, task, o, now=at(1))
    assert _pairs(out) == [(r0.trace_id, True, "g0")]
    st, out = task_add_outcome(st, task, o.model_copy(deep=True), now=at(2))  # the retry
    assert out == []
    st, out = task_add_trajectory(st, task, r1, None, now=at(3))
    assert out == [], "the retried outcome of run 0 joined run 1"
    # and a trajectory forwarded again after it was joined does not take run 1's outcome
    st, out = task_add_trajectory(st, task, r0.model_copy(deep=True), None, now=at(4))
    assert out == []
    st, out = task_add_outcome(st, task, outcome(task, task, task_keyed=True, event_id="out-2", ground_truth="g1"),
                               now=at(5))
    assert _pairs(out) == [(r1.trace_id, True, "g1")]


def test_task_state_round_trips_as_a_table_value() -> None:
    base = built_trace("agents", 0)
    st, _ = task_add_trajectory(None, base.task_id, base, None, now=at(0))
    st, _ = task_add_outcome(st, base.task_id, outcome("c" * 32, base.task_id), now=at(1))
    again = TaskState.model_validate_json(json.dumps(st.__json__()))
    assert again == st
    state = add_spans(None, base.trace_id, trace_spans("agents", base.trace_id), now=T0).state
    assert SpanState.model_validate_json(json.dumps(state.__json__())) == state


def test_redelivered_after_pairing_outcome_first() -> None:
    base = built_trace("openinference", 0)
    task = base.task_id
    r0, r1 = run_of(base, 0), run_of(base, 1)
    o0 = outcome(task, task, task_keyed=True, event_id="out-a", ground_truth="g0")
    o1 = outcome(task, task, task_keyed=True, event_id="out-b", ground_truth="g1")
    st, _ = task_add_outcome(None, task, o0, now=at(0))
    st, out = task_add_trajectory(st, task, r0, None, now=at(1))
    assert _pairs(out) == [(r0.trace_id, True, "g0")]
    st, out = task_add_outcome(st, task, o1, now=at(2))
    assert out == []  # nobody waits: kept for the next run
    st, out = task_add_trajectory(st, task, r0.model_copy(deep=True), None, now=at(3))  # the retried forward
    assert out == [], "the retried trajectory of run 0 took run 1's outcome"
    st, out = task_add_outcome(st, task, o0.model_copy(deep=True), now=at(4))
    assert out == []
    st, out = task_add_trajectory(st, task, r1, None, now=at(5))
    assert _pairs(out) == [(r1.trace_id, True, "g1")]
    # the marks of the joins go after the wait, and with them the state
    st2, out = task_due(st, at(5 + 29), 30)
    assert st2 is not None and out == []
    assert task_due(st, at(5 + 30), 30) == (None, [])
