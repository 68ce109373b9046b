"""The emitter's direct step-event encoding decodes to exactly the event the model would build."""

from __future__ import annotations

import pytest

from stillflow.contracts import AgentTrace, ContractError, TraceStep, TraceStepEvent, decode, encode, new_id
from stillflow.sdk.emitter import _step_event_bytes, _step_event_head
from tests.helpers import make_trace


def test_fast_encoding_matches_the_model() -> None:
    trace = make_trace(42, 12)
    head = _step_event_head(trace)
    for seq, step in enumerate(trace.steps):
        fast = decode(_step_event_bytes(head, seq, step), TraceStepEvent)
        slow = TraceStepEvent(event_id=fast.event_id, trace_id=trace.trace_id, task_id=trace.task_id,
                              agent_id=trace.agent_id, seq=seq, step=step, timestamp=step.timestamp)
        assert fast == slow
        assert decode(encode(slow), TraceStepEvent) == fast


def test_awkward_content_survives() -> None:
    step = TraceStep(step_type="observation", tool_name="t", tool_result='quote " backslash \\ newline \n \u2028 🚀',
                     content="\x00\x1f")
    trace = AgentTrace(task_id="k", input_text="q", steps=[step])
    ev = decode(_step_event_bytes(_step_event_head(trace), 0, step), TraceStepEvent)
    assert ev.step == step


def test_mutated_ids_are_caught() -> None:
    trace = make_trace(1)
    trace.trace_id = 'evil","seq":999,"x":"'  # models do not validate assignment; the head check does
    with pytest.raises(ContractError, match="trace_id"):
        _step_event_head(trace)


def test_new_id_is_uuid4_hex() -> None:
    import uuid

    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for i in list(ids)[:50]:
        assert uuid.UUID(hex=i).version == 4 and len(i) == 32
