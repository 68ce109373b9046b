"""Contracts: validation with clear messages, limits, codec round trips. No broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from stillflow import contracts as c
from stillflow.contracts import ContractError, Limits, decode, encode, get_limits, set_limits
from tests.helpers import make_trace


@pytest.fixture
def small_limits():
    old = get_limits()
    set_limits(Limits(max_step_content_chars=100, max_event_bytes=2000))
    yield
    set_limits(old)


def test_every_design_event_exists_and_round_trips() -> None:
    trace = make_trace(3)
    score = c.TrajectoryScore(correctness=1, efficiency=0.8, tool_selection=1, safety=1, reasoning_quality=0.5,
                              overall=0.9)
    now = datetime(2026, 5, 1, tzinfo=UTC)
    events = [
        c.TraceStepEvent(trace_id="t1", task_id="k1", seq=0, step=trace.steps[0]),
        c.TraceOutcomeEvent.from_trace(trace),
        c.ScoredTrace(trace=trace, score=score, passed=False, rejected_by=["safety"], reasons=["rm -rf"]),
        c.SFTExample(example_id="sft-t1", trace_id="t1", task_id="k1", messages=[{"role": "user", "content": "hi"}],
                     score=0.9),
        c.PreferencePair(pair_id="p1", task_id="k1", chosen_trace_id="a", rejected_trace_id="b",
                         prompt=[{"role": "user", "content": "q"}], chosen=[{"role": "assistant", "content": "1"}],
                         rejected=[{"role": "assistant", "content": "2"}], chosen_score=0.9, rejected_score=0.2),
        c.DatasetWindowClosed(window_id="w-1", window_start=now, window_end=now, n_sft=3,
                              offsets=[c.OffsetRange(topic="x", partition=0, first=0, last=5)]),
        c.TrainingRunEvent(run_id="r1", status="requested", model_name="student"),
        c.ModelVersionEvent(model_name="student", version="v1", status="promoted", manifest_sha256="a" * 64),
        c.RouteDecision(trace_id="t1", request_id="q1", served_by="teacher", reason="no_student"),
        c.DeadLetter(source_topic="x", raw_b64="", raw_size=0, reason="r", kind="schema"),
    ]
    for ev in events:
        assert ev.schema_version == c.SCHEMA_VERSION and ev.event_id and ev.timestamp.tzinfo is not None
        assert decode(encode(ev), type(ev)) == ev


def test_outcome_rebuilds_the_trace() -> None:
    trace = make_trace(5, 9)
    outcome = c.TraceOutcomeEvent.from_trace(trace)
    assert outcome.n_steps == 9 and outcome.steps is None
    rebuilt = outcome.to_trace(trace.steps)
    assert rebuilt == trace
    # built without validating again: the same as validating the outcome's fields as a trace
    validated = c.AgentTrace(**outcome.model_dump(exclude={"event_id", "schema_version", "n_steps", "steps"}),
                             steps=trace.steps)
    assert rebuilt == validated and rebuilt.model_fields_set == validated.model_fields_set
    assert encode(rebuilt) == encode(validated) and decode(encode(rebuilt), c.AgentTrace) == rebuilt
    assert rebuilt.tools is not outcome.tools and rebuilt.metadata is not outcome.metadata
    with pytest.raises(ValidationError, match="n_steps is 3 but 9 steps"):
        c.TraceOutcomeEvent(**{**outcome.model_dump(), "n_steps": 3, "steps": trace.steps})


def test_unknown_step_type_is_an_error_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        c.TraceStep(step_type="meditation", content="x")
    assert "step_type" in str(err.value)
    raw = encode(c.TraceStepEvent(trace_id="t", task_id="k", seq=0, step=c.TraceStep(step_type="output")))
    bad = raw.replace(b'"output"', b'"meditation"')
    with pytest.raises(ContractError) as cerr:
        decode(bad, c.TraceStepEvent)
    assert cerr.value.kind == "schema" and "step.step_type" in cerr.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [("tool_name", "rm -rf /"), ("tool_name", "x" * 65), ("tool_call_id", "has space"), ("tool_call_id", "")],
)
def test_names_and_ids_follow_patterns(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as err:
        c.TraceStep(**{"step_type": "tool_call", "tool_name": "ok", field: value})
    assert field in str(err.value)


def test_tool_call_needs_a_tool_name() -> None:
    with pytest.raises(ValidationError, match="tool_call step needs tool_name"):
        c.TraceStep(step_type="tool_call")


def test_trace_ids_are_validated() -> None:
    with pytest.raises(ValidationError) as err:
        c.TraceStepEvent(trace_id="bad id\n", task_id="k", seq=0, step=c.TraceStep(step_type="output"))
    assert "trace_id" in str(err.value)
    with pytest.raises(ValidationError, match="seq"):
        c.TraceStepEvent(trace_id="t", task_id="k", seq=-1, step=c.TraceStep(step_type="output"))


def test_step_content_limit(small_limits) -> None:
    c.TraceStep(step_type="reasoning", content="x" * 100)
    with pytest.raises(ValidationError, match="content has 101 characters, the limit is 100"):
        c.TraceStep(step_type="reasoning", content="x" * 101)
    with pytest.raises(ValidationError, match="tool_result has 150 characters"):
        c.TraceStep(step_type="observation", tool_result="y" * 150)


def test_event_size_limit_on_both_sides(small_limits) -> None:
    trace = make_trace(1, 40)
    with pytest.raises(ContractError) as err:
        encode(c.TraceOutcomeEvent.from_trace(trace, include_steps=True))
    assert err.value.kind == "oversize" and "limit is 2000" in str(err.value)
    with pytest.raises(ContractError) as err2:
        decode(b"{" + b" " * 3000 + b"}", c.TraceStepEvent)
    assert err2.value.kind == "oversize"


@pytest.mark.parametrize(
    ("raw", "kind", "needle"),
    [
        (b"\xff\xfe\x00garbage", "invalid_json", "not JSON"),
        (b'{"trace_id": "t", "task_id": ', "invalid_json", "not JSON"),
        (b"[1, 2, 3]", "schema", "expected a JSON object"),
        (b'{"hello": "world"}', "schema", "trace_id: Field required"),
        (b'{"trace_id": 5, "task_id": "k", "seq": "x", "step": {"step_type": "output"}}', "schema", "seq"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json", "not JSON"),
    ],
)
def test_decode_errors_are_contract_errors(raw: bytes, kind: str, needle: str) -> None:
    with pytest.raises(ContractError) as err:
        decode(raw, c.TraceStepEvent)
    assert err.value.kind == kind and needle in err.value.message


def test_extra_fields_and_future_schema_versions_are_refused() -> None:
    ev = c.RouteDecision(trace_id="t", request_id="r", served_by="teacher", reason="sticky")
    data = json.loads(encode(ev))
    with pytest.raises(ContractError, match="Extra inputs"):
        decode(json.dumps({**data, "surprise": 1}), c.RouteDecision)
    with pytest.raises(ContractError, match="schema_version 99 is not supported"):
        decode(json.dumps({**data, "schema_version": 99}), c.RouteDecision)


def test_naive_timestamps_are_utc() -> None:
    step = c.TraceStep(step_type="output", timestamp=datetime(2026, 1, 1, 12, 0))
    assert step.timestamp.tzinfo is UTC


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        set_limits(Limits(0, 10))
