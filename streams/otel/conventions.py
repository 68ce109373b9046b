"""The GenAI tracing conventions, each read into one neutral shape: model calls and tool runs.

Exports `Message`, `Call`, `LlmCall`, `ToolRun`, `Reading` and `read_trace(spans, logs)`, which detects
the convention of each span and hands it to its adapter:
- official OpenTelemetry GenAI semantic conventions, current form: `gen_ai.input.messages` /
  `gen_ai.output.messages` / `gen_ai.system_instructions` (JSON, `parts` of type `text`, `tool_call`,
  `tool_call_response` with `response` or `result`, `reasoning`), `gen_ai.tool.definitions`, the same
  attributes on a `gen_ai.client.inference.operation.details` event (span event or log record), and
  `execute_tool` spans (`gen_ai.tool.call.id/arguments/result`); older form: one event per message
  (`gen_ai.system.message`, `gen_ai.user.message`, `gen_ai.assistant.message`, `gen_ai.tool.message`,
  `gen_ai.choice`) as log records or span events, joined to their span by span id;
- OpenInference: `openinference.span.kind` LLM / TOOL, flattened `llm.input_messages.{i}.message.*`
  (tool calls under `message.tool_calls.{j}.tool_call.*`), `llm.output_messages`, `llm.tools.{i}.tool.json_schema`,
  `tool.name`, `input.value` / `output.value`, `llm.token_count.*`, `session.id`;
- OpenLLMetry (traceloop): the JSON messages of its current releases (as the official form) and the
  flattened `gen_ai.prompt.{i}.*` / `gen_ai.completion.{i}.*` of older ones, `llm.request.functions.{i}.*`.

Nothing here guesses: a model call whose messages are not on the span is reported as `no_content`
with the scope that made it, and the caller dead-letters the trace.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.otel.otlp import OtelEvent, OtelLog, OtelSpan

__all__ = [
    "GENAI",
    "OPENINFERENCE",
    "OPENLLMETRY",
    "Call",
    "Message",
    "LlmCall",
    "ToolRun",
    "Reading",
    "read_trace",
    "CONTENT_SWITCHES",
]

GENAI, OPENINFERENCE, OPENLLMETRY = "genai", "openinference", "openllmetry"

# What turns message content on, per convention (the dead letter of a content-less trace names it).
CONTENT_SWITCHES = {
    GENAI: "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=SPAN_ONLY (or true for the older "
           "opentelemetry-instrumentation-openai-v2)",
    OPENINFERENCE: "OPENINFERENCE_HIDE_INPUTS=false and OPENINFERENCE_HIDE_OUTPUTS=false (the defaults)",
    OPENLLMETRY: "TRACELOOP_TRACE_CONTENT=true (the default)",
}

_LLM_OPERATIONS = {"chat", "text_completion", "generate_content", "completion"}
_DETAILS_EVENT = "gen_ai.client.inference.operation.details"
_MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


def _as_id(value: Any) -> str | None:
    """An id as found in a message (text, or a number some providers send); anything else is no id."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value) or None


@dataclass
class Call:
    """A tool call the model asked for."""

    name: str
    arguments: Any = None  # JSON text as sent, or an already parsed value
    id: str | None = None

    def __post_init__(self) -> None:
        self.id = _as_id(self.id)


@dataclass
class Message:
    role: str
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[Call] = field(default_factory=list)
    tool_call_id: str | None = None  # role tool: the call this answers

    def __post_init__(self) -> None:
        self.tool_call_id = _as_id(self.tool_call_id)


@dataclass
class LlmCall:
    span_id: str
    start_ns: int
    end_ns: int
    convention: str
    scope: str
    inputs: list[Message] = field(default_factory=list)
    outputs: list[Message] = field(default_factory=list)
    system: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)  # {name, description, parameters}
    tokens: int = 0
    model: str | None = None
    conversation_id: str | None = None
    has_content: bool = True


@dataclass
class ToolRun:
    span_id: str
    start_ns: int
    name: str
    arguments: Any = None
    result: Any = None
    call_id: str | None = None
    error: str | None = None
    definition: dict[str, Any] | None = None  # {name, description, parameters} when the span describes its tool


@dataclass
class Reading:
    """A trace read through its conventions."""

    llm_calls: list[LlmCall] = field(default_factory=list)
    tool_runs: list[ToolRun] = field(default_factory=list)
    conventions: set[str] = field(default_factory=set)
    no_content_scopes: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


# ---- small readers ----

