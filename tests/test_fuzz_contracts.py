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
    ContractError,
    Limits,
    TraceOutcomeEvent,
    TraceStepEvent,
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
from tests.helpers import sample_events

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = FUZZ_LIMITS


SAMPLES = sample_events()
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
