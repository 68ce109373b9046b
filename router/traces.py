"""Served requests as trace events (pure: builds the events, never sends them).

Exports `trace_identity(messages, headers)`, `TurnSteps`, `turn_steps(messages, response_message)`,
`TraceBook` and `TraceRecord`.

An agent sends its whole conversation with every request. The steps of a conversation are a function
of its messages — after the first user message: an assistant turn is a `reasoning` step (its text, when
it calls tools) and one `tool_call` step per call, or an `output` step (its text) when it answers; a
`tool` message is an `observation` step — so each request's new steps and their `seq` numbers follow
from the request alone: the tool results sent since the last assistant turn, and the turn just served.
Any replica numbers them the same, and a retried request repeats the same `seq` (the stream dedupes).

The trace id is the `X-Stillflow-Trace-Id` header (UTF-8; a value that is not a valid id is hashed),
else derived from the conversation's opening (system prompt and first user message): agents should
send the header, since two episodes with the same opening would otherwise share a trace. The task id
is `X-Stillflow-Task-Id`, else derived from the opening likewise. `TraceBook` remembers, per trace,
what its outcome event needs (bounded, expiring), until the agent reports the outcome.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from router.policy import ExpiringLRU
from stillflow.contracts import (
    TOOL_NAME_PATTERN,
    ToolSpec,
    TraceOutcomeEvent,
    TraceStep,
    get_limits,
    is_valid_id,
    utcnow,
)

__all__ = ["header_text", "trace_identity", "TurnSteps", "turn_steps", "TraceRecord", "TraceBook", "HEADER_TRACE_ID",
           "HEADER_TASK_ID"]

HEADER_TRACE_ID = "x-stillflow-trace-id"
HEADER_TASK_ID = "x-stillflow-task-id"
_TOOL_RX = re.compile(TOOL_NAME_PATTERN)


def _digest(*parts: str, n: int = 24) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:n]


def header_text(value: str) -> str:
    """A header value as the client meant it: HTTP servers decode header bytes as Latin-1, and clients
    send non-ASCII ids (`suite/área`) as UTF-8 bytes; a value that is not UTF-8 stays as decoded."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _as_id(value: str | None, prefix: str) -> str | None:
    if not value:
        return None
    value = header_text(value)
    return value if is_valid_id(value) else f"{prefix}-{_digest(value)}"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _opening(messages: list[dict[str, Any]]) -> tuple[str, str, int]:
    """(system prompt, first user message, index of that message)."""
    system = ""
    for i, m in enumerate(messages):
        role = m.get("role")
        if role in ("system", "developer") and not system:
            system = _text(m.get("content"))
        elif role == "user":
            return system, _text(m.get("content")), i
    return system, "", len(messages)


def trace_identity(messages: list[dict[str, Any]], headers: dict[str, str]) -> tuple[str, str]:
    """(trace_id, task_id) of a request (headers lower-cased)."""
    system, question, _ = _opening(messages)
    trace_id = _as_id(headers.get(HEADER_TRACE_ID), "tr") or f"conv-{_digest(system, question)}"
    task_id = _as_id(headers.get(HEADER_TASK_ID), "task") or f"task-{_digest(system, question, n=16)}"
    return trace_id, task_id


def _tool_name(name: Any) -> str:
    name = str(name or "unnamed")
    if _TOOL_RX.match(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)[:63] or "unnamed"
    return cleaned if re.match(r"[A-Za-z_]", cleaned) else "_" + cleaned[:62]


def _bounded(text: str) -> str:
    limit = get_limits().max_step_content_chars
    return text if len(text) <= limit else text[:limit]