def _json(value: Any) -> Any:
    """A JSON-encoded attribute decoded (values that are not JSON text are passed through)."""
    if isinstance(value, str):
        s = value.strip()
        if s[:1] in ("[", "{"):
            try:
                return json.loads(s)
            except (json.JSONDecodeError, RecursionError):
                return value
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts
        texts = [_text(p.get("text", p.get("content")) if isinstance(p, dict) else p) for p in value]
        return "".join(t for t in texts if t) or None
    return json.dumps(value, ensure_ascii=False)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
        return 0


_IDX = re.compile(r"^\d+$")


def unflatten(attrs: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """`prefix.{i}.a.b` keys as a list (by i) of nested dicts, numbered levels as lists too."""
    root: dict[str, Any] = {}
    p = prefix + "."
    for key, value in attrs.items():
        if not key.startswith(p):
            continue
        node = root
        parts = key[len(p):].split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = node[part] = {}
            node = nxt
        node[parts[-1]] = value

    def listify(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if node and all(_IDX.match(k) for k in node):
            return [listify(node[k]) for k in sorted(node, key=int)]
        return {k: listify(v) for k, v in node.items()}

    out = listify(root)
    return out if isinstance(out, list) else []


def _tool_def(d: Any) -> dict[str, Any] | None:
    d = _json(d)
    if not isinstance(d, dict):
        return None
    fn = d.get("function") if isinstance(d.get("function"), dict) else d
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        return None
    params = _json(fn.get("parameters", fn.get("input_schema")))
    return {"name": name, "description": fn.get("description") if isinstance(fn.get("description"), str) else "",
            "parameters": params if isinstance(params, dict) else {"type": "object", "properties": {}}}


# ---- official GenAI, current form (JSON parts); OpenLLMetry's current releases write the same ----

def _parts_message(m: Any) -> Message | None:
    if not isinstance(m, dict):
        return None
    role = str(m.get("role") or "assistant")
    parts = m.get("parts")
    if not isinstance(parts, list):  # a plain OpenAI-shaped message
        return _openai_message(m, role)
    texts, reasoning, calls, call_id, result = [], [], [], None, None
    for p in parts:
        if not isinstance(p, dict):
            continue
        kind = p.get("type")
        if kind == "text":
            texts.append(_text(p.get("content")) or "")
        elif kind == "reasoning":
            reasoning.append(_text(p.get("content")) or "")
        elif kind == "tool_call":
            calls.append(Call(name=str(p.get("name") or ""), arguments=p.get("arguments"), id=p.get("id")))
        elif kind == "tool_call_response":
            call_id = p.get("id")
            result = p.get("response", p.get("result"))
    if result is not None or (role == "tool" and call_id is not None):
        return Message(role="tool", content=_text(result) if not isinstance(result, str) else result,
                       tool_call_id=call_id)
    return Message(role=role, content="".join(texts) if texts else None,
                   reasoning="".join(reasoning) or None, tool_calls=calls)


def _openai_message(m: dict[str, Any], role: str | None = None) -> Message:
    calls = []
    for tc in _list(m.get("tool_calls")):
        if not isinstance(tc, dict):
            continue
        fn = tc.get("function") if isinstance(tc.get("function"), dict) else tc
        calls.append(Call(name=str(fn.get("name") or ""), arguments=fn.get("arguments"), id=tc.get("id")))
    return Message(role=str(role or m.get("role") or "assistant"), content=_text(m.get("content")),
                   tool_calls=calls, tool_call_id=m.get("tool_call_id") or m.get("id"))


def _json_messages(value: Any) -> list[Message] | None:
    data = _json(value)
    if not isinstance(data, list):
        return None
    return [m for m in (_parts_message(x) for x in data) if m is not None]


def _system_text(value: Any) -> str | None:
    data = _json(value)
    if isinstance(data, list):
        return "".join(_text(p.get("content")) or "" for p in data if isinstance(p, dict)) or None
    return _text(data)


def _genai_content(attrs: dict[str, Any], call: LlmCall) -> bool:
    """Fill `call` from the current-form attributes; False when there are none."""
    inputs = _json_messages(attrs.get("gen_ai.input.messages"))
    outputs = _json_messages(attrs.get("gen_ai.output.messages"))
    if inputs is None and outputs is None:
        return False
    call.inputs, call.outputs = inputs or [], outputs or []
    if "gen_ai.system_instructions" in attrs:
        call.system = _system_text(attrs["gen_ai.system_instructions"])
    if "gen_ai.tool.definitions" in attrs and not call.tools:
        defs = _json(attrs["gen_ai.tool.definitions"])
        call.tools = [t for t in (_tool_def(d) for d in (defs if isinstance(defs, list) else [])) if t]
    return True


def _event_message(name: str, attrs: dict[str, Any], body: Any) -> Message | None:
    """An older-form per-message event (log record body, or span event attributes)."""
    data = body if isinstance(body, dict) else {}
    if not data:  # span events carry the fields as attributes
        data = {k.removeprefix("gen_ai."): _json(v) for k, v in attrs.items()}
    if name == "gen_ai.choice":
        msg = data.get("message") if isinstance(data.get("message"), dict) else data
        return _openai_message(msg, "assistant")
    role = _MESSAGE_EVENTS.get(name)
    if role is None:
        return None
    m = _openai_message(data, role)
    if role == "tool":
        m.tool_call_id = _as_id(data.get("id") or data.get("tool_call_id"))
    return m


def _genai_events(call: LlmCall, events: Sequence[tuple[str, dict[str, Any], Any]]) -> bool:
    found = False
    for name, attrs, body in events:
        if name == _DETAILS_EVENT:
            merged = dict(attrs)
            if isinstance(body, dict):
                merged.update(body)
            found = _genai_content(merged, call) or found
            continue
        m = _event_message(name, attrs, body)
        if m is None:
            continue
        found = True
        if m.role == "system":
            call.system = (call.system or "") + (m.content or "")
        elif name == "gen_ai.choice":
            call.outputs.append(m)
        else:
            call.inputs.append(m)
    return found


def _genai_tools_flat(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    # OpenLLMetry: llm.request.functions.{i}.name/description/parameters
    return [t for t in (_tool_def(d) for d in unflatten(attrs, "llm.request.functions")) if t]


# ---- OpenLLMetry, older releases (flattened gen_ai.prompt / gen_ai.completion) ----

def _flat_message(d: dict[str, Any], default_role: str) -> Message:
    calls = []
    for tc in _list(d.get("tool_calls")):
        if isinstance(tc, dict):
            fn = tc.get("function") if isinstance(tc.get("function"), dict) else tc
            calls.append(Call(name=str(fn.get("name") or ""), arguments=fn.get("arguments"), id=tc.get("id")))
    return Message(role=str(d.get("role") or default_role), content=_text(_json(d.get("content"))),
                   tool_calls=calls, tool_call_id=d.get("tool_call_id"))


def _openllmetry_flat(attrs: dict[str, Any], call: LlmCall) -> bool:
    prompts = unflatten(attrs, "gen_ai.prompt")
    completions = unflatten(attrs, "gen_ai.completion")
    if not prompts and not completions:
        return False
    call.inputs = [_flat_message(p, "user") for p in prompts if isinstance(p, dict)]
    call.outputs = [_flat_message(c, "assistant") for c in completions if isinstance(c, dict)][:1]
    return True


# ---- OpenInference ----

def _oi_message(d: Any) -> Message | None:
    if not isinstance(d, dict):
        return None
    m = d.get("message") if isinstance(d.get("message"), dict) else d
    content = m.get("content")
    if content is None and isinstance(m.get("contents"), list):
        content = "".join(str((c.get("message_content") or {}).get("text") or "")
                          for c in m["contents"] if isinstance(c, dict)) or None
    calls = []
    for tc in _list(m.get("tool_calls")):
        t = tc.get("tool_call") if isinstance(tc, dict) and isinstance(tc.get("tool_call"), dict) else tc
        if not isinstance(t, dict):
            continue
        fn = t.get("function") if isinstance(t.get("function"), dict) else {}
        calls.append(Call(name=str(fn.get("name") or ""), arguments=fn.get("arguments"), id=t.get("id")))
    return Message(role=str(m.get("role") or "assistant"), content=_text(content), tool_calls=calls,
                   tool_call_id=m.get("tool_call_id"))


def _openinference_llm(span: OtelSpan, call: LlmCall) -> bool:
    a = span.attributes
    inputs = [m for m in (_oi_message(x) for x in unflatten(a, "llm.input_messages")) if m]
    outputs = [m for m in (_oi_message(x) for x in unflatten(a, "llm.output_messages")) if m]
    call.tools = [t for t in (_tool_def(x.get("tool", {}).get("json_schema") if isinstance(x, dict) else None)
                              for x in unflatten(a, "llm.tools")) if t]
    call.tokens = _int(a.get("llm.token_count.total")) or (
        _int(a.get("llm.token_count.prompt")) + _int(a.get("llm.token_count.completion")))
    call.model = a.get("llm.model_name") or call.model
    call.conversation_id = a.get("session.id") or call.conversation_id
    if not inputs and not outputs:
        return False
    call.inputs, call.outputs = inputs, outputs
    return True


# ---- the dispatcher ----

def _convention(span: OtelSpan) -> str | None:
    a = span.attributes
    if "openinference.span.kind" in a:
        return OPENINFERENCE
    scope = span.scope.lower()
    if "traceloop" in scope or scope == "opentelemetry.instrumentation.openai.v1" or any(
            k.startswith(("gen_ai.prompt.", "gen_ai.completion.", "llm.request.functions.", "traceloop."))
            for k in a):
        return OPENLLMETRY
    if any(k.startswith("gen_ai.") for k in a):
        return GENAI
    return None


def _span_kind(span: OtelSpan, convention: str) -> str | None:
    a = span.attributes
    if convention == OPENINFERENCE:
        kind = str(a.get("openinference.span.kind", "")).upper()
        return {"LLM": "llm", "TOOL": "tool"}.get(kind)
    op = str(a.get("gen_ai.operation.name", "")).lower()
    if op == "execute_tool":
        return "tool"
    if op in ("invoke_agent", "create_agent", "invoke_workflow"):
        return None  # agent spans repeat their children's tokens: never counted
    if op in _LLM_OPERATIONS or (convention == OPENLLMETRY and a.get("llm.request.type") in ("chat", "completion")):
        return "llm"
    if op == "" and ("gen_ai.request.model" in a or "gen_ai.input.messages" in a):
        return "llm"
    return None


def _genai_tokens(a: dict[str, Any]) -> int:
    inp = _int(a.get("gen_ai.usage.input_tokens", a.get("gen_ai.usage.prompt_tokens")))
    out = _int(a.get("gen_ai.usage.output_tokens", a.get("gen_ai.usage.completion_tokens")))
    return inp + out or _int(a.get("llm.usage.total_tokens"))


def _tool_run(span: OtelSpan, convention: str) -> ToolRun:
    a = span.attributes
    definition = None
    if convention == OPENINFERENCE:
        name = a.get("tool.name") or span.name
        args, result = a.get("input.value"), a.get("output.value")
        call_id = a.get("tool_call.id") or a.get("tool.id")
        if "tool.parameters" in a or "tool.description" in a:  # the Agents SDK describes its tools only here
            definition = _tool_def({"name": name, "description": a.get("tool.description") or "",
                                    "parameters": a.get("tool.parameters")})
    else:
        name = a.get("gen_ai.tool.name") or span.name.removeprefix("execute_tool ").strip()
        args, result = a.get("gen_ai.tool.call.arguments"), a.get("gen_ai.tool.call.result")
        call_id = a.get("gen_ai.tool.call.id")
    error = span.status_message or None if span.status_code == 2 else None
    return ToolRun(span_id=span.span_id, start_ns=span.start_ns, name=str(name), arguments=args, result=result,
                   call_id=str(call_id) if call_id else None, error=error, definition=definition)


def read_trace(spans: Iterable[OtelSpan], logs: Iterable[OtelLog] = ()) -> Reading:
    """Every model call and tool run of a trace, in start order, with the conventions they came in."""
    out = Reading()
    by_span: dict[str, list[tuple[str, dict[str, Any], Any]]] = {}
    for rec in logs:
        if rec.span_id:
            by_span.setdefault(rec.span_id, []).append((rec.event_name, rec.attributes, rec.body))
    for span in sorted(spans, key=lambda s: (s.start_ns, s.span_id)):
        conv = _convention(span)
        if conv is None:
            continue
        kind = _span_kind(span, conv)
        if kind == "tool":
            out.tool_runs.append(_tool_run(span, conv))
            out.conventions.add(conv)
            continue
        if kind != "llm":
            continue
        out.conventions.add(conv)
        a = span.attributes
        call = LlmCall(span_id=span.span_id, start_ns=span.start_ns, end_ns=span.end_ns, convention=conv,
                       scope=span.scope or "unknown",
                       model=a.get("gen_ai.response.model") or a.get("gen_ai.request.model"),
                       conversation_id=a.get("gen_ai.conversation.id"), tokens=_genai_tokens(a))
        events: list[tuple[str, dict[str, Any], Any]] = [(e.name, e.attributes, None) for e in span.events
                                                         if isinstance(e, OtelEvent)]
        events += by_span.get(span.span_id, [])
        if conv == OPENINFERENCE:
            found = _openinference_llm(span, call)
        else:
            found = _genai_content(a, call) or _genai_events(call, events)
            if not found and conv == OPENLLMETRY:
                found = _openllmetry_flat(a, call)
            if not call.tools:
                call.tools = _genai_tools_flat(a)
        call.has_content = found
        if not found:
            out.no_content_scopes.add(call.scope)
        out.llm_calls.append(call)
    return out
