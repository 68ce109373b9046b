"""One trajectory builder for every convention: a trace's spans → the `AgentTrace` the SDK would record.

Exports `build_trajectory(spans, logs, *, final_marker)` → `Built` (the trace, its join key, an
evaluation outcome when the trace carries one) or raises `TrajectoryError` (kinds `no_content`,
`no_llm_spans`, `invalid`), which the worker dead-letters.

How a conversation becomes steps (the same steps `sim.openai_agent` records for the same episode):
model calls are read in start order; each one's input messages extend the conversation (a call's
input is the conversation so far plus the tool results since), its first output message is appended.
Then, after the first user message: an assistant message with tool calls gives a `reasoning` step for
its text and, per call, a `tool_call` step and an `observation` step with the result; the last
assistant message without tool calls is the answer, split at the final-answer marker into reasoning
and `output`. A result comes from the conversation's tool message for that call id; else from a tool
span, matched by call id, then by name + arguments, then in order (the Agents SDK puts no ids on its
tool spans). Tokens are summed over model-call spans only.

`task_id`: the span or resource attribute `stillflow.task_id`, else the conversation / session id,
else the trace id. `workload`: `stillflow.workload`. Success is never in the spans: `Built.trace` has
`success=False` until an outcome joins it (`streams.otel.join`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from stillflow.contracts import TOOL_NAME_PATTERN, AgentTrace, ContractError, StepType, ToolSpec, TraceStep, is_valid_id
from streams.otel.conventions import CONTENT_SWITCHES, Call, LlmCall, Message, ToolRun, read_trace
from streams.otel.otlp import OtelLog, OtelSpan

__all__ = ["Built", "TrajectoryError", "build_trajectory", "split_final", "TASK_ATTR", "WORKLOAD_ATTR",
           "evaluation_outcome"]

TASK_ATTR = "stillflow.task_id"
WORKLOAD_ATTR = "stillflow.workload"
_TOOL = re.compile(TOOL_NAME_PATTERN)
_EVAL_EVENT = "gen_ai.evaluation.result"
_PASS_LABELS = {"pass", "passed", "true", "correct", "success", "succeeded", "good", "yes", "1"}
_FAIL_LABELS = {"fail", "failed", "false", "incorrect", "failure", "bad", "no", "0"}


class TrajectoryError(ContractError):
    """A whole trace that gives no trajectory (kinds: `no_content`, `no_llm_spans`, `invalid`). `scopes`: for
    `no_content`, the instrumentation scopes whose model-call spans came without content."""

    def __init__(self, kind: str, message: str, scopes: tuple[str, ...] = ()) -> None:
        super().__init__(kind, message)
        self.scopes = scopes


@dataclass(frozen=True)
class Built:
    trace: AgentTrace
    join_key: str  # what an outcome names: the task id when the trace carries stillflow.task_id, else the trace id
    evaluation: bool | None  # a gen_ai.evaluation.result on the trace: its verdict
    conventions: tuple[str, ...]


def split_final(content: str, marker: str) -> tuple[str | None, str]:
    """(reasoning, answer): the text after the last line starting with `marker` is the answer."""
    if not marker:
        return None, content.strip()
    pattern = re.compile(r"(?:^|\n)\s*" + re.escape(marker.rstrip(":").strip()) + r"\s*:\s*", re.IGNORECASE)
    matches = list(pattern.finditer(content))
    if not matches:
        return None, content.strip()
    m = matches[-1]
    return content[: m.start()].strip() or None, content[m.end():].strip()


def _same(a: Message, b: Message) -> bool:
    if a.role != b.role:
        return False
    if a.role == "tool":
        return (a.tool_call_id is not None and a.tool_call_id == b.tool_call_id) or (a.content == b.content)
    if a.tool_calls or b.tool_calls:
        return [c.name for c in a.tool_calls] == [c.name for c in b.tool_calls]
    return (a.content or "").strip() == (b.content or "").strip()


def _conversation(calls: Sequence[LlmCall]) -> tuple[list[Message], str | None]:
    conv: list[Message] = []
    system: str | None = None
    for call in calls:
        inputs = []
        for m in call.inputs:
            if m.role in ("system", "developer"):
                system = system or m.content
            else:
                inputs.append(m)
        system = system or call.system
        k = 0
        while k < len(inputs) and k < len(conv) and _same(inputs[k], conv[k]):
            k += 1
        if k == len(conv):
            conv.extend(inputs[k:])
        else:  # not a continuation (another agent's context): keep only the tool results it brings
            seen = {m.tool_call_id for m in conv if m.role == "tool"}
            conv.extend(m for m in inputs[k:] if m.role == "tool" and m.tool_call_id not in seen)
        if call.outputs:
            conv.append(call.outputs[0])
    return conv, system


def _args(raw: Any) -> tuple[dict[str, Any], str | None]:
    """The arguments as a dict (SDK semantics: bad JSON kept as `_raw`, a non-object as `_value`)."""
    if raw is None or raw == "":
        return {}, None
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            return {"_raw": raw}, "arguments are not valid JSON"
    if not isinstance(value, dict):
        return {"_value": value}, "arguments must be a JSON object"
    return value, None


def _tool_name(raw: str) -> str:
    if _TOOL.match(raw or ""):
        return raw
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", raw or "")[:64] or "unnamed"
    return cleaned if _TOOL.match(cleaned) else f"_{cleaned}"[:64]


def _result(value: Any) -> Any:
    """A tool result as the SDK records it: text stays text; JSON text of an object stays text too."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


