"""The student's output format and its confidence: what the trainer trains and the router serves.

Pure Python, no torch: the trainer (`trainer.chat_template` builds the Jinja template around these
markers, `trainer.evaluate` scores with them) and the router (`router.runtime`) share this module.

Exports the chat markers (`IM_START`, `IM_END`, `PAD`, `TOOL_CALL_START`, `TOOL_CALL_END`,
`SPECIAL_TOKENS`), `ParsedCall`, `ParsedTurn`, `parse_assistant(text, fmt=CHATML)`, `OutputFormatError`,
the turn format (`TurnFormat`, `CHATML`, `save_turn_format(dir, fmt)`, `load_turn_format(dir)`,
`TURN_FORMAT_FILE`), and the confidence function: `turn_confidence(logprobs)`, `episode_confidence(turns)`,
`CONFIDENCE_FUNCTION`.

One tool-call format for every student: Hermes' `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
inside an assistant turn, whatever the turn markers around it (ChatML's `<|im_end|>`, Gemma's
`<end_of_turn>`, ...). `TurnFormat` is the declarative spec of one student's turns: what ends a turn,
how a tool call is marked. It is saved beside the chat template in the student's tokenizer directory
(`stillflow_turns.json`), and the trainer's evaluator and the router read the same file with the same
parser (`parse_assistant`); a version without the file is a ChatML student.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
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
    "TurnFormat",
    "CHATML",
    "TURN_FORMAT_FILE",
    "save_turn_format",
    "load_turn_format",
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


TURN_FORMAT_FILE = "stillflow_turns.json"
_SPEC = "stillflow.turn_format/1"


@dataclass(frozen=True)
class TurnFormat:
    """How one student writes an assistant turn. `end_of_turn`: the text that closes it (its token is the
    stop token); `stops`: other texts that also end generation (the tokenizer's eos); `tool_call_start` /
    `tool_call_end`: the markers around each call's JSON object; `name_key` / `arguments_key`: that
    object's fields; `template`: where the chat template came from (`stillflow-chatml`,
    `stillflow-gemma`, or `own` for a model whose own template already writes calls this way)."""

    end_of_turn: str = IM_END
    stops: tuple[str, ...] = ()
    tool_call_start: str = TOOL_CALL_START
    tool_call_end: str = TOOL_CALL_END
    name_key: str = "name"
    arguments_key: str = "arguments"
    template: str = "stillflow-chatml"
    generation_prompt: str = IM_START + "assistant\n"

    def response_template(self) -> dict[str, Any]:
        """The same spec as transformers' `response_template` (5.x `tokenizer.parse_response`), saved in
        the tokenizer's config so that any transformers client reads a student's turns as we do."""
        return {
            "version": 1,
            "start_anchor": self.generation_prompt,
            "fields": {
                "content": {"content": "text"},
                "tool_calls": {
                    "open": self.tool_call_start, "close": self.tool_call_end, "content": "json", "repeats": True,
                    "transform": {"type": "function",
                                  "function": {"name": "{content." + self.name_key + "}",
                                               "arguments": "{content." + self.arguments_key + "}"}},
                },
                # the end of the turn, and whatever a model wrote after it (never part of the answer)
                "trailing": {"open": list(self.stop_texts), "content": "text"},
            },
        }

    @property
    def stop_texts(self) -> tuple[str, ...]:
        return (self.end_of_turn, *(s for s in self.stops if s and s != self.end_of_turn))

    def stop_ids(self, tokenizer: Any) -> list[int]:
        """Token ids that end generation: each stop text that is one token of `tokenizer`, plus its eos.
        Empty when the end of turn is not a single token (such a student cannot be served)."""
        unk = getattr(tokenizer, "unk_token_id", None)
        end = tokenizer.convert_tokens_to_ids(self.end_of_turn)
        if not isinstance(end, int) or end == unk:
            return []
        ids = {end}
        for text in (*self.stops, getattr(tokenizer, "eos_token", None)):
            if text:
                i = tokenizer.convert_tokens_to_ids(text)
                if isinstance(i, int) and i != unk:
                    ids.add(i)
        return sorted(ids)

    def to_json(self) -> dict[str, Any]:
        return {"spec": _SPEC, **asdict(self), "stops": list(self.stops)}

    @classmethod
    def from_json(cls, obj: Any) -> TurnFormat:
        if not isinstance(obj, dict) or obj.get("spec") != _SPEC:
            raise ValueError(f"not a {_SPEC} document: {str(obj)[:120]}")
        fields = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        fields["stops"] = tuple(fields.get("stops") or ())
        bad = [k for k, v in fields.items() if k != "stops" and (not isinstance(v, str) or not v)]
        if bad:
            raise ValueError(f"{TURN_FORMAT_FILE}: {', '.join(bad)} must be non-empty text")
        return cls(**fields)


CHATML = TurnFormat()


def save_turn_format(directory: str | Path, fmt: TurnFormat) -> Path:
    path = Path(directory) / TURN_FORMAT_FILE
    path.write_text(json.dumps(fmt.to_json(), indent=2) + "\n", encoding="utf-8")
    return path


def load_turn_format(directory: str | Path) -> TurnFormat:
    """The directory's turn format; ChatML when it has none (every version before the file existed)."""
    path = Path(directory) / TURN_FORMAT_FILE
    if not path.is_file():
        return CHATML
    try:
        return TurnFormat.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


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


def _split_end(text: str, fmt: TurnFormat) -> str:
    cut = len(text)
    for stop in fmt.stop_texts:
        at = text.find(stop)
        if 0 <= at < cut:
            cut = at
    return text[:cut]


def parse_assistant(text: str, fmt: TurnFormat = CHATML) -> ParsedTurn:
    """Read generated text (up to the end of the turn, which may be present or not) as an assistant turn.

    Raises `OutputFormatError` for a tool call that is not a JSON object with a string name, or an
    opened tool call that is never closed (the output was cut off)."""
    body = _split_end(text, fmt)
    start, end = fmt.tool_call_start, fmt.tool_call_end
    first = body.find(start)
    if first < 0:
        return ParsedTurn(body.strip())
    content = body[:first].strip()
    calls: list[ParsedCall] = []
    rx = re.compile(re.escape(start) + r"(.*?)" + re.escape(end), re.S)
    for m in rx.finditer(body):
        raw = m.group(1).strip()
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise OutputFormatError(f"tool call is not JSON ({exc.msg} at {exc.pos}): {raw[:120]!r}") from None
        name = obj.get(fmt.name_key) if isinstance(obj, dict) else None
        if not isinstance(name, str) or not name:
            raise OutputFormatError(f"tool call without a name: {raw[:120]!r}")
        args = obj.get(fmt.arguments_key, {})
        if isinstance(args, str):  # arguments given as JSON text
            with contextlib.suppress(json.JSONDecodeError):
                args = json.loads(args)
        calls.append(ParsedCall(name, args))
    if body.count(start) != len(calls):
        raise OutputFormatError(f"a {start} was opened but never closed (output cut off?)")
    return ParsedTurn(content, tuple(calls))


def turn_confidence(logprobs: Sequence[float]) -> float:
    """exp(mean token log-probability): the geometric-mean token probability, in (0, 1]; 0 without tokens."""
    if not logprobs:
        return 0.0
    return float(math.exp(sum(logprobs) / len(logprobs)))


def episode_confidence(turns: Sequence[float]) -> float:
    """The least confident turn (the router escalates at the first turn below the threshold)."""
    return float(min(turns)) if turns else 0.0
