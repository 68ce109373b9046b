"""SFT formatting: OpenAI/trl messages with tool_calls, tool results and tools."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from stillflow.contracts import AgentTrace, SFTExample, ToolSpec, TraceStep, TrajectoryScore, decode, encode
from streams.formatting import FormatError, sft_row, to_sft_example, tools_for, trace_to_messages

T0 = datetime(2026, 3, 1, tzinfo=UTC)
CALC = ToolSpec(
    name="calculator",
    description="arithmetic",
    parameters={"type": "object", "properties": {"expression": {"type": "string"}}},
)
WEATHER = ToolSpec(
    name="weather",
    description="weather by city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


def r(text: str) -> TraceStep:
    return TraceStep(step_type="reasoning", content=text)


def call(name: str, args: dict[str, Any] | None, cid: str | None, content: str = "") -> TraceStep:
    return TraceStep(step_type="tool_call", tool_name=name, tool_args=args, tool_call_id=cid, content=content)


def obs(name: str | None, result: str, cid: str | None) -> TraceStep:
    return TraceStep(step_type="observation", tool_name=name, tool_call_id=cid, tool_result=result)


def out(text: str) -> TraceStep:
    return TraceStep(step_type="output", content=text)


def trace(steps: list[TraceStep], **kw: Any) -> AgentTrace:
    base: dict[str, Any] = dict(
        trace_id="tr-1",
        task_id="task-1",
        input_text="What is 6*7?",
        system_prompt="You are a careful agent.",
        tools=[CALC, WEATHER],
        final_output="The answer is 42.",
        success=True,
        timestamp=T0,
        metadata={"family": "math", "split": "train"},
    )
    base.update(kw)
    return AgentTrace(steps=steps, **base)


def tc(cid: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def check_trl_structure(row: dict[str, Any]) -> None:
    """What trl's SFTTrainer (and OpenAI's API) expect of a tool-calling conversation."""
    assert set(row) == {"messages", "tools"}
    msgs = row["messages"]
    assert msgs and msgs[-1]["role"] == "assistant" and "tool_calls" not in msgs[-1]
    open_ids: list[str] = []
    for i, m in enumerate(msgs):
        assert m["role"] in {"system", "user", "assistant", "tool"}
        assert isinstance(m["content"], str)
        if m["role"] == "system":
            assert i == 0
        if m["role"] == "assistant" and "tool_calls" in m:
            assert not open_ids, "a new tool turn before the previous calls were answered"
            assert m["tool_calls"]
            for c in m["tool_calls"]:
                assert set(c) == {"id", "type", "function"} and c["type"] == "function"
                assert set(c["function"]) == {"name", "arguments"}
                assert isinstance(c["function"]["arguments"], str)
                assert isinstance(json.loads(c["function"]["arguments"]), dict)
                open_ids.append(c["id"])
        elif m["role"] == "tool":
            assert set(m) == {"role", "tool_call_id", "name", "content"}
            assert m["tool_call_id"] in open_ids
            open_ids.remove(m["tool_call_id"])
        else:
            assert not open_ids, f"{m['role']} message while tool calls are unanswered"
    assert not open_ids
    for t in row["tools"]:
        assert t["type"] == "function" and set(t["function"]) == {"name", "description", "parameters"}


def test_the_canonical_trace() -> None:
    t = trace(
        [
            r("I will use the calculator."),
            call("calculator", {"expression": "6*7"}, "c1"),
            obs("calculator", "42", "c1"),
            out("The answer is 42."),
        ]
    )
    assert trace_to_messages(t) == [
        {"role": "system", "content": "You are a careful agent."},
        {"role": "user", "content": "What is 6*7?"},
        {
            "role": "assistant",
            "content": "I will use the calculator.",
            "tool_calls": [tc("c1", "calculator", {"expression": "6*7"})],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "calculator", "content": "42"},
        {"role": "assistant", "content": "The answer is 42."},
    ]
    check_trl_structure(sft_row(to_sft_example(t, 0.9)))


def test_no_system_prompt_starts_with_the_user() -> None:
    msgs = trace_to_messages(trace([out("The answer is 42.")], system_prompt=""))
    assert msgs == [{"role": "user", "content": "What is 6*7?"}, {"role": "assistant", "content": "The answer is 42."}]


def test_consecutive_calls_share_one_turn_and_results_match_by_id() -> None:
    t = trace(
        [
            r("Two cities at once."),
            call("weather", {"city": "Paris"}, "a"),
            r("And the second one."),
            call("weather", {"city": "Oslo"}, "b"),
            obs("weather", "sunny", "b"),  # results in another order
            obs("weather", "rain", "a"),
            r("Now I can compare."),
            out("Paris is sunnier? No: Oslo is sunny."),
        ],
        final_output="Paris is sunnier? No: Oslo is sunny.",
    )
    msgs = trace_to_messages(t)
    assert msgs[2] == {
        "role": "assistant",
        "content": "Two cities at once.\n\nAnd the second one.",
        "tool_calls": [tc("a", "weather", {"city": "Paris"}), tc("b", "weather", {"city": "Oslo"})],
    }
    assert msgs[3] == {"role": "tool", "tool_call_id": "b", "name": "weather", "content": "sunny"}
    assert msgs[4] == {"role": "tool", "tool_call_id": "a", "name": "weather", "content": "rain"}
    assert msgs[5] == {"role": "assistant", "content": "Now I can compare.\n\nParis is sunnier? No: Oslo is sunny."}
    assert len(msgs) == 6
    check_trl_structure(sft_row(to_sft_example(t, 0.5)))


def test_several_turns() -> None:
    t = trace(
        [
            call("weather", {"city": "Paris"}, "a", content="First Paris."),
            obs("weather", "12C", "a"),
            r("Then the difference."),
            call("calculator", {"expression": "20-12"}, "b"),
            obs("calculator", "8", "b"),
            out("8 degrees."),
        ],
        final_output="8 degrees.",
    )
    msgs = trace_to_messages(t)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert msgs[2]["content"] == "First Paris." and msgs[4]["content"] == "Then the difference."
    assert msgs[6]["content"] == "8 degrees."
    check_trl_structure(sft_row(to_sft_example(t, 0.5)))


def test_a_call_without_observation_gets_an_empty_result() -> None:
    t = trace([call("calculator", {"expression": "6*7"}, "c1"), out("The answer is 42.")])
    msgs = trace_to_messages(t)
    assert msgs[3] == {"role": "tool", "tool_call_id": "c1", "name": "calculator", "content": ""}
    assert msgs[4] == {"role": "assistant", "content": "The answer is 42."}
    check_trl_structure(sft_row(to_sft_example(t, 0.5)))
    # also when a later turn starts before the first was answered
    t2 = trace(
        [
            call("calculator", {"expression": "1"}, "a"),
            call("calculator", {"expression": "2"}, "b"),
            obs("calculator", "2", "b"),
            r("again"),
            call("calculator", {"expression": "3"}, "c"),
            obs("calculator", "3", "c"),
            out("6"),
        ]
    )
    check_trl_structure(sft_row(to_sft_example(t2, 0.5)))


def test_ids_generated_when_missing_and_results_matched_by_name_or_order() -> None:
    t = trace(
        [
            call("weather", {"city": "Rome"}, None),
            call("calculator", {"expression": "1+1"}, None),
            obs("calculator", "2", None),  # by name
            obs(None, "hot", None),  # by order: the oldest open call
            out("The answer is 42."),
        ]
    )
    msgs = trace_to_messages(t)
    ids = [c["id"] for c in msgs[2]["tool_calls"]]
    assert ids == ["call_0", "call_1"]
    assert msgs[3] == {"role": "tool", "tool_call_id": "call_1", "name": "calculator", "content": "2"}
    assert msgs[4] == {"role": "tool", "tool_call_id": "call_0", "name": "weather", "content": "hot"}
    check_trl_structure(sft_row(to_sft_example(t, 0.5)))


def test_an_observation_that_answers_no_call_is_dropped() -> None:
    t = trace(
        [
            obs("calculator", "orphan", "zz"),
            r("thinking"),
            call("calculator", {"expression": "1"}, "c1"),
            obs("calculator", "1", "c1"),
            obs("calculator", "again", "c1"),
            out("The answer is 42."),
        ]
    )
    msgs = trace_to_messages(t)
    assert [m.get("content") for m in msgs if m["role"] == "tool"] == ["1"]
    check_trl_structure(sft_row(to_sft_example(t, 0.5)))


def test_arguments_are_json_strings_and_unicode_is_kept() -> None:
    t = trace(
        [
            call("weather", {"city": "Zürich 東京 🚀", "days": [1, 2], "opts": {"metric": True}}, "c1"),
            obs("weather", "☀️ 21°C", "c1"),
            out("Warm ☀️"),
        ],
        final_output="Warm ☀️",
    )
    msgs = trace_to_messages(t)
    args = msgs[2]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(args, str) and "Zürich 東京 🚀" in args
    assert json.loads(args) == {"city": "Zürich 東京 🚀", "days": [1, 2], "opts": {"metric": True}}
    assert msgs[3]["content"] == "☀️ 21°C" and msgs[-1]["content"] == "Warm ☀️"
    assert (
        trace_to_messages(trace([call("calculator", None, "c"), obs("calculator", "0", "c"), out("x")]))[2][
            "tool_calls"
        ][0]["function"]["arguments"]
        == "{}"
    )


def test_final_message_ends_with_the_final_output() -> None:
    # no output step: the final output is still the last message
    t = trace([r("Easy one."), call("calculator", {"expression": "6*7"}, "c"), obs("calculator", "42", "c")])
    assert trace_to_messages(t)[-1] == {"role": "assistant", "content": "The answer is 42."}
    # reasoning right before the answer stays in the final message, before it
    t2 = trace([r("The result is in."), out("The answer is 42.")])
    assert trace_to_messages(t2)[-1]["content"] == "The result is in.\n\nThe answer is 42."
    # an output step that differs from final_output: final_output still ends the message
    t3 = trace([out("Probably 42")])
    assert trace_to_messages(t3)[-1]["content"] == "Probably 42\n\nThe answer is 42."
    # blank reasoning is skipped
    t4 = trace([r("   "), out("The answer is 42.")])
    assert trace_to_messages(t4)[-1]["content"] == "The answer is 42."


def test_sft_example_fields_and_determinism() -> None:
    t = trace(
        [
            r("Use the calculator."),
            call("calculator", {"expression": "6*7"}, "c1"),
            obs("calculator", "42", "c1"),
            out("The answer is 42."),
        ],
        model_id="teacher-x",
    )
    score = TrajectoryScore(correctness=1, efficiency=1, tool_selection=1, safety=1, reasoning_quality=0.5, overall=0.9)
    ws = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
    ex = to_sft_example(t, score, window_start=ws, metadata={"window": "w-1"})
    assert ex.example_id == "sft-tr-1" and ex.event_id == "sft-tr-1"
    assert ex.trace_id == "tr-1" and ex.task_id == "task-1" and ex.model_id == "teacher-x"
    assert ex.score == 0.9 and ex.window_start == ws and ex.timestamp == t.timestamp
    assert ex.metadata == {"family": "math", "split": "train", "window": "w-1"}
    assert ex.tools == [CALC.to_openai(), WEATHER.to_openai()] == tools_for(t)
    assert to_sft_example(t, score, window_start=ws, metadata={"window": "w-1"}) == ex
    assert decode(encode(ex), SFTExample) == ex
    check_trl_structure(sft_row(ex))


def test_long_trace_ids_still_make_valid_example_ids() -> None:
    long_id = "t" * 128
    ex = to_sft_example(trace([out("x")], trace_id=long_id), 0.5)
    assert len(ex.example_id) <= 128 and ex.example_id.startswith("sft-h")
    assert to_sft_example(trace([out("x")], trace_id=long_id), 0.5).example_id == ex.example_id


def test_nothing_to_learn_is_a_format_error() -> None:
    with pytest.raises(FormatError) as err:
        to_sft_example(trace([], final_output=""), 0.5)
    assert err.value.kind == "empty_conversation"
    # tool calls only and no answer: the conversation would end on a tool result
    with pytest.raises(FormatError) as err2:
        to_sft_example(
            trace([call("calculator", {"expression": "1"}, "c"), obs("calculator", "1", "c")], final_output=""), 0.5
        )
    assert err2.value.kind == "no_final_answer"
    # the messages themselves are still available (for pairs, where a failure is the rejected side)
    assert (
        trace_to_messages(trace([call("calculator", {"expression": "1"}, "c")], final_output=""))[-1]["role"] == "tool"
    )
