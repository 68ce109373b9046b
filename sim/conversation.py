"""How a policy's turns look on the wire (OpenAI chat messages) and back.

Exports the request headers (`HEADER_TRACE_ID`, `HEADER_TASK_ID`, `HEADER_WORKLOAD`), `count_tokens`,
`message_tokens`, `action_message` (a policy `Action` as an assistant message), `split_final`
(an assistant's final text into reasoning and answer), `exchanges_from_messages` (a conversation
as the policy's `Exchange` history) and `TokenMeter`.

Convention: a final turn with reasoning is sent as ``"<reasoning>\\n\\nFinal answer: <answer>"``;
`split_final` undoes it (and leaves any other text whole as the answer), so an agent that records
the reply gets the same reasoning and output steps as the offline runner.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sim.policies import Action, Exchange, ToolCall

__all__ = [
    "HEADER_TRACE_ID",
    "HEADER_TASK_ID",
    "HEADER_WORKLOAD",
    "FINAL_MARKER",
    "count_tokens",
    "message_tokens",
    "action_message",
    "split_final",
    "exchanges_from_messages",
    "ConversationError",
    "TokenMeter",
]

HEADER_TRACE_ID = "X-Stillflow-Trace-Id"
HEADER_TASK_ID = "X-Stillflow-Task-Id"
HEADER_WORKLOAD = "X-Stillflow-Workload"
FINAL_MARKER = "Final answer:"
_FINAL_RE = re.compile(r"(?:^|\n)\s*final answer\s*:\s*", re.IGNORECASE)


def count_tokens(text: str | None) -> int:
    """A plausible token count: whitespace words × 1.3, rounded up."""
    if not text:
        return 0
    return math.ceil(len(text.split()) * 1.3)


def arguments_json(args: Any) -> str:
    return json.dumps(args, ensure_ascii=False, separators=(", ", ": "))


def message_tokens(message: dict[str, Any]) -> int:
    """Tokens of one chat message: its text plus, for tool calls, name and arguments."""
    n = 4 + count_tokens(message.get("content") if isinstance(message.get("content"), str) else None)
    for tc in message.get("tool_calls") or []:
        fn = tc.get("function") or {}
        n += count_tokens(str(fn.get("name", ""))) + count_tokens(str(fn.get("arguments", "")))
    return n


def action_message(action: Action) -> dict[str, Any]:
    """The assistant message (OpenAI shape, arguments as JSON text) that carries `action`."""
    if action.final is not None:
        content = f"{action.reasoning}\n\n{FINAL_MARKER} {action.final}" if action.reasoning else action.final
        return {"role": "assistant", "content": content}
    msg: dict[str, Any] = {"role": "assistant", "content": action.reasoning}
    msg["tool_calls"] = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments_json(c.args)}}
        for c in action.calls
    ]
    return msg


def split_final(content: str) -> tuple[str | None, str]:
    """(reasoning, answer) from a final assistant text; the whole text is the answer without a marker."""
    matches = list(_FINAL_RE.finditer(content))
    if not matches:
        return None, content.strip()
    m = matches[-1]
    reasoning = content[: m.start()].strip() or None
    return reasoning, content[m.end():].strip()


class ConversationError(ValueError):
    """A request whose messages cannot be read as a conversation."""


def _content_text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise ConversationError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def exchanges_from_messages(messages: Sequence[Any]) -> tuple[str, str, list[Exchange]]:
    """(system prompt, first user message, the assistant turns with their tool results)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ConversationError("messages must be a non-empty list")
    system, user = "", None
    history: list[Exchange] = []
    by_id: dict[str, Exchange] = {}
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ConversationError(f"messages[{i}] must be an object with a role")
        role = m["role"]
        text = _content_text(m.get("content"))
        if role in ("system", "developer"):
            system = (system + "\n" + text).strip() if system and text else (text or system)
        elif role == "user":
            if user is None:
                user = text or ""
        elif role == "assistant":
            calls = []
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function") or {}
                raw = fn.get("arguments") or "{}"
                try:
                    args = json.loads(raw) if isinstance(raw, str) else raw
                except json.JSONDecodeError:
                    args = {"_raw": raw}
                if not isinstance(args, dict):
                    args = {"_value": args}
                calls.append(ToolCall(str(tc.get("id", "")), str(fn.get("name", "")), args))
            if calls:
                ex = Exchange(reasoning=text or None, calls=calls)
            else:
                reasoning, answer = split_final(text or "")
                ex = Exchange(reasoning=reasoning, final=answer)
            history.append(ex)
            for c in calls:
                by_id[c.id] = ex
        elif role == "tool":
            ex = by_id.get(str(m.get("tool_call_id", "")))
            if ex is None and history:
                ex = history[-1]
            if ex is not None:
                ex.results.append(text or "")
        else:
            raise ConversationError(f"messages[{i}] has an unknown role {role!r}")
    if user is None:
        raise ConversationError("the conversation has no user message")
    return system, user, history


@dataclass
class TokenMeter:
    """Bills a conversation the way a chat API does: every call pays for the whole prompt so far."""

    context: int = 0
    prompt: int = 0
    completion: int = 0

    def add_context(self, message: dict[str, Any]) -> None:
        self.context += message_tokens(message)

    def bill_turn(self, reply: dict[str, Any]) -> tuple[int, int]:
        """Charge one model call (prompt = context so far), then add the reply to the context."""
        p, c = self.context, message_tokens(reply)
        self.prompt += p
        self.completion += c
        self.context += c
        return p, c

    @property
    def total(self) -> int:
        return self.prompt + self.completion