class _ToolRuns:
    """Tool spans not yet matched to a call: by id, then by name + arguments, then in order."""

    def __init__(self, runs: Iterable[ToolRun]) -> None:
        self.left = list(runs)

    def take(self, call: Call) -> ToolRun | None:
        for pick in (
            lambda r: call.id is not None and r.call_id == call.id,
            lambda r: r.name == call.name and _args(r.arguments)[0] == _args(call.arguments)[0],
            lambda r: r.name == call.name,
        ):
            for i, r in enumerate(self.left):
                if pick(r):
                    return self.left.pop(i)
        return None


def _ts(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC) if ns > 0 else datetime.now(UTC)


def _attr(spans: Sequence[OtelSpan], root: OtelSpan | None, name: str) -> Any:
    if root is not None and root.attributes.get(name) not in (None, ""):
        return root.attributes[name]
    for s in spans:
        if s.attributes.get(name) not in (None, ""):
            return s.attributes[name]
    for s in spans:
        if s.resource.get(name) not in (None, ""):
            return s.resource[name]
    return None


def evaluation_outcome(spans: Sequence[OtelSpan], logs: Sequence[OtelLog]) -> bool | None:
    """The verdict of a `gen_ai.evaluation.result` event (span event or log record), None when absent."""
    found: list[dict[str, Any]] = [e.attributes for s in spans for e in s.events if e.name == _EVAL_EVENT]
    found += [dict(rec.attributes, **(rec.body if isinstance(rec.body, dict) else {}))
              for rec in logs if rec.event_name == _EVAL_EVENT]
    verdict = None
    for a in found:
        label = str(a.get("gen_ai.evaluation.score.label", "")).strip().lower()
        if label in _PASS_LABELS:
            verdict = True
        elif label in _FAIL_LABELS:
            verdict = False
        elif isinstance(a.get("gen_ai.evaluation.score.value"), (int, float)):
            verdict = float(a["gen_ai.evaluation.score.value"]) >= 0.5
    return verdict


def _steps(conv: list[Message], runs: _ToolRuns, marker: str, t0: datetime) -> tuple[list[TraceStep], str, str]:
    """(steps, input text, final answer)."""
    first_user = next((i for i, m in enumerate(conv) if m.role == "user"), None)
    if first_user is None:
        raise TrajectoryError("invalid", "no user message in the model calls: nothing says what the task was")
    question = conv[first_user].content or ""
    rest = conv[first_user + 1:]
    results = {m.tool_call_id: m for m in rest if m.role == "tool" and m.tool_call_id}
    ordered_results = [m for m in rest if m.role == "tool"]
    used: set[int] = set()
    last_answer = max((i for i, m in enumerate(rest) if m.role == "assistant" and not m.tool_calls), default=None)
    steps: list[TraceStep] = []
    final = ""
    for i, m in enumerate(rest):
        if m.role != "assistant":
            continue
        if m.tool_calls:
            text = m.content or m.reasoning
            if text:
                steps.append(TraceStep(step_type=StepType.reasoning, content=text, timestamp=t0))
            for call in m.tool_calls:
                name = _tool_name(call.name)
                args, bad = _args(call.arguments)
                cid = call.id if call.id and is_valid_id(call.id) else None
                steps.append(TraceStep(step_type=StepType.tool_call, tool_name=name, tool_args=args,
                                       tool_call_id=cid, timestamp=t0))
                res: Any = None
                msg = results.get(call.id) if call.id else None
                if msg is None:  # no id: the next tool message not yet used, in order
                    msg = next((r for j, r in enumerate(ordered_results) if j not in used
                                and (r.tool_call_id is None or r.tool_call_id not in results or not call.id)), None)
                if msg is not None:
                    used.add(ordered_results.index(msg))
                    res = msg.content
                run = runs.take(call)
                if res is None and run is not None:
                    res = run.error if run.result is None and run.error else _result(run.result)
                if res is None and bad:
                    res = f"error: {bad}"
                steps.append(TraceStep(step_type=StepType.observation, tool_name=name, tool_call_id=cid,
                                       tool_result=res, timestamp=t0))
        elif i == last_answer:
            reasoning, answer = split_final(m.content or "", marker)
            if m.reasoning and not reasoning:
                reasoning = m.reasoning
            if reasoning:
                steps.append(TraceStep(step_type=StepType.reasoning, content=reasoning, timestamp=t0))
            steps.append(TraceStep(step_type=StepType.output, content=answer, timestamp=t0))
            final = answer
        elif m.content:
            steps.append(TraceStep(step_type=StepType.reasoning, content=m.content, timestamp=t0))
    for run in runs.left:  # tool spans no model call asked for in the captured messages
        name = _tool_name(run.name)
        args, _bad = _args(run.arguments)
        steps.insert(len(steps) - (1 if final else 0),
                     TraceStep(step_type=StepType.tool_call, tool_name=name, tool_args=args,
                               tool_call_id=run.call_id if run.call_id and is_valid_id(run.call_id) else None,
                               timestamp=t0))
        steps.insert(len(steps) - (1 if final else 0),
                     TraceStep(step_type=StepType.observation, tool_name=name, timestamp=t0,
                               tool_result=run.error if run.result is None and run.error else _result(run.result)))
    return steps, question, final