def _args(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return {"_raw": _bounded(raw)}
    return raw if isinstance(raw, dict) else {"_value": raw}


# A step before it is a model: (step_type, content, tool_name, tool_args, tool_result, tool_call_id).
_Raw = tuple[str, str, str | None, dict[str, Any] | None, str | None, str | None]


def _raw_steps(messages: list[dict[str, Any]], names: dict[str, str], count_only: bool) -> list[_Raw] | int:
    """The steps of `messages` (after the first user message); `names` maps call ids to tool names and is
    filled as tool calls are seen. With `count_only`, just how many (nothing parsed)."""
    out: list[_Raw] = []
    n = 0
    for m in messages:
        role = m.get("role")
        if role == "assistant":
            calls = m.get("tool_calls") or []
            content = _text(m.get("content"))
            if calls:
                n += (1 if content.strip() else 0) + len(calls)
                for k, tc in enumerate(calls):
                    fn = tc.get("function") or {}
                    cid = _as_id(tc.get("id"), "call") or f"call-{k}"
                    names[cid] = _tool_name(fn.get("name"))
                    if not count_only:
                        if k == 0 and content.strip():
                            out.append(("reasoning", _bounded(content), None, None, None, None))
                        out.append(("tool_call", "", names[cid], _args(fn.get("arguments")), None, cid))
            else:
                n += 1
                if not count_only:
                    out.append(("output", _bounded(content), None, None, None, None))
        elif role == "tool":
            n += 1
            if not count_only:
                cid = _as_id(m.get("tool_call_id"), "call")
                name = names.get(cid or "") or (_tool_name(m["name"]) if m.get("name") else None)
                out.append(("observation", "", name, None, _bounded(_text(m.get("content"))), cid))
    return n if count_only else out


@dataclass(frozen=True)
class TurnSteps:
    system_prompt: str
    input_text: str
    first_seq: int
    steps: list[TraceStep]

    @property
    def n_steps(self) -> int:
        """Steps of the trace so far, this turn included."""
        return self.first_seq + len(self.steps)


def turn_steps(messages: list[dict[str, Any]], response_message: dict[str, Any],
               now: datetime | None = None) -> TurnSteps:
    """The new steps of one served request: tool results since the last assistant turn, then the turn."""
    system, question, first_user = _opening(messages)
    rest = messages[first_user + 1:]
    last_assistant = max((i for i, m in enumerate(rest) if m.get("role") == "assistant"), default=-1)
    names: dict[str, str] = {}
    # call ids of every earlier turn (for the observations' tool names), counting their steps
    first_seq = _raw_steps(rest[: last_assistant + 1], names, count_only=True)
    raw = _raw_steps([*rest[last_assistant + 1:], response_message], names, count_only=False)
    ts = now or utcnow()
    steps = [TraceStep(step_type=t, content=c, tool_name=tn, tool_args=ta, tool_result=tr, tool_call_id=ci,
                       timestamp=ts) for t, c, tn, ta, tr, ci in raw]  # type: ignore[union-attr]
    return TurnSteps(system, question, int(first_seq), steps)  # type: ignore[arg-type]


@dataclass
class TraceRecord:
    """What the router knows of a trace, for its outcome event."""

    trace_id: str
    task_id: str
    agent_id: str
    input_text: str
    system_prompt: str
    tools: list[ToolSpec]
    started: datetime
    n_steps: int = 0
    final_output: str = ""
    total_tokens: int = 0
    cost_usd: float = 0.0
    served_by: dict[str, int] = field(default_factory=dict)
    teacher_model: str | None = None
    workload: str | None = None


def _tool_specs(tools: list[dict[str, Any]]) -> list[ToolSpec]:
    out = []
    for t in tools:
        fn = t.get("function") if isinstance(t.get("function"), dict) else t
        try:
            out.append(ToolSpec(name=fn["name"], description=fn.get("description") or "",
                                parameters=fn.get("parameters") or {"type": "object", "properties": {}}))
        except (KeyError, TypeError, ValueError):
            continue
    return out


class TraceBook:
    """Per-trace memory (bounded, expiring) from the first served turn to the reported outcome."""

    def __init__(self, max_traces: int = 100_000, ttl_s: float = 3600.0) -> None:
        self._map: ExpiringLRU[TraceRecord] = ExpiringLRU(max_traces, ttl_s)

    def record(self, *, trace_id: str, task_id: str, agent_id: str, tools: list[dict[str, Any]], turn: TurnSteps,
               served_by: str, usage: dict[str, Any] | None, teacher_model: str | None,
               workload: str | None = None) -> TraceRecord:
        rec = self._map.get(trace_id)
        if rec is None:
            rec = TraceRecord(trace_id, task_id, agent_id, turn.input_text, turn.system_prompt, _tool_specs(tools),
                              turn.steps[0].timestamp if turn.steps else utcnow(), workload=workload)
        rec.n_steps = max(rec.n_steps, turn.n_steps)
        for s in turn.steps:
            if s.step_type == "output":
                rec.final_output = s.content
        usage = usage or {}
        rec.total_tokens += int(usage.get("total_tokens") or 0)
        cost = usage.get("cost_usd")
        if isinstance(cost, (int, float)):
            rec.cost_usd += float(cost)
        rec.served_by[served_by] = rec.served_by.get(served_by, 0) + 1
        if teacher_model:
            rec.teacher_model = teacher_model
        self._map.put(trace_id, rec)
        return rec

    def get(self, trace_id: str) -> TraceRecord | None:
        return self._map.get(trace_id)

    def pop(self, trace_id: str) -> TraceRecord | None:
        return self._map.pop(trace_id)

    def __len__(self) -> int:
        return len(self._map)

    @staticmethod
    def outcome(rec: TraceRecord, report: dict[str, Any]) -> TraceOutcomeEvent:
        """The outcome event of a trace from what the agent reported (`success`, optionally `final_output`,
        `error`, `ground_truth`, `expected_steps`, `quality_score`, `metadata`)."""
        now = utcnow()
        served = rec.served_by
        model_id = rec.teacher_model if (rec.teacher_model and "teacher" in served) else (
            next((k for k in served if k != "teacher"), "unknown"))
        metadata = {str(k): str(v) for k, v in (report.get("metadata") or {}).items()}
        metadata.update({"router": "true", "served_by": ",".join(f"{k}:{v}" for k, v in sorted(served.items()))})
        return TraceOutcomeEvent(
            trace_id=rec.trace_id, task_id=rec.task_id, agent_id=rec.agent_id, n_steps=rec.n_steps,
            input_text=rec.input_text, system_prompt=rec.system_prompt, tools=rec.tools,
            final_output=report.get("final_output") if report.get("final_output") is not None else rec.final_output,
            success=bool(report.get("success")), error=report.get("error"),
            quality_score=report.get("quality_score"), model_id=model_id, total_tokens=rec.total_tokens,
            wall_time_seconds=max(0.0, (now - rec.started).total_seconds()),
            ground_truth=report.get("ground_truth"), expected_steps=report.get("expected_steps"),
            cost_usd=round(rec.cost_usd, 8), workload=rec.workload, metadata=metadata, timestamp=now,
        )
