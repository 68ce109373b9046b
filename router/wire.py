"""The OpenAI chat-completions wire format, both ways (pure: no model, no HTTP).

Exports
- `RequestError` — a request the router refuses (status, message, code), `openai_error(...)` — the body;
- `ChatRequest` / `parse_request(body, max_new_tokens)` — the fields the router uses, validated;
- `text_messages(messages)` — messages with content parts flattened to text (for the chat template);
- `student_completion(...)` — a finished student turn as a `chat.completion` body;
- `tool_names(tools)`, `same_action(a, b)` — helpers for validity and shadow agreement;
- `sse_chunks(completion, include_usage)` — a whole completion as `chat.completion.chunk` SSE events,
  ending with `data: [DONE]`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from stillflow.chatformat import ParsedTurn

__all__ = [
    "RequestError",
    "openai_error",
    "ChatRequest",
    "parse_request",
    "text_messages",
    "student_completion",
    "tool_names",
    "same_action",
    "sse_chunks",
]


class RequestError(Exception):
    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_


def openai_error(message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                 **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message, "type": type_, "param": None, "code": code}
    err.update(extra)
    return {"error": err}


@dataclass(frozen=True)
class ChatRequest:
    body: dict[str, Any]
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    max_new_tokens: int
    model: str


def parse_request(body: Any, max_new_tokens: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object", "invalid_body")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RequestError(400, "messages must be a non-empty list of message objects", "invalid_messages")
    for i, m in enumerate(messages):
        if m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise RequestError(400, f"messages[{i}].role {m.get('role')!r} is not a chat role", "invalid_messages")
    if not any(m.get("role") == "user" for m in messages):
        raise RequestError(400, "messages has no user message", "invalid_messages")
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RequestError(400, "tools must be a list of tool objects", "invalid_tools")
    if body.get("n", 1) not in (1, None):
        raise RequestError(400, "n must be 1", "n_unsupported")
    cap = max_new_tokens
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is not None:
            if not isinstance(value, int) or value < 1:
                raise RequestError(400, f"{key} must be a positive integer", "invalid_max_tokens")
            cap = min(cap, value)
    opts = body.get("stream_options") or {}
    return ChatRequest(body=body, messages=messages, tools=tools, stream=bool(body.get("stream")),
                       include_usage=bool(isinstance(opts, dict) and opts.get("include_usage")),
                       max_new_tokens=cap, model=str(body.get("model") or ""))


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def text_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the chat template wants them: text content; `developer` read as `system`."""
    out = []
    for m in messages:
        msg = dict(m)
        msg["content"] = _text(m.get("content"))
        if msg.get("role") == "developer":
            msg["role"] = "system"
        out.append(msg)
    return out


def tool_names(tools: list[dict[str, Any]]) -> set[str]:
    names = set()
    for t in tools:
        fn = t.get("function") if isinstance(t.get("function"), dict) else t
        if isinstance(fn.get("name"), str):
            names.add(fn["name"])
    return names


def _calls_of(message: dict[str, Any]) -> list[tuple[str, Any]]:
    out = []
    for tc in message.get("tool_calls") or []:
        fn = tc.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            with contextlib.suppress(json.JSONDecodeError):
                args = json.loads(args)
        out.append((fn.get("name"), args))
    return out


def same_action(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two assistant messages take the same action: the same tool calls (names and arguments) in order,
    or both give a final answer."""
    ca, cb = _calls_of(a), _calls_of(b)
    return ca == cb


def student_completion(turn: ParsedTurn, *, request_id: str, model: str, prompt_tokens: int,
                       completion_tokens: int, confidence: float, version: str) -> dict[str, Any]:
    ids = [f"call_{request_id[:12]}_{k}" for k in range(len(turn.calls))]
    message = turn.message(ids)
    if turn.calls and not message["content"]:
        message["content"] = None
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": f"stillflow-student-{version}",
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": "tool_calls" if turn.calls else "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "stillflow": {"served_by": version, "confidence": round(confidence, 6)},
    }


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def sse_chunks(completion: dict[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """The completion as OpenAI streams it: a role chunk, the content, one chunk per tool call (name and
    arguments), a finish chunk, the usage chunk when asked for, then `[DONE]`."""
    head = {"id": completion.get("id", "chatcmpl-stillflow"), "object": "chat.completion.chunk",
            "created": completion.get("created", int(time.time())), "model": completion.get("model", ""),
            "system_fingerprint": completion.get("system_fingerprint")}
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    if message.get("content"):
        yield chunk({"content": message["content"]})
    for i, tc in enumerate(message.get("tool_calls") or []):
        fn = tc.get("function") or {}
        yield chunk({"tool_calls": [{"index": i, "id": tc.get("id"), "type": "function",
                                     "function": {"name": fn.get("name"), "arguments": ""}}]})
        yield chunk({"tool_calls": [{"index": i, "function": {"arguments": fn.get("arguments") or ""}}]})
    yield chunk({}, choice.get("finish_reason") or "stop")
    if include_usage and completion.get("usage"):
        yield _sse({**head, "choices": [], "usage": completion["usage"]})
    yield b"data: [DONE]\n\n"
