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
    trace.trace_id = "evil\n"  # models do not validate assignment; the head check does
    with pytest.raises(ContractError, match="trace_id: an id holds a control"):
        _step_event_head(trace)
    trace.agent_id = None  # type: ignore[assignment]
    trace.trace_id = "ok"
    with pytest.raises(ContractError, match="agent_id: an id must be text"):
        _step_event_head(trace)


@pytest.mark.parametrize("tid", ['evil","seq":999,"x":"', "suite/area/user_task_0", "tâche #7 \\ 🚀", "用户/任务"])
def test_ids_are_written_as_json_strings(tid: str) -> None:
    """Any printable id, JSON metacharacters included, is escaped: it cannot add or change fields."""
    trace = make_trace(1).model_copy(update={"trace_id": tid, "task_id": tid, "agent_id": tid})
    ev = decode(_step_event_bytes(_step_event_head(trace), 3, trace.steps[0]), TraceStepEvent)
    assert (ev.trace_id, ev.task_id, ev.agent_id, ev.seq) == (tid, tid, tid, 3)


def test_json_tool_results_survive() -> None:
    for result in ({"error": "ValidationError: x", "n": [1, 2.5, None]}, [1, "a"], 3, 0.5, True, None, ""):
        step = TraceStep(step_type="observation", tool_name="t", tool_result=result)
        trace = AgentTrace(task_id="k", input_text="q", steps=[step])
        ev = decode(_step_event_bytes(_step_event_head(trace), 0, step), TraceStepEvent)
        assert ev.step == step and ev.step.tool_result == result


def test_new_id_is_uuid4_hex() -> None:
    import uuid

    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for i in list(ids)[:50]:
        assert uuid.UUID(hex=i).version == 4 and len(i) == 32
