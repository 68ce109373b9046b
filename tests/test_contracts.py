"""Contracts: validation with clear messages, limits, codec round trips. No broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from stillflow import contracts as c
from stillflow.contracts import ContractError, Limits, decode, encode, get_limits, set_limits
from tests.helpers import big_trace, make_trace, sample_events


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
    [("tool_name", "rm -rf /"), ("tool_name", "x" * 65), ("tool_call_id", "has\nnewline"), ("tool_call_id", ""),
     ("tool_call_id", " padded")],
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
    # a JSON result counts as rendered: 98 characters of text inside ["..."] is 102
    c.TraceStep(step_type="observation", tool_result=["y" * 96])
    with pytest.raises(ValidationError, match="tool_result has 102 characters as rendered"):
        c.TraceStep(step_type="observation", tool_result=["y" * 98])


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


# -- what real agents record (schema version 2) ----------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "suite/area/user_task_0", "agent@team#7", "a=b+c|d", "tâche/été/№5", "用户任务/3", "with inner space",
    "call_9fGh2KxL0pQ", "toolu_01A09q90qw90lq917835lq9", "0b9e6f2c-3c5e-4f1e-9a4b-2d8c1f7e6a50", "7", "🚀",
    "x" * 256, "é" * 256,
])
def test_ids_of_real_agents_pass(value: str) -> None:
    step = c.TraceStep(step_type="tool_call", tool_name="t", tool_call_id=value)
    ev = c.TraceStepEvent(trace_id=value, task_id=value, agent_id=value, seq=0, step=step)
    assert decode(encode(ev), c.TraceStepEvent) == ev
    assert c.is_valid_id(value)


@pytest.mark.parametrize(("value", "why"), [
    ("", "must not be empty"), (" a", "whitespace"), ("a ", "whitespace"), ("a\tb", "control"),
    ("a\nb", "control"), ("a\x00", "control"), ("a\x7f", "control"), ("t\u202e1", "U+202E"),
    ("a\u200db", "U+200D"), ("a\u2028", "U+2028"), ("x" * 257, "257 characters, the limit is 256"),
    (True, "valid string"), (1.5, "valid string"),
])
def test_bad_ids_are_refused_with_the_reason(value: object, why: str) -> None:
    with pytest.raises(ValidationError) as err:
        c.TraceStepEvent(trace_id=value, task_id="k", seq=0, step=c.TraceStep(step_type="output"))
    assert "trace_id" in str(err.value) and why in str(err.value)
    assert not c.is_valid_id(value)


def test_whole_numbers_are_ids_and_the_bound_is_a_setting() -> None:
    ev = c.TraceStepEvent(trace_id=17, task_id=0, seq=0, step=c.TraceStep(step_type="output"))
    assert (ev.trace_id, ev.task_id) == ("17", "0")
    old = get_limits()
    set_limits(Limits(max_id_chars=8))
    try:
        assert c.is_valid_id("12345678") and not c.is_valid_id("123456789")
        with pytest.raises(ValidationError, match="the limit is 8"):
            c.AgentTrace(task_id="123456789", input_text="q")
    finally:
        set_limits(old)


@pytest.mark.parametrize(("result", "rendered"), [
    ("plain text", "plain text"), ("", ""), ({"error": "ValidationError: bad", "ok": False},
                                            '{"error":"ValidationError: bad","ok":false}'),
    ([1, "two", None, {"x": 3.5}], '[1,"two",null,{"x":3.5}]'), (42, "42"), (0.25, "0.25"), (True, "true"),
    ({"b": 1, "a": 2}, '{"b":1,"a":2}'),  # the order the tool returned
    ({"city": "Zürich"}, '{"city":"Zürich"}'),
])
def test_tool_results_are_any_json_rendered_deterministically(result: object, rendered: str) -> None:
    step = c.TraceStep(step_type="observation", tool_name="t", tool_result=result)
    assert step.tool_result == result and c.render_tool_result(result) == rendered
    assert step.observation_text() == rendered
    back = decode(encode(c.TraceStepEvent(trace_id="t", task_id="k", seq=0, step=step)), c.TraceStepEvent)
    assert back.step.tool_result == result and back.step.observation_text() == rendered


def test_a_missing_result_reads_as_the_content_or_null() -> None:
    assert c.TraceStep(step_type="observation", content="seen").observation_text() == "seen"
    assert c.TraceStep(step_type="observation", tool_result=None).observation_text() == "null"


def test_tool_args_may_be_json_text() -> None:
    step = c.TraceStep(step_type="tool_call", tool_name="t", tool_args='{"q": "x", "n": 2}')
    assert step.tool_args == {"q": "x", "n": 2}
    with pytest.raises(ValidationError, match=r"(?s)tool_args.*valid dictionary"):
        c.TraceStep(step_type="tool_call", tool_name="t", tool_args="[1, 2]")
    with pytest.raises(ValidationError, match=r"(?s)tool_args.*Invalid JSON"):
        c.TraceStep(step_type="tool_call", tool_name="t", tool_args="q=x")


def _trace_row() -> dict:
    return {"trace_id": "t1", "task_id": "k1", "input_text": "q", "steps": [], "final_output": "a"}


@pytest.mark.parametrize("field", [
    "agent_id", "system_prompt", "tools", "steps", "final_output", "success", "error", "quality_score",
    "model_id", "total_tokens", "wall_time_seconds", "ground_truth", "expected_steps", "cost_usd", "metadata",
    "timestamp", "trace_id",
])
def test_null_means_absent_for_every_optional_field(field: str) -> None:
    trace = c.AgentTrace.model_validate({**_trace_row(), field: None})
    default = c.AgentTrace.model_fields[field]
    if default.default_factory is None:
        assert getattr(trace, field) == default.default
    assert encode(trace)  # and it encodes


def test_null_for_a_required_field_is_still_an_error() -> None:
    with pytest.raises(ValidationError, match="task_id"):
        c.AgentTrace.model_validate({**_trace_row(), "task_id": None})


def test_every_events_optional_fields_take_null() -> None:
    """Every event model, decoded, built and validated: each field that has a default takes null as absent
    (nested ones too: a step's content inside an outcome)."""
    for model, sample in sample_events().items():
        data = json.loads(encode(sample))
        for name, f in model.model_fields.items():
            if f.is_required():
                continue
            raw = json.dumps({**data, name: None})
            ev = decode(raw, model)
            if f.default_factory is not None:  # a fresh id or "now": different at each validation
                continue
            assert getattr(ev, name) == f.default, (model.__name__, name)
            assert model.model_validate_json(raw) == ev and model(**{**data, name: None}) == ev
    outcome = json.loads(encode(c.TraceOutcomeEvent.from_trace(make_trace(1, 3), include_steps=True)))
    outcome["steps"][1].update(content=None, tool_args=None, tool_result=None)
    outcome["tools"][0]["description"] = None
    ev = decode(json.dumps(outcome), c.TraceOutcomeEvent)
    assert ev.steps[1].content == "" and ev.tools[0].description == ""


def test_nested_models_are_validated_in_rust() -> None:
    """The retry that makes null mean absent overrides __init__ without turning pydantic's nested validation
    into Python calls (~40 µs more per trace)."""
    models = [m for m in vars(c).values() if isinstance(m, type) and issubclass(m, c._Model)]
    assert len(models) >= 15 and not any(m.__pydantic_custom_init__ for m in models)


def test_metadata_labels_become_text_and_null_labels_go() -> None:
    trace = c.AgentTrace.model_validate({**_trace_row(), "metadata": {
        "suite": "workspace", "attempt": 2, "injected": False, "score": 0.5, "gone": None, "tags": ["a", "b"]}})
    assert trace.metadata == {"suite": "workspace", "attempt": "2", "injected": "false", "score": "0.5",
                              "tags": '["a","b"]'}


def test_previous_schema_version_still_decodes() -> None:
    """A version 1 record (narrow ids, string results, no nulls) reads as it did; version 2 adds the shapes."""
    v1 = (b'{"event_id":"e1","schema_version":1,"timestamp":"2026-01-01T00:00:00Z","trace_id":"t-1",'
          b'"task_id":"k:1","agent_id":"agent","seq":0,"step":{"step_type":"observation","content":"",'
          b'"tool_name":"calc","tool_args":null,"tool_result":"42","tool_call_id":"c1",'
          b'"timestamp":"2026-01-01T00:00:00Z"}}')
    ev = decode(v1, c.TraceStepEvent)
    assert ev.schema_version == 1 and ev.step.tool_result == "42" and ev.step.observation_text() == "42"
    v2 = v1.replace(b'"schema_version":1', b'"schema_version":2').replace(b'"k:1"', b'"suite/area/user_task_0"')
    v2 = v2.replace(b'"tool_result":"42"', b'"tool_result":{"value":42}')
    ev2 = decode(v2, c.TraceStepEvent)
    assert ev2.schema_version == 2 == c.SCHEMA_VERSION and ev2.task_id == "suite/area/user_task_0"
    assert ev2.step.observation_text() == '{"value":42}'
    assert decode(encode(ev2), c.TraceStepEvent) == ev2


def test_a_trace_of_200_steps_and_1_mb_passes_the_default_limits() -> None:
    assert get_limits() == Limits()
    trace = big_trace()
    size = len(encode(trace))
    assert 950_000 < size <= 1_050_000, size
    assert decode(encode(trace), c.AgentTrace) == trace
    outcome = c.TraceOutcomeEvent.from_trace(trace)
    assert decode(encode(outcome), c.TraceOutcomeEvent) == outcome
    for seq, step in enumerate(trace.steps):
        encode(c.TraceStepEvent(trace_id=trace.trace_id, task_id=trace.task_id, seq=seq, step=step))
    score = c.TrajectoryScore(correctness=1, efficiency=1, tool_selection=1, safety=1, reasoning_quality=1, overall=1)
    encode(c.ScoredTrace(trace=trace, score=score, passed=True))  # what the stream publishes for it
