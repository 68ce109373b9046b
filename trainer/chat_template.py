"""The tiny student's chat template, and the parser that reads its output back as tool calls.

Exports `IM_START`, `IM_END`, `TOOL_CALL_START`, `TOOL_CALL_END`, `SPECIAL_TOKENS`,
`build_chat_template(tool_descriptions=False)`, `ParsedTurn`, `parse_assistant(text)` and
`OutputFormatError`.

The template is ChatML with tools (as Qwen2 renders them, made compact for a small model):

    <|im_start|>system
    {system prompt}
    # Tools
    - query_db(sql: string)
    - search(query: string, top_k?: integer)
    <|im_end|>
    <|im_start|>user
    {question}<|im_end|>
    <|im_start|>assistant
    {reasoning}
    <tool_call>{"name": "query_db", "arguments": {"sql": "SELECT ..."}}</tool_call><|im_end|>
    <|im_start|>tool
    {observation}<|im_end|>
    <|im_start|>assistant
    {final answer}<|im_end|>

Every assistant turn, its `<|im_end|>` included, is wrapped in `{% generation %}`, so
`apply_chat_template(..., return_assistant_tokens_mask=True)` marks exactly the assistant tokens
(assistant-only loss) and the model learns to stop. Tool-call arguments may be given as JSON text
(OpenAI) or as objects; they are rendered as JSON objects either way.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IM_START",
    "IM_END",
    "PAD",
    "TOOL_CALL_START",
    "TOOL_CALL_END",
    "SPECIAL_TOKENS",
    "build_chat_template",
    "OutputFormatError",
    "ParsedTurn",
    "parse_assistant",
]

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|endoftext|>"
TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, TOOL_CALL_START, TOOL_CALL_END)

_TOOLS_SIGNATURE = """
{%- for tool in tools -%}
{%- set fn = tool['function'] if tool['function'] is defined and tool['function'] else tool -%}
{%- set params = fn['parameters'] or {} -%}
{%- set props = params['properties'] or {} -%}
{%- set required = params['required'] or [] -%}
{{- '- ' + fn['name'] + '(' -}}
{%- for pname, pspec in props.items() -%}
{{- pname -}}{%- if pname not in required -%}{{- '?' -}}{%- endif -%}
{%- if pspec and pspec['type'] -%}{{- ': ' + pspec['type'] -}}{%- endif -%}
{%- if not loop.last -%}{{- ', ' -}}{%- endif -%}
{%- endfor -%}
{{- ')' -}}
{%- if DESCRIBE and fn['description'] -%}{{- ': ' + fn['description'] -}}{%- endif -%}
{{- '\\n' -}}
{%- endfor -%}
"""

_TEMPLATE = """
{%- set ns = namespace(system='', first=0) -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set ns.system = messages[0]['content'] or '' -%}
{%- set ns.first = 1 -%}
{%- endif -%}
{%- if ns.system or tools -%}
{{- '<|im_start|>system\\n' + ns.system -}}
{%- if tools -%}
{{- '\\n# Tools\\n' -}}
TOOLS_SIGNATURE
{%- endif -%}
{{- '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages[ns.first:] -%}
{%- if message['role'] == 'assistant' -%}
{{- '<|im_start|>assistant\\n' -}}
{%- generation -%}
{{- message['content'] or '' -}}
{%- if message['tool_calls'] -%}
{%- for tc in message['tool_calls'] -%}
{%- set f = tc['function'] if tc['function'] is defined and tc['function'] else tc -%}
{%- if message['content'] or not loop.first -%}{{- '\\n' -}}{%- endif -%}
{{- '<tool_call>{"name": ' + (f['name'] | tojson) + ', "arguments": ' -}}
{%- if f['arguments'] is string -%}{{- f['arguments'] -}}
{%- else -%}{{- (f['arguments'] or {}) | tojson -}}{%- endif -%}
{{- '}</tool_call>' -}}
{%- endfor -%}
{%- endif -%}
{{- '<|im_end|>' -}}
{%- endgeneration -%}
{{- '\\n' -}}
{%- else -%}
{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""


def build_chat_template(*, tool_descriptions: bool = False) -> str:
    """The Jinja chat template (see the module docstring). `tool_descriptions`: also render each
    tool's description after its signature (longer prompts; useful for bigger students)."""
    tools = _TOOLS_SIGNATURE.replace("DESCRIBE", "true" if tool_descriptions else "false").strip()
    return _TEMPLATE.replace("TOOLS_SIGNATURE", tools).strip()


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
