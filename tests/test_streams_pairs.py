"""DPO pair mining: which traces pair up, and the trl conversational format of the pair."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from stillflow.contracts import AgentTrace, PreferencePair, ToolSpec, TraceStep, decode, encode
from stillflow.ids import pair_id_for
from stillflow.quality import Scorer, evaluate_gates
from streams.formatting import trace_to_messages
from streams.pairs import (
    GAP,
    TEACHER_STUDENT,
    PairCandidate,
    build_pair,
    candidate_from,
    canonical_call_ids,
    is_failed,
    mine_pairs,
    select_pairs,
    split_prefix,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
CALC = ToolSpec(
    name="calculator",
    parameters={"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
)
SYSTEM = {"role": "system", "content": "be brief"}
USER = {"role": "user", "content": "6*7?"}


def cand(
    tid: str,
    overall: float,
    *,
    model: str = "teacher",
    failed: bool = False,
    passed: bool = True,
    task: str = "task-1",
    answer: str | None = None,
) -> PairCandidate:
    return PairCandidate(
        trace_id=tid,
        task_id=task,
        model_id=model,
        overall=overall,
        passed=passed,
        failed=failed,
        timestamp=T0 + timedelta(seconds=int(overall * 100)),
        messages=[SYSTEM, USER, {"role": "assistant", "content": answer or f"answer of {tid}"}],
        tools=[CALC.to_openai()],
    )


def rules(pairs: list[tuple[PairCandidate, PairCandidate, str]]) -> list[tuple[str, str, str]]:
    return [(c.trace_id, r.trace_id, rule) for c, r, rule in pairs]


def test_best_vs_worst_when_the_gap_is_larger_than_min_gap() -> None:
    cs = [cand("a", 0.9), cand("b", 0.8), cand("c", 0.6)]
    assert rules(select_pairs(cs)) == [("a", "c", GAP)]
    assert select_pairs(cs, min_gap=0.3) == []  # 0.9 - 0.6 is not > 0.3


def test_a_gap_of_exactly_min_gap_does_not_pair() -> None:
    assert select_pairs([cand("a", 0.9), cand("b", 0.7)]) == []
    assert rules(select_pairs([cand("a", 0.9), cand("b", 0.69)])) == [("a", "b", GAP)]


def test_single_candidate_and_other_tasks_do_not_pair() -> None:
    assert select_pairs([cand("a", 0.9)]) == []
    assert select_pairs([cand("a", 0.9, task="t1"), cand("b", 0.1, task="t2")]) == []


def test_teacher_vs_failed_student_even_with_a_small_gap() -> None:
    cs = [cand("teach", 0.8, model="teacher"), cand("stud", 0.7, model="student-v1", failed=True)]
    assert rules(select_pairs(cs)) == [("teach", "stud", TEACHER_STUDENT)]
    # the same model failing is not a teacher/student pair
    assert select_pairs([cand("a", 0.8), cand("b", 0.7, failed=True)]) == []
    # a failed trace of a higher score is never the rejected side
    assert select_pairs([cand("t", 0.5), cand("s", 0.6, model="student", failed=True)]) == []


def test_each_failed_student_pairs_with_the_best_non_failed_other_model() -> None:
    cs = [
        cand("t1", 0.95, model="teacher"),
        cand("t2", 0.85, model="teacher"),
        cand("s1", 0.80, model="student", failed=True),
        cand("s2", 0.40, model="student", failed=True),
    ]
    got = rules(select_pairs(cs))
    # the gap pair (t1, s2) is found by both rules and emitted once
    assert got == [("t1", "s2", GAP), ("t1", "s1", TEACHER_STUDENT)]


def test_require_chosen_passed() -> None:
    cs = [cand("a", 0.9, passed=False), cand("b", 0.1)]
    assert select_pairs(cs, require_chosen_passed=True) == []
    assert rules(select_pairs(cs)) == [("a", "b", GAP)]


def test_deterministic_regardless_of_input_order() -> None:
    cs = [cand("a", 0.9), cand("b", 0.9), cand("c", 0.1), cand("d", 0.1, task="t2"), cand("e", 0.95, task="t2")]
    assert rules(select_pairs(cs)) == rules(select_pairs(list(reversed(cs))))
    assert rules(select_pairs(cs)) == [("e", "d", GAP), ("a", "c", GAP)]  # tasks in sorted order


def test_split_prefix_keeps_identical_leading_messages_in_the_prompt() -> None:
    call = {
        "role": "assistant",
        "content": "look it up",
        "tool_calls": [{"id": "x", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}],
    }
    result = {"role": "tool", "tool_call_id": "x", "name": "calculator", "content": "42"}
    a = [SYSTEM, USER, call, result, {"role": "assistant", "content": "42"}]
    b = [SYSTEM, USER, call, result, {"role": "assistant", "content": "41"}]
    prompt, ca, rb = split_prefix(a, b)
    assert prompt == [SYSTEM, USER, call, result]
    assert ca == [{"role": "assistant", "content": "42"}] and rb == [{"role": "assistant", "content": "41"}]


def test_split_prefix_backs_up_so_both_sides_start_with_the_assistant() -> None:
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "x", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}],
    }
    a = [
        USER,
        call,
        {"role": "tool", "tool_call_id": "x", "name": "calculator", "content": "42"},
        {"role": "assistant", "content": "42"},
    ]
    b = [
        USER,
        call,
        {"role": "tool", "tool_call_id": "x", "name": "calculator", "content": "error"},
        {"role": "assistant", "content": "?"},
    ]
    prompt, ca, rb = split_prefix(a, b)
    assert prompt == [USER]
    assert ca[0]["role"] == "assistant" and rb[0]["role"] == "assistant"


def test_canonical_call_ids_make_equal_calls_compare_equal() -> None:
    def conv(cid: str) -> list[dict[str, Any]]:
        return [
            USER,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": cid, "type": "function", "function": {"name": "calculator", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": cid, "name": "calculator", "content": "42"},
        ]

    a, b = canonical_call_ids(conv("call_abc")), canonical_call_ids(conv("call_xyz"))
    assert a == b and a[1]["tool_calls"][0]["id"] == "call_1" and a[2]["tool_call_id"] == "call_1"
    assert conv("call_abc")[1]["tool_calls"][0]["id"] == "call_abc"  # the input is not changed


def _trace(
    tid: str, answer: str, *, model: str, success: bool = True, reasoning: str = "Use the calculator.", cid: str = "c1"
) -> AgentTrace:
    steps = [
        TraceStep(step_type="reasoning", content=reasoning),
        TraceStep(step_type="tool_call", tool_name="calculator", tool_args={"expression": "6*7"}, tool_call_id=cid),
        TraceStep(step_type="observation", tool_name="calculator", tool_call_id=cid, tool_result="42"),
        TraceStep(step_type="output", content=answer),
    ]
    return AgentTrace(
        trace_id=tid,
        task_id="task-1",
        input_text="What is 6*7?",
        system_prompt="be brief",
        tools=[CALC],
        steps=steps,
        final_output=answer,
        success=success,
        ground_truth="42",
        expected_steps=4,
        model_id=model,
        timestamp=T0,
    )


def _candidate(t: AgentTrace) -> PairCandidate:
    a = Scorer().assess(t)
    return candidate_from(t, a, evaluate_gates(t, a), messages=trace_to_messages(t))


def test_is_failed() -> None:
    good = _trace("a", "42", model="t")
    assert not is_failed(good, True)
    assert is_failed(good.model_copy(update={"success": False}), True)
    assert is_failed(good, False)  # wrong against ground truth although the agent said success
    assert not is_failed(good.model_copy(update={"ground_truth": None}), False)


def test_mined_pair_in_trl_conversational_format() -> None:
    teacher = _candidate(_trace("tr-teacher", "The answer is 42.", model="teacher", cid="call_t"))
    student = _candidate(_trace("tr-student", "It is 41.", model="student-v1", cid="call_s"))
    assert not teacher.failed and student.failed
    pairs = mine_pairs([student, teacher], window_start=T0)
    assert len(pairs) == 1
    p = pairs[0]
    assert p.chosen_trace_id == "tr-teacher" and p.rejected_trace_id == "tr-student"
    assert p.pair_id == pair_id_for("tr-teacher", "tr-student") == p.event_id
    assert p.pair_id != pair_id_for("tr-student", "tr-teacher")
    # the shared prefix (system, user, the identical tool call and its result) is the prompt
    assert [m["role"] for m in p.prompt] == ["system", "user", "assistant", "tool"]
    assert p.prompt[2]["tool_calls"][0]["id"] == "call_1" and p.prompt[3]["tool_call_id"] == "call_1"
    assert p.chosen == [{"role": "assistant", "content": "The answer is 42."}]
    assert p.rejected == [{"role": "assistant", "content": "It is 41."}]
    assert p.tools == [CALC.to_openai()]
    assert p.chosen_score == teacher.overall and p.rejected_score == student.overall
    assert p.metadata["rule"] in (GAP, TEACHER_STUDENT) and p.metadata["rejected_model"] == "student-v1"
    assert p.window_start == T0
    assert decode(encode(p), PreferencePair) == p
    assert mine_pairs([teacher, student], window_start=T0) == pairs  # deterministic


def test_conversations_that_differ_from_the_first_assistant_turn() -> None:
    a = _candidate(_trace("a", "The answer is 42.", model="teacher", reasoning="Use the calculator."))
    b = _candidate(_trace("b", "It is 41.", model="student", reasoning="Guess."))
    p = build_pair(a, b, GAP)
    assert p is not None
    assert p.prompt == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 6*7?"}]
    assert p.chosen[0]["content"] == "Use the calculator." and p.rejected[0]["content"] == "Guess."
    assert p.chosen[-1]["content"] == "The answer is 42."


def test_identical_conversations_make_no_pair() -> None:
    a = cand("a", 0.9, answer="same")
    b = cand("b", 0.1, answer="same")
    assert build_pair(a, b, GAP) is None
    assert mine_pairs([a, b]) == []


def test_messages_can_come_from_elsewhere() -> None:
    a = cand("a", 0.9).model_copy(update={"messages": None})
    b = cand("b", 0.1).model_copy(update={"messages": None})
    p = build_pair(
        a,
        b,
        GAP,
        chosen_messages=[USER, {"role": "assistant", "content": "x"}],
        rejected_messages=[USER, {"role": "assistant", "content": "y"}],
    )
    assert p is not None and p.prompt == [USER]
    try:
        build_pair(a, b, GAP)
    except ValueError as exc:
        assert "messages" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected ValueError")