def build_trajectory(spans: Sequence[OtelSpan], logs: Sequence[OtelLog] = (), *,
                     final_marker: str = "Final answer:") -> Built:
    if not spans:
        raise TrajectoryError("no_llm_spans", "the trace has no spans")
    trace_id = spans[0].trace_id
    reading = read_trace(spans, logs)
    if not reading.llm_calls:
        raise TrajectoryError("no_llm_spans", f"trace {trace_id}: {len(spans)} spans, none of them a model call "
                                              "in a GenAI convention (official GenAI, OpenInference, OpenLLMetry)")
    if reading.no_content_scopes:
        conv = next(c.convention for c in reading.llm_calls if not c.has_content)
        raise TrajectoryError(
            "no_content",
            f"trace {trace_id}: {sum(not c.has_content for c in reading.llm_calls)} model-call spans carry no "
            f"message content (instrumentation {', '.join(sorted(reading.no_content_scopes))}); turn content "
            f"capture on with {CONTENT_SWITCHES[conv]}", scopes=tuple(sorted(reading.no_content_scopes)))
    span_ids = {s.span_id for s in spans}
    root = next((s for s in spans if s.parent_span_id is None or s.parent_span_id not in span_ids), None)
    conv, system = _conversation(reading.llm_calls)
    start_ns = min(s.start_ns for s in spans)
    end_ns = max(s.end_ns for s in spans)
    t0 = _ts(start_ns)
    steps, question, final = _steps(conv, _ToolRuns(reading.tool_runs), final_marker, t0)
    tools: dict[str, ToolSpec] = {}
    defs = [t for call in reading.llm_calls for t in call.tools]
    defs += [r.definition for r in reading.tool_runs if r.definition]
    for t in defs:
        if t["name"] not in tools and _TOOL.match(t["name"]):
            try:
                tools[t["name"]] = ToolSpec(**t)
            except (ValidationError, ValueError):
                continue
    ids = [str(v) for v in (_attr(spans, root, TASK_ATTR),
                            next((c.conversation_id for c in reading.llm_calls if c.conversation_id), None),
                            _attr(spans, root, "session.id"))
           if v not in (None, "")]
    task_id = next((v for v in ids if is_valid_id(v)), trace_id)
    join_key = str(_attr(spans, root, TASK_ATTR) or "") or trace_id
    if not is_valid_id(join_key):
        join_key = trace_id
    workload = _attr(spans, root, WORKLOAD_ATTR)
    agent = _attr(spans, root, "service.name")
    model = next((c.model for c in reversed(reading.llm_calls) if c.model), None) or "unknown"
    error = None
    if root is not None and root.status_code == 2:
        error = root.status_message or f"the root span {root.name!r} ended with status ERROR"
    meta = {"source": "otel", "otel_conventions": ",".join(sorted(reading.conventions)),
            "otel_scope": ",".join(sorted({c.scope for c in reading.llm_calls}))[:200]}
    try:
        trace = AgentTrace(
            trace_id=trace_id, task_id=task_id,
            agent_id=str(agent) if agent and is_valid_id(str(agent)) else "otel",
            input_text=question, system_prompt=system or "", tools=list(tools.values()), steps=steps,
            final_output=final, success=False, error=error, model_id=str(model)[:200],
            total_tokens=sum(c.tokens for c in reading.llm_calls),
            wall_time_seconds=max(0.0, (end_ns - start_ns) / 1e9),
            workload=str(workload) if workload and is_valid_id(str(workload)) else None,
            metadata=meta, timestamp=t0,
        )
    except ValidationError as exc:
        raise TrajectoryError("invalid", f"trace {trace_id}: the trajectory is not a valid trace: "
                                         f"{str(exc)[:800]}") from None
    return Built(trace=trace, join_key=join_key, evaluation=evaluation_outcome(spans, logs),
                 conventions=tuple(sorted(reading.conventions)))
