"""The per-trace pipeline (score → gate → format → redact) end to end, and its cost."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from stillflow.contracts import (
    AgentTrace,
    PreferencePair,
    SFTExample,
    ToolSpec,
    TraceOutcomeEvent,
    TraceStep,
    TraceStepEvent,
    decode,
    encode,
)
from stillflow.quality import QualitySettings, ScoreWeights
from streams.assembly import add_outcome, add_step
from streams.pairs import PairCandidate, mine_pairs
from streams.pipeline import TracePipeline
from streams.settings import StreamsSection, StreamsSettings
from streams.windows import WindowBook, book_advance, book_observe, merge_candidate, to_closed_event

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TOOLS = [
    ToolSpec(
        name="lookup_customer",
        description="find a customer",
        parameters={
            "type": "object",
            "properties": {"email": {"type": "string"}},
            "required": ["email"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        name="get_orders",
        description="orders of a customer",
        parameters={
            "type": "object",
            "properties": {"customer_id": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}},
            "required": ["customer_id"],
        },
    ),
    ToolSpec(
        name="refund",
        description="refund an order",
        parameters={
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
            "required": ["order_id", "amount"],
        },
    ),
]


def ten_step_trace(
    i: int = 0,
    *,
    model: str = "teacher",
    answer: str = "Refunded 49.99 EUR for order ORD-2024-000123.",
    success: bool = True,
) -> AgentTrace:
    steps = [
        TraceStep(
            step_type="reasoning",
            content="The customer wrote from jane.doe@example.com; "
            "I should use lookup_customer to find the account before anything else.",
        ),
        TraceStep(
            step_type="tool_call",
            tool_name="lookup_customer",
            tool_args={"email": "jane.doe@example.com"},
            tool_call_id=f"c{i}-1",
        ),
        TraceStep(
            step_type="observation",
            tool_name="lookup_customer",
            tool_call_id=f"c{i}-1",
            tool_result=json.dumps(
                {"customer_id": "CUS-88213", "name": "Jane Doe", "phone": "+1 415-555-0132", "tier": "gold"}
            ),
        ),
        TraceStep(
            step_type="reasoning",
            content="Found customer CUS-88213. Next, get_orders to see the recent orders and find the damaged one.",
        ),
        TraceStep(
            step_type="tool_call",
            tool_name="get_orders",
            tool_args={"customer_id": "CUS-88213", "limit": 5},
            tool_call_id=f"c{i}-2",
        ),
        TraceStep(
            step_type="observation",
            tool_name="get_orders",
            tool_call_id=f"c{i}-2",
            tool_result=json.dumps(
                [
                    {"order_id": "ORD-2024-000123", "total": 49.99, "date": "2024-03-15"},
                    {"order_id": "ORD-2024-000099", "total": 12.5, "date": "2024-02-02"},
                ]
            ),
        ),
        TraceStep(
            step_type="reasoning",
            content="Order ORD-2024-000123 from 2024-03-15 matches the complaint; "
            "refund it in full with the refund tool.",
        ),
        TraceStep(
            step_type="tool_call",
            tool_name="refund",
            tool_args={"order_id": "ORD-2024-000123", "amount": 49.99},
            tool_call_id=f"c{i}-3",
        ),
        TraceStep(
            step_type="observation",
            tool_name="refund",
            tool_call_id=f"c{i}-3",
            tool_result='{"status": "ok", "refund_id": "RF-5521"}',
        ),
        TraceStep(step_type="output", content=answer),
    ]
    return AgentTrace(
        trace_id=f"tr-{i}",
        task_id="refund-1",
        input_text="My order arrived broken, please refund it. I'm jane.doe@example.com.",
        system_prompt="You are a support agent.",
        tools=TOOLS,
        steps=steps,
        final_output=answer,
        success=success,
        ground_truth="ORD-2024-000123",
        expected_steps=10,
        model_id=model,
        timestamp=T0,
    )


def test_a_good_trace_becomes_a_redacted_sft_example() -> None:
    p = TracePipeline.from_settings(StreamsSettings())
    out = p.process(ten_step_trace(), reference_steps=10, window_start=T0)
    assert out.verdict.passed, out.verdict.reasons
    assert out.scored.passed and out.scored.event_id == "scored-tr-0"
    ex = out.example
    assert ex is not None and ex.example_id == "sft-tr-0" and ex.window_start == T0
    assert out.redactions == {"email": 3, "phone": 1}
    dumped = ex.model_dump_json()
    assert "jane.doe@example.com" not in dumped and "415-555-0132" not in dumped
    assert "ORD-2024-000123" in dumped and "49.99" in dumped  # order ids and prices stay
    args = json.loads(ex.messages[2]["tool_calls"][0]["function"]["arguments"])
    assert args == {"email": "[EMAIL]"}
    assert decode(encode(ex), SFTExample) == ex
    # the candidate and the scored trace (audit topic) are redacted too; the score is the raw trace's
    assert out.candidate.messages is not None and "jane.doe@example.com" not in json.dumps(out.candidate.messages)
    scored = out.scored.model_dump_json()
    assert "jane.doe@example.com" not in scored and "415-555-0132" not in scored and "[EMAIL]" in scored
    assert out.scored.trace.steps[1].tool_args == {"email": "[EMAIL]"}
    assert "ORD-2024-000123" in scored


def test_scored_traces_stay_raw_only_when_asked() -> None:
    settings = StreamsSettings()
    raw = TracePipeline.from_settings(settings.model_copy(
        update={"streams": settings.streams.model_copy(update={"redact_scored": False})}))
    out = raw.process(ten_step_trace(), reference_steps=10, window_start=T0)
    assert "jane.doe@example.com" in out.scored.model_dump_json()
    assert out.example is not None and "jane.doe@example.com" not in out.example.model_dump_json()
    red = TracePipeline.from_settings(settings).process(ten_step_trace(), reference_steps=10, window_start=T0)
    assert red.scored.score == out.scored.score and red.scored.rejected_by == out.scored.rejected_by


def test_from_settings_scores_and_gates_by_the_quality_section() -> None:
    weights = ScoreWeights(correctness=1, efficiency=0, tool_selection=0, safety=0, reasoning_quality=0)
    settings = StreamsSettings(
        quality=QualitySettings(weights=weights, min_score=0.5, step_budget_factor=1.0, unsafe_patterns=("ORD-",)),
        streams=StreamsSection(redact_pii=False),
    )
    p = TracePipeline.from_settings(settings)
    assert p.gates.config.min_score == 0.5 and p.gates.config.step_budget_factor == 1.0
    assert p.scorer.weights == weights.normalised() and p.redact is False
    out = p.process(ten_step_trace())
    assert out.assessment.score.safety == 0.0  # "ORD-" is in a tool call's arguments
    assert "safety" in out.verdict.rejected_by and out.redactions == {}


def test_a_rejected_trace_has_no_example_but_is_a_candidate() -> None:
    p = TracePipeline()
    out = p.process(ten_step_trace(1, answer="I could not do it.", success=False))
    assert not out.verdict.passed and out.example is None
    assert out.verdict.rejected_by[:2] == ["success", "ground_truth"]
    assert out.candidate.failed


def test_assembled_traces_through_the_pipeline_into_a_window_and_pairs() -> None:
    """Steps → assembler → pipeline → window → close → pairs, as the app will wire it."""
    p = TracePipeline()
    traces = [
        ten_step_trace(1, model="teacher"),
        ten_step_trace(2, model="student-v1", answer="I refunded the order ORD-2024-000099.", success=True),
    ]
    # the window agent's state: the book, and each task's candidates under `c:<window key>:<task>`
    book = WindowBook()
    cands: dict[str, list[PairCandidate]] = {}
    for t in traces:
        state = None
        done = None
        for seq, s in reversed(list(enumerate(t.steps))):  # steps arrive backwards
            r = add_step(state, TraceStepEvent(trace_id=t.trace_id, task_id=t.task_id, seq=seq, step=s), now=T0)
            state = r.state
        r = add_outcome(state, TraceOutcomeEvent.from_trace(t), now=T0)
        done = r.trace
        assert done is not None and done.model_dump() == t.model_dump()
        out = p.process(done)
        entry = book_observe(book, done.timestamp, task_id=out.candidate.task_id, size_s=60,
                             passed=out.verdict.passed, sft=out.example is not None, max_tasks=256)
        assert not entry.late and entry.keep_candidate
        key = f"c:{entry.window_key}:{out.candidate.task_id}"
        cands[key], dropped = merge_candidate(cands.get(key, []), out.candidate, 4)
        assert dropped == 0
        book, closing = book_advance(entry.book, done.timestamp, grace_s=10)
        assert closing == []
    assert len(book.windows) == 1
    book, closing = book_advance(book, datetime(2026, 3, 1, 12, 5, tzinfo=UTC), grace_s=10)
    ((closed, tasks),) = closing
    assert book.windows == {} and tasks == [traces[0].task_id]
    candidates = [c for task in tasks for c in cands[f"c:{entry.window_key}:{task}"]]
    assert len(candidates) == 2
    pairs = mine_pairs(candidates, window_start=closed.start)
    assert len(pairs) == 1
    pair = pairs[0]
    assert pair.chosen_trace_id == "tr-1" and pair.rejected_trace_id == "tr-2"
    assert "jane.doe@example.com" not in pair.model_dump_json()
    assert decode(encode(pair), PreferencePair) == pair
    e = to_closed_event(closed, n_pairs=len(pairs))
    assert (e.n_traces, e.n_passed, e.n_sft, e.n_pairs) == (2, 1, 1, 1)
