"""The student's output format and its confidence: what the trainer trains and the router serves.

Pure Python, no torch: the trainer (`trainer.chat_template` builds the Jinja template around these
markers, `trainer.evaluate` scores with them) and the router (`router.runtime`) share this module.

Exports the chat markers (`IM_START`, `IM_END`, `PAD`, `TOOL_CALL_START`, `TOOL_CALL_END`,
`SPECIAL_TOKENS`), `ParsedCall`, `ParsedTurn`, `parse_assistant(text)`, `OutputFormatError`, and the
confidence function: `turn_confidence(logprobs)`, `episode_confidence(turns)`, `CONFIDENCE_FUNCTION`.

Confidence of one generated assistant turn = the geometric mean of its tokens' probabilities,
`exp(mean(log p(token)))` over the generated tokens (greedy decoding, end-of-turn token included), in
(0, 1]; an episode's is the minimum over its turns. The trainer calibrates a threshold on held-out
tasks with it (stored in the version's manifest); the router compares each turn against that threshold.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IM_START",
    "IM_END",
    "PAD",
    "TOOL_CALL_START",
    "TOOL_CALL_END",
    "SPECIAL_TOKENS",
    "OutputFormatError",
    "ParsedCall",
    "ParsedTurn",
    "parse_assistant",
    "CONFIDENCE_FUNCTION",
    "turn_confidence",
    "episode_confidence",
]

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|endoftext|>"
TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, TOOL_CALL_START, TOOL_CALL_END)

CONFIDENCE_FUNCTION = {
    "turn": "exp(mean(log p(token))) over the generated tokens of the assistant turn (greedy, end-of-turn included)",
    "episode": "min over the turns",
}


class OutputFormatError(ValueError):
    """Model output that cannot be read as an assistant turn (e.g. a tool call that is not JSON)."""


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: Any  # usually a dict; whatever JSON the model wrote


@dataclass(frozen=True)
class ParsedTurn:
    """One assistant turn: its text (reasoning, or the answer) and its tool calls."""

    content: str
    calls: tuple[ParsedCall, ...] = field(default_factory=tuple)

    @property
    def is_final(self) -> bool:
        return not self.calls

    def message(self, call_ids: list[str] | None = None) -> dict[str, Any]:
        """The OpenAI-shaped assistant message (arguments as JSON text)."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.calls:
            ids = call_ids or [f"call_{i}" for i in range(len(self.calls))]
            msg["tool_calls"] = [
                {"id": cid, "type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                for cid, c in zip(ids, self.calls, strict=False)
            ]
        return msg


_CALL_RX = re.compile(re.escape(TOOL_CALL_START) + r"(.*?)" + re.escape(TOOL_CALL_END), re.S)


def parse_assistant(text: str) -> ParsedTurn:
    """Read generated text (up to `<|im_end|>`, which may be present or not) as an assistant turn.

    Raises `OutputFormatError` for a tool call that is not a JSON object with a string `name`, or an
    opened `<tool_call>` that is never closed (the output was cut off)."""
    body = text.split(IM_END, 1)[0]
    first = body.find(TOOL_CALL_START)
    if first < 0:
        return ParsedTurn(body.strip())
    content = body[:first].strip()
    calls: list[ParsedCall] = []
    for m in _CALL_RX.finditer(body):
        raw = m.group(1).strip()
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise OutputFormatError(f"tool call is not JSON ({exc.msg} at {exc.pos}): {raw[:120]!r}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            raise OutputFormatError(f"tool call without a name: {raw[:120]!r}")
        args = obj.get("arguments", {})
        if isinstance(args, str):  # arguments given as JSON text
            with contextlib.suppress(json.JSONDecodeError):
                args = json.loads(args)
        calls.append(ParsedCall(obj["name"], args))
    if body.count(TOOL_CALL_START) != len(calls):
        raise OutputFormatError("a <tool_call> was opened but never closed (output cut off?)")
    return ParsedTurn(content, tuple(calls))


def turn_confidence(logprobs: Sequence[float]) -> float:
    """exp(mean token log-probability): the geometric-mean token probability, in (0, 1]; 0 without tokens."""
    if not logprobs:
        return 0.0
    return float(math.exp(sum(logprobs) / len(logprobs)))


def episode_confidence(turns: Sequence[float]) -> float:
    """The least confident turn (the router escalates at the first turn below the threshold)."""
    return float(min(turns)) if turns else 0.0
