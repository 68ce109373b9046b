"""Trace assembly: out of order, duplicated, late, conflicting, oversize and expiring traces."""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from stillflow.contracts import (
    AgentTrace,
    ContractError,
    DeadLetter,
    ToolSpec,
    TraceOutcomeEvent,
    TraceStep,
    TraceStepEvent,
    decode,
    encode,
)
from streams.assembly import (
    INCOMPLETE,
    AssemblyError,
    AssemblyState,
    add_outcome,
    add_step,
    describe_incomplete,
    dump_state,
    incomplete_dead_letter,
    is_expired,
    load_state,
    missing_seqs,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CALC = ToolSpec(name="calc", parameters={"type": "object", "properties": {"expr": {"type": "string"}}})


def _trace(n: int = 5, trace_id: str = "tr-1") -> AgentTrace:
    steps = []
    for i in range(n - 1):
        if i % 3 == 0:
            steps.append(TraceStep(step_type="reasoning", content=f"step {i}: denke nach über π ✓"))
        elif i % 3 == 1:
            steps.append(
                TraceStep(step_type="tool_call", tool_name="calc", tool_args={"expr": f"{i}+1"}, tool_call_id=f"c{i}")
            )
        else:
            steps.append(
                TraceStep(step_type="observation", tool_name="calc", tool_call_id=f"c{i - 1}", tool_result=str(i))
            )
    steps.append(TraceStep(step_type="output", content="done"))
    return AgentTrace(
        trace_id=trace_id,
        task_id="task-a",
        input_text="q",
        tools=[CALC],
        steps=steps,
        final_output="done",
        success=True,
        model_id="teacher",
        timestamp=T0,
    )


def _step_events(trace: AgentTrace) -> list[TraceStepEvent]:
    return [
        TraceStepEvent(trace_id=trace.trace_id, task_id=trace.task_id, seq=i, step=s, timestamp=T0)
        for i, s in enumerate(trace.steps)
    ]


def _outcome(trace: AgentTrace, **kw: object) -> TraceOutcomeEvent:
    return TraceOutcomeEvent.from_trace(trace, **kw)


def _feed(events: list[TraceStepEvent | TraceOutcomeEvent], *, max_steps: int = 512):
    state: AssemblyState | None = None
    completed = []
    results = []
    for e in events:
        if isinstance(e, TraceStepEvent):
            r = add_step(state, e, max_steps=max_steps, now=T0)
        else:
            r = add_outcome(state, e, max_steps=max_steps, now=T0)
        state = r.state
        results.append(r)
        if r.trace is not None:
            completed.append(r.trace)
    return state, completed, results


def test_in_order_then_outcome_completes_on_the_outcome() -> None:
    trace = _trace()
    steps = _step_events(trace)
    state, completed, results = _feed([*steps, _outcome(trace)])
    assert [r.trace is not None for r in results] == [False] * 5 + [True]
    assert len(completed) == 1
    got = completed[0]
    assert got.steps == trace.steps
    assert got.model_dump() == trace.model_dump()
    assert state is not None and state.completed and state.steps == {} and state.outcome is None


def test_outcome_first_then_steps_out_of_order_completes_on_the_last_step() -> None:
    trace = _trace(7)
    steps = _step_events(trace)
    order = [steps[i] for i in (6, 2, 0, 5, 1, 3, 4)]
    _, completed, results = _feed([_outcome(trace), *order])
    assert [r.trace is not None for r in results] == [False] * 7 + [True]
    assert [s.content for s in completed[0].steps] == [s.content for s in trace.steps]
    assert completed[0].steps == trace.steps


def test_random_permutations_with_duplicates_complete_exactly_once_in_seq_order() -> None:
    rng = random.Random(7)
    for n in (1, 2, 5, 12):
        trace = _trace(n, trace_id=f"tr-{n}")
        events: list[TraceStepEvent | TraceOutcomeEvent] = [*_step_events(trace), _outcome(trace)]
        for _ in range(30):
            evs = events + [rng.choice(events) for _ in range(rng.randint(0, n))]
            rng.shuffle(evs)
            _, completed, results = _feed(evs)
            assert len(completed) == 1
            assert completed[0].steps == trace.steps
            n_dups = sum(r.duplicate for r in results)
            assert n_dups == len(evs) - (n + 1)
            assert not any(r.conflict for r in results)


def test_same_event_twice_is_a_duplicate_not_a_conflict() -> None:
    trace = _trace()
    e = _step_events(trace)[1]
    r1 = add_step(None, e, now=T0)
    r2 = add_step(r1.state, e, now=T0)
    assert not r1.duplicate and r2.duplicate and not r2.conflict
    assert r2.state.steps == r1.state.steps
    assert r2.state.n_duplicates == 1 and r2.state.n_conflicts == 0


def test_same_seq_same_content_new_event_id_is_a_plain_duplicate() -> None:
    trace = _trace()
    e = _step_events(trace)[0]
    again = e.model_copy(update={"event_id": "other-id"})
    r = add_step(add_step(None, e, now=T0).state, again, now=T0)
    assert r.duplicate and not r.conflict


def test_same_seq_different_content_keeps_the_first_and_reports_a_conflict() -> None:
    trace = _trace()
    first = _step_events(trace)[0]
    second = TraceStepEvent(
        trace_id=trace.trace_id, task_id="task-a", seq=0, step=TraceStep(step_type="reasoning", content="changed")
    )
    r = add_step(add_step(None, first, now=T0).state, second, now=T0)
    assert r.duplicate and r.conflict
    assert r.state.steps[0] == first.step
    assert r.state.n_conflicts == 1
    # and the trace completes with the first version
    rest = _step_events(trace)[1:]
    _, completed, _ = _feed([first, second, *rest, _outcome(trace)])
    assert completed[0].steps[0].content == first.step.content


def test_same_event_id_under_another_seq_is_a_conflicting_duplicate() -> None:
    trace = _trace()
    a, b = _step_events(trace)[:2]
    b2 = b.model_copy(update={"event_id": a.event_id})
    r = add_step(add_step(None, a, now=T0).state, b2, now=T0)
    assert r.duplicate and r.conflict and 1 not in r.state.steps


def test_second_outcome_is_a_duplicate_and_a_different_one_a_conflict() -> None:
    trace = _trace()
    o = _outcome(trace)
    r1 = add_outcome(None, o, now=T0)
    same = add_outcome(r1.state, o.model_copy(update={"event_id": "again"}), now=T0)
    assert same.duplicate and not same.conflict
    other = add_outcome(r1.state, o.model_copy(update={"event_id": "again", "final_output": "different"}), now=T0)
    assert other.duplicate and other.conflict
    assert other.state.outcome is not None and other.state.outcome.final_output == "done"


def test_events_after_completion_are_duplicates_and_never_complete_again() -> None:
    trace = _trace(3)
    steps = _step_events(trace)
    state, completed, _ = _feed([*steps, _outcome(trace)])
    assert len(completed) == 1
    for e in [*steps, _outcome(trace)]:
        r = add_step(state, e, now=T0) if isinstance(e, TraceStepEvent) else add_outcome(state, e, now=T0)
        assert r.duplicate and r.trace is None
        state = r.state


def test_outcome_that_carries_its_steps_completes_at_once() -> None:
    trace = _trace(4)
    r = add_outcome(None, _outcome(trace, include_steps=True), now=T0)
    assert r.trace is not None and r.trace.steps == trace.steps
    # buffered step events do not matter: the outcome's steps win
    stray = TraceStepEvent(
        trace_id=trace.trace_id, task_id="task-a", seq=0, step=TraceStep(step_type="reasoning", content="stray")
    )
    r2 = add_outcome(add_step(None, stray, now=T0).state, _outcome(trace, include_steps=True), now=T0)
    assert r2.trace is not None and r2.trace.steps == trace.steps


def test_an_empty_trace_completes_on_its_outcome() -> None:
    trace = AgentTrace(trace_id="tr-empty", task_id="t", input_text="hi", final_output="", timestamp=T0)
    r = add_outcome(None, _outcome(trace), now=T0)
    assert r.trace is not None and r.trace.steps == []


def test_too_many_steps_is_an_error_and_leaves_the_state_alone() -> None:
    trace = _trace(5)
    steps = _step_events(trace)
    state = add_step(None, steps[0], max_steps=3, now=T0).state
    with pytest.raises(AssemblyError) as err:
        add_step(state, steps[4], max_steps=3, now=T0)
    assert err.value.kind == "too_many_steps"
    assert isinstance(err.value, ContractError)
    with pytest.raises(AssemblyError) as err2:
        add_outcome(state, _outcome(trace), max_steps=3, now=T0)
    assert err2.value.kind == "too_many_steps"
    assert list(state.steps) == [0] and state.outcome is None


def test_steps_beyond_n_steps_are_errors() -> None:
    trace = _trace(3)
    extra = TraceStepEvent(
        trace_id=trace.trace_id, task_id="task-a", seq=5, step=TraceStep(step_type="reasoning", content="x")
    )
    state = add_outcome(None, _outcome(trace), now=T0).state
    with pytest.raises(AssemblyError) as err:
        add_step(state, extra, now=T0)
    assert err.value.kind == "seq_out_of_range"
    # the other order: the step first, then an outcome that says fewer steps
    state2 = add_step(None, extra, now=T0).state
    with pytest.raises(AssemblyError) as err2:
        add_outcome(state2, _outcome(trace), now=T0)
    assert err2.value.kind == "seq_out_of_range"


def test_state_of_another_trace_is_refused() -> None:
    a, b = _trace(trace_id="tr-a"), _trace(trace_id="tr-b")
    state = add_step(None, _step_events(a)[0], now=T0).state
    with pytest.raises(AssemblyError) as err:
        add_step(state, _step_events(b)[0], now=T0)
    assert err.value.kind == "trace_mismatch"


def test_expiry_counts_from_the_last_accepted_event() -> None:
    trace = _trace()
    steps = _step_events(trace)
    s = add_step(None, steps[0], now=T0).state
    s = add_step(s, steps[1], now=T0 + timedelta(seconds=50)).state
    assert s.first_seen == T0 and s.updated_at == T0 + timedelta(seconds=50)
    assert not is_expired(s, T0 + timedelta(seconds=100), 60)
    assert is_expired(s, T0 + timedelta(seconds=110), 60)
    assert is_expired(s, T0 + timedelta(seconds=110), timedelta(minutes=1))
    # a duplicate does not keep a trace alive
    d = add_step(s, steps[1], now=T0 + timedelta(seconds=105)).state
    assert d.updated_at == s.updated_at


def test_completed_tombstone_expires_too_and_says_so() -> None:
    trace = _trace(2)
    state, _, _ = _feed([*_step_events(trace), _outcome(trace)])
    assert state is not None and state.completed
    assert is_expired(state, T0 + timedelta(seconds=301), 300)


def test_state_survives_a_json_round_trip_and_assembly_continues() -> None:
    trace = _trace(6)
    steps = _step_events(trace)
    state = None
    for e in steps[:3]:
        state = add_step(state, e, now=T0).state
    assert state is not None
    stored = json.loads(json.dumps(dump_state(state)))  # int keys become strings in JSON
    assert set(stored["steps"]) == {"0", "1", "2"}
    restored = load_state(stored)
    assert restored == state
    for e in steps[3:]:
        restored = add_step(restored, e, now=T0).state
    r = add_outcome(restored, _outcome(trace), now=T0)
    assert r.trace is not None and r.trace.steps == trace.steps
    assert load_state(None) is None and load_state(state) is state


def test_missing_and_descriptions() -> None:
    trace = _trace(5)
    steps = _step_events(trace)
    s = add_step(None, steps[1], now=T0).state
    s = add_step(s, steps[3], now=T0).state
    assert missing_seqs(s) is None
    assert describe_incomplete(s) == "incomplete: outcome missing, 2 steps (seq 1..3) in"
    s = add_outcome(s, _outcome(trace), now=T0).state
    assert missing_seqs(s) == [0, 2, 4]
    assert describe_incomplete(s) == "incomplete: 3 of 5 steps missing (seq 0, 2, 4)"


def test_incomplete_dead_letter_is_a_valid_bounded_deterministic_record() -> None:
    trace = _trace(5)
    steps = _step_events(trace)
    s = add_outcome(add_step(None, steps[0], now=T0).state, _outcome(trace), now=T0).state
    dl = incomplete_dead_letter(s, source_topic="stillflow.trace.steps", now=T0)
    assert dl.kind == INCOMPLETE and dl.reason.startswith("incomplete: 4 of 5")
    assert dl.event_id == "dlq-incomplete-tr-1"
    assert base64.b64decode(dl.key_b64 or "") == b"tr-1"
    summary = json.loads(base64.b64decode(dl.raw_b64))
    assert summary["missing"] == [1, 2, 3, 4] and summary["seqs"] == [0] and summary["outcome"] is True
    assert dl.raw_size == len(base64.b64decode(dl.raw_b64))
    back = decode(encode(dl), DeadLetter)
    assert back == dl
    assert incomplete_dead_letter(s, source_topic="stillflow.trace.steps", now=T0) == dl


def test_unicode_survives_assembly() -> None:
    step = TraceStep(step_type="reasoning", content="日本語 ✓ émoji 🚀 \u0000 null")
    trace = AgentTrace(trace_id="tr-u", task_id="t", input_text="ünï", steps=[step], final_output="🚀", timestamp=T0)
    e = TraceStepEvent(trace_id="tr-u", task_id="t", seq=0, step=step)
    state = add_step(None, e, now=T0).state
    state = load_state(json.loads(json.dumps(dump_state(state))))
    r = add_outcome(state, _outcome(trace), now=T0)
    assert r.trace is not None and r.trace.steps[0].content == step.content and r.trace.final_output == "🚀"
