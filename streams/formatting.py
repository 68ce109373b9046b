"""SFT formatting: a trace as an OpenAI/trl conversation.

Exports `trace_to_messages(trace) -> list[dict]`, `tools_for(trace) -> list[dict]`,
`to_sft_example(trace, score, *, window_start=None) -> SFTExample`, `sft_row(example)` (the row trl's
`SFTTrainer` reads: `{"messages": [...], "tools": [...]}`) and `FormatError`.

The conversation:
- `system` (when the trace has a system prompt), then `user` (the input text);
- reasoning text before a tool call becomes the content of the assistant message that carries the
  call; consecutive tool calls share one assistant message, each as
  `{"id", "type": "function", "function": {"name", "arguments": <JSON string>}}`;
- each observation becomes `{"role": "tool", "tool_call_id", "name", "content"}` (the content is the
  step's `observation_text()`: its tool result rendered as the agent saw it), matched to its call
  by `tool_call_id`, else by tool name, else to the oldest unanswered call; an observation that
  answers no call is dropped; a call that never got an observation gets an empty tool message
  (so the conversation stays valid for chat templates and the OpenAI API);
- the last assistant message holds any remaining reasoning and ends with the final output.
Calls without a `tool_call_id` get a deterministic one (`call_<step index>`).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from stillflow.contracts import AgentTrace, ContractError, SFTExample, StepType, TrajectoryScore
from stillflow.ids import example_id_for

__all__ = ["FormatError", "trace_to_messages", "tools_for", "to_sft_example", "sft_row", "tool_call"]


class FormatError(ContractError):
    """A trace that cannot be made into a training conversation (kinds `empty_conversation`,
    `no_final_answer`)."""


def tool_call(call_id: str, name: str, args: dict[str, Any] | None) -> dict[str, Any]:
    """One OpenAI tool call with its arguments as a JSON string."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args or {}, ensure_ascii=False)},
    }


def _text(parts: list[str]) -> str:
    return "\n\n".join(parts)


def trace_to_messages(trace: AgentTrace) -> list[dict[str, Any]]:
    """The trace's conversation in OpenAI/trl messages format (see the module docstring)."""
    messages: list[dict[str, Any]] = []
    if trace.system_prompt:
        messages.append({"role": "system", "content": trace.system_prompt})
    messages.append({"role": "user", "content": trace.input_text})

    pending: list[str] = []  # assistant text not yet placed
    turn: dict[str, Any] | None = None  # the assistant message collecting tool calls
    turn_answered = False  # an observation came after `turn` opened: the next call opens a new turn
    unanswered: list[tuple[str, str]] = []  # (call id, tool name) of `turn`, oldest first

    def close_turn() -> None:
        nonlocal turn
        for call_id, name in unanswered:
            messages.append({"role": "tool", "tool_call_id": call_id, "name": name, "content": ""})
        unanswered.clear()
        turn = None

    for i, step in enumerate(trace.steps):
        st = step.step_type
        if st is StepType.tool_call:
            text = step.content.strip()
            if turn is None or turn_answered:
                close_turn()
                if text:
                    pending.append(text)
                turn = {"role": "assistant", "content": _text(pending), "tool_calls": []}
                pending = []
                messages.append(turn)
                turn_answered = False
            else:
                # a further call of the same turn: text said since the last call joins this turn
                extra = pending + ([text] if text else [])
                if extra:
                    turn["content"] = _text(([turn["content"]] if turn["content"] else []) + extra)
                pending = []
            call_id = step.tool_call_id or f"call_{i}"
            name = step.tool_name or ""
            turn["tool_calls"].append(tool_call(call_id, name, step.tool_args))
            unanswered.append((call_id, name))
        elif st is StepType.observation:
            match = None
            if step.tool_call_id is not None:
                match = next((u for u in unanswered if u[0] == step.tool_call_id), None)
            if match is None and step.tool_name:
                match = next((u for u in unanswered if u[1] == step.tool_name), None)
            if match is None and step.tool_call_id is None and unanswered:
                match = unanswered[0]
            if match is None:
                continue  # answers no open call: nothing valid to attach it to
            unanswered.remove(match)
            messages.append({"role": "tool", "tool_call_id": match[0], "name": match[1],
                             "content": step.observation_text()})
            turn_answered = True
        else:  # reasoning or output: assistant text for the next assistant message
            text = step.content.strip()
            if text:
                pending.append(text)
    close_turn()
    final = trace.final_output.strip()
    if final and not (pending and pending[-1] == final):
        pending.append(final)
    if pending:
        messages.append({"role": "assistant", "content": _text(pending)})
    return messages


def tools_for(trace: AgentTrace) -> list[dict[str, Any]]:
    """The trace's tools as OpenAI function specs."""
    return [t.to_openai() for t in trace.tools]


def to_sft_example(
    trace: AgentTrace,
    score: TrajectoryScore | float,
    *,
    window_start: datetime | None = None,
    metadata: dict[str, str] | None = None,
    messages: list[dict[str, Any]] | None = None,
) -> SFTExample:
    """The `SFTExample` of a trace (unredacted unless `messages` are given already redacted: pass it
    through `streams.pii` before writing it).

    Id and event id are `sft-<trace_id>` and the timestamp is the trace's event time, so redelivery
    yields the same record. Raises `FormatError` when the trace has no assistant turn at all
    (`empty_conversation`) or does not end with an assistant answer (`no_final_answer`).
    """
    if messages is None:
        messages = trace_to_messages(trace)
    if not any(m["role"] == "assistant" for m in messages):
        raise FormatError("empty_conversation", f"trace {trace.trace_id} has no assistant message to learn from")
    if messages[-1]["role"] != "assistant" or messages[-1].get("tool_calls"):
        raise FormatError("no_final_answer", f"trace {trace.trace_id} ends without a final assistant answer")
    value = score.overall if isinstance(score, TrajectoryScore) else float(score)
    example_id = example_id_for(trace.trace_id)
    meta = dict(trace.metadata)
    if metadata:
        meta.update(metadata)
    return SFTExample(
        event_id=example_id,
        timestamp=trace.timestamp,
        example_id=example_id,
        trace_id=trace.trace_id,
        task_id=trace.task_id,
        messages=messages,
        tools=tools_for(trace),
        score=min(1.0, max(0.0, value)),
        model_id=trace.model_id,
        workload=trace.workload,
        window_start=window_start,
        metadata=meta,
    )


def sft_row(example: SFTExample) -> dict[str, Any]:
    """The row trl's `SFTTrainer` reads for a tool-calling conversation."""
    return {"messages": example.messages, "tools": example.tools}
