"""Property-based fuzzing of `stillflow.contracts.decode` for every event model.

The property, for any input: `decode` either returns an event that encodes and decodes back to itself,
or raises `ContractError` with a known kind and a reason — never any other exception. Counts of
fuzzed inputs per decoder are printed in the terminal summary (tests/fuzz_counts.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from stillflow.contracts import (
    AgentTrace,
    ContractError,
    DatasetWindowClosed,
    DeadLetter,
    Limits,
    ModelVersionEvent,
    OffsetRange,
    PreferencePair,
    RouteDecision,
    ScoredTrace,
    SFTExample,
    ToolSpec,
    TraceOutcomeEvent,
    TraceStep,
    TraceStepEvent,
    TrainingRunEvent,
    TrajectoryScore,
    decode,
    encode,
    get_limits,
    set_limits,
)
from tests.fuzz_counts import count
from tests.fuzz_inputs import (  # noqa: F401 - small_limits: a fixture
    FUZZ,
    FUZZ_LIMITS,
    KINDS,
    NASTY,
    any_record,
    bad_record,
    json_values,
    small_limits,
    valid_outcome,
    valid_step,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = FUZZ_LIMITS


def _samples() -> dict[type[BaseModel], BaseModel]:
    step = TraceStep(step_type="tool_call", tool_name="calc", tool_args={"expr": "1+1"}, tool_call_id="c1",
                     timestamp=T0)
    trace = AgentTrace(trace_id="t1", task_id="k1", input_text="q", steps=[step], final_output="2", success=True,
                       tools=[ToolSpec(name="calc")], timestamp=T0)
    score = TrajectoryScore(correctness=1, efficiency=1, tool_selection=1, safety=1, reasoning_quality=1, overall=1)
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "2"}]
    return {
        TraceStepEvent: TraceStepEvent(trace_id="t1", task_id="k1", seq=0, step=step, timestamp=T0),
        TraceOutcomeEvent: TraceOutcomeEvent.from_trace(trace, include_steps=True),
        AgentTrace: trace,
        ScoredTrace: ScoredTrace(trace=trace, score=score, passed=True, timestamp=T0),
        SFTExample: SFTExample(example_id="e1", trace_id="t1", task_id="k1", messages=msgs, score=1, timestamp=T0),
        PreferencePair: PreferencePair(pair_id="p1", task_id="k1", chosen_trace_id="t1", rejected_trace_id="t2",
                                       prompt=msgs[:1], chosen=msgs[1:], rejected=msgs[1:], chosen_score=1,
                                       rejected_score=0, timestamp=T0),
        DatasetWindowClosed: DatasetWindowClosed(window_id="w1", window_start=T0, window_end=T0, timestamp=T0,
                                                 offsets=[OffsetRange(topic="x", partition=0, first=0, last=1)]),
        TrainingRunEvent: TrainingRunEvent(run_id="r1", status="finished", model_name="m", metrics={"a": 1.0},
                                           timestamp=T0),
        ModelVersionEvent: ModelVersionEvent(model_name="m", version="v1", status="promoted", manifest_sha256="0" * 64,
                                             timestamp=T0),
        RouteDecision: RouteDecision(trace_id="t1", request_id="r1", served_by="teacher", reason="no_student",
                                     timestamp=T0),
        DeadLetter: DeadLetter(source_topic="s", raw_b64="", raw_size=0, reason="r", kind="schema", timestamp=T0),
    }


SAMPLES = _samples()
MODELS = list(SAMPLES)
BASES = {m: encode(ev) for m, ev in SAMPLES.items()}
REQUIRED = {m: tuple(n for n, f in m.model_fields.items() if f.is_required()) for m in MODELS}

pytestmark = pytest.mark.usefixtures("small_limits")


def check_decode(raw: bytes | str, model: type[BaseModel]) -> BaseModel | None:
    """The decode property; returns the event, or None when it was refused."""
    count(f"contracts.decode[{model.__name__}]")
    try:
        event = decode(raw, model)
    except ContractError as exc:
        assert exc.kind in KINDS - {"empty"}, exc
        assert exc.message
        return None
    try:
        again = encode(event)
    except ContractError as exc:  # defaults filled in can take a record at the limit over it
        assert exc.kind == "oversize" and len(raw) > LIMITS.max_event_bytes - 4096
        return event
    assert decode(again, model) == event
    return event


def _name(m: type) -> str:
    return m.__name__


@pytest.mark.parametrize("model", MODELS, ids=_name)
@FUZZ
@given(raw=st.binary(max_size=400))
def test_arbitrary_bytes(model, raw: bytes) -> None:
    check_decode(raw, model)


@pytest.mark.parametrize("model", MODELS, ids=_name)
@FUZZ
@given(value=json_values)
def test_arbitrary_json(model, value) -> None:
    check_decode(json.dumps(value).encode(), model)


@pytest.mark.parametrize("model", MODELS, ids=_name)
@FUZZ
@given(data=st.data())
def test_bad_records_are_refused(model, data) -> None:
    raw = data.draw(bad_record(BASES[model], REQUIRED[model]))
    assert check_decode(raw, model) is None, raw[:300]


@pytest.mark.parametrize("model", MODELS, ids=_name)
@FUZZ
@given(data=st.data())
def test_mutated_records(model, data) -> None:
    check_decode(data.draw(any_record(BASES[model], REQUIRED[model])), model)


@FUZZ
@given(step=valid_step())
def test_valid_steps_with_awkward_unicode_decode(step) -> None:
    event = check_decode(json.dumps(step, ensure_ascii=False).encode(), TraceStepEvent)
    assert event is not None
    assert check_decode(json.dumps(step, ensure_ascii=True).encode(), TraceStepEvent) == event  # \u escapes too


@FUZZ
@given(outcome=valid_outcome())
def test_valid_outcomes_decode(outcome) -> None:
    assert check_decode(json.dumps(outcome, ensure_ascii=False).encode(), TraceOutcomeEvent) is not None


@FUZZ
@given(raw=st.text(max_size=200))
def test_str_input(raw: str) -> None:
    check_decode(raw, TraceStepEvent)


def test_str_with_lone_surrogate_is_refused() -> None:
    assert check_decode('{"trace_id": "\ud800"}', TraceStepEvent) is None


@pytest.mark.parametrize(("name", "raw", "kind"), NASTY, ids=[n for n, _, _ in NASTY])
def test_nasty_corpus(name: str, raw: bytes, kind: str) -> None:
    old = get_limits()
    set_limits(Limits())  # 1 MiB: the 100k-deep record is judged for its nesting, not its size
    try:
        for model in (TraceStepEvent, TraceOutcomeEvent):
            count(f"contracts.decode[{model.__name__}]")
            with pytest.raises(ContractError) as err:
                decode(raw, model)
            assert err.value.kind == kind, err.value
    finally:
        set_limits(old)
