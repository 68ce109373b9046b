"""streams.otel.trajectory (and conventions) on spans recorded from real instrumentation libraries.

Each fixture in tests/fixtures/otel/ holds the OTLP/HTTP requests an instrumented agent sent and, per
episode, the `AgentTrace` the SDK path recorded for the same episode: the trajectory built from the spans
must be that trace (steps, answer, prompt, task, workload, tokens, tools). Broker-free and fast.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from typing import Any

import pytest

from stillflow.contracts import StepType
from streams.otel.otlp import (
    OtelEvent,
    OtelLog,
    OtelSpan,
)
from streams.otel.trajectory import TASK_ATTR, Built, TrajectoryError, build_trajectory, evaluation_outcome, split_final
from tests.otel_fixtures import FIXTURES, copied, load

# every fixture whose episodes hold the SDK-recorded trace (agents.json holds a summary instead)
WITH_SDK_TRACE = sorted(p.stem for p in FIXTURES.glob("*.json")
                        if "trace" in json.loads(p.read_text())["episodes"][0] and p.stem != "genai-nocontent")
# instrumentations that do not record the tool definitions at all (opentelemetry-instrumentation-openai-v2)
NO_TOOL_DEFINITIONS = {"openai-v2-events"}
CONTENT_ATTRS = ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.tool.definitions")


def fixture(name: str) -> tuple[dict[str, list[OtelSpan]], dict[str, list[OtelLog]], list[dict[str, Any]]]:
    """A fixture through the receiver's path, copied (the tests change what they get)."""
    return copied(name)


def episodes(names: list[str]) -> list[tuple[str, int]]:
    return [(n, i) for n in names for i in range(len(load(n)[2]))]


def episode(name: str, i: int) -> tuple[list[OtelSpan], list[OtelLog], dict[str, Any]]:
    spans, logs, eps = fixture(name)
    ep = eps[i]
    return spans[ep["otel_trace_id"]], logs.get(ep["otel_trace_id"], []), ep


def _ids(p: Any) -> str:
    return f"{p[0]}-{p[1]}" if isinstance(p, tuple) else str(p)


def step_view(steps: list[Any]) -> list[tuple[Any, ...]]:
    """What must match the SDK's steps (content only where the step is text: reasoning and output)."""
    out = []
    for s in steps:
        d = s if isinstance(s, dict) else s.model_dump(mode="json")
        out.append((d["step_type"], d["tool_name"], d["tool_args"], d["tool_result"], d["tool_call_id"],
                    d["content"] if d["step_type"] in ("reasoning", "output") else None))
    return out


def with_attrs(span: OtelSpan, **changes: Any) -> OtelSpan:
    attrs = dict(span.attributes)
    for k, v in changes.items():
        if v is None:
            attrs.pop(k, None)
        else:
            attrs[k] = v
    return span.model_copy(update={"attributes": attrs})


def llm_spans(spans: list[OtelSpan]) -> list[OtelSpan]:
    return [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"
            or s.attributes.get("openinference.span.kind") == "LLM" or s.attributes.get("llm.request.type") == "chat"]


# ---- the SDK-recorded trace, per fixture and episode ----

@pytest.mark.parametrize("case", episodes(WITH_SDK_TRACE), ids=_ids)
def test_trajectory_equals_sdk_trace(case: tuple[str, int]) -> None:
    spans, logs, ep = episode(*case)
    want = ep["trace"]
    built = build_trajectory(spans, logs)
    assert isinstance(built, Built)
    t = built.trace
    assert step_view(t.steps) == step_view(want["steps"])
    assert t.final_output == want["final_output"]
    assert t.input_text == want["input_text"]
    assert t.system_prompt == want["system_prompt"]
    assert t.task_id == want["task_id"]
    assert t.workload == want["workload"]
    assert t.total_tokens == want["total_tokens"]
    assert t.model_id == want["model_id"]
    if case[0] in NO_TOOL_DEFINITIONS:
        assert want["tools"] and t.tools == []  # nothing in the telemetry names them
    else:
        assert [x.name for x in t.tools] == [x["name"] for x in want["tools"]]
        assert [x.model_dump(mode="json") for x in t.tools] == want["tools"]
    # an OTel trajectory never claims success: that comes with an outcome (streams.otel.join)
    assert t.success is False and t.error is None
    assert t.trace_id == ep["otel_trace_id"]
    assert built.join_key == want["task_id"]  # stillflow.task_id is on the root span
    assert built.evaluation is None
    assert t.metadata["source"] == "otel"


@pytest.mark.parametrize("case", episodes(WITH_SDK_TRACE), ids=_ids)
def test_tokens_are_summed_over_model_calls_only(case: tuple[str, int]) -> None:
    spans, logs, ep = episode(*case)
    # an agent/workflow span repeating its children's tokens, and a non-GenAI span with usage: not counted
    root = next(s for s in spans if s.parent_span_id is None)
    agent = OtelSpan(trace_id=root.trace_id, span_id="a" * 16, parent_span_id=root.span_id, name="invoke_agent x",
                     start_ns=root.start_ns + 1, end_ns=root.end_ns, scope="x",
                     attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 10_000,
                                 "gen_ai.usage.output_tokens": 10_000})
    other = OtelSpan(trace_id=root.trace_id, span_id="b" * 16, parent_span_id=root.span_id, name="http",
                     start_ns=root.start_ns + 2, end_ns=root.end_ns, attributes={"llm.usage.total_tokens": 5})
    t = build_trajectory([*spans, agent, other], logs).trace
    assert t.total_tokens == ep["trace"]["total_tokens"]
    assert step_view(t.steps) == step_view(ep["trace"]["steps"])


@pytest.mark.parametrize("case", episodes(WITH_SDK_TRACE + ["agents"]), ids=_ids)
def test_span_order_does_not_matter(case: tuple[str, int]) -> None:
    spans, logs, _ep = episode(*case)
    want = build_trajectory(spans, logs).trace
    for seed in range(5):
        shuffled = list(spans)
        random.Random(seed).shuffle(shuffled)
        got = build_trajectory(shuffled, list(reversed(logs))).trace
        assert step_view(got.steps) == step_view(want.steps)
        assert got.model_dump(exclude={"timestamp"}) == want.model_dump(exclude={"timestamp"})
    got = build_trajectory(list(reversed(spans)), logs).trace
    assert got.model_dump(exclude={"timestamp"}) == want.model_dump(exclude={"timestamp"})


# ---- the Agents SDK (OpenInference): TOOL spans without call ids ----

def _tool_spans(spans: list[OtelSpan]) -> list[OtelSpan]:
    return [s for s in spans if s.attributes.get("openinference.span.kind") == "TOOL"]


@pytest.mark.parametrize("case", episodes(["agents"]), ids=_ids)
def test_agents_tool_calls_intact(case: tuple[str, int]) -> None:
    spans, logs, ep = episode(*case)
    tool_spans = _tool_spans(spans)
    assert tool_spans and all("tool_call.id" not in s.attributes and "tool.id" not in s.attributes
                              for s in tool_spans)  # the point of this fixture
    built = build_trajectory(spans, logs)
    t = built.trace
    calls = [s for s in t.steps if s.step_type is StepType.tool_call]
    obs = [s for s in t.steps if s.step_type is StepType.observation]
    assert len(calls) == ep["tool_calls"] == len(tool_spans) == len(obs)
    assert t.final_output == ep["final_output"]
    assert t.steps[-1].step_type is StepType.output and t.steps[-1].content == ep["final_output"]
    assert t.task_id == ep["task_id"] == built.join_key
    # each observation right after its call, same tool, same id, the TOOL span's output as result
    results = {s.attributes["tool.name"]: s.attributes["output.value"] for s in tool_spans}
    for i, s in enumerate(t.steps):
        if s.step_type is StepType.tool_call:
            o = t.steps[i + 1]
            assert o.step_type is StepType.observation
            assert (o.tool_name, o.tool_call_id) == (s.tool_name, s.tool_call_id)
            assert o.tool_call_id and o.tool_call_id.startswith("call_")
            assert o.tool_result == results[s.tool_name]
            assert s.tool_args == json.loads(next(x.attributes["input.value"] for x in tool_spans
                                                  if x.attributes["tool.name"] == s.tool_name))
    # the Agents SDK describes its tools only on the TOOL spans
    assert sorted(x.name for x in t.tools) == sorted(results)
    assert all(x.description and x.parameters.get("type") == "object" for x in t.tools)


def _strip_tool_messages(span: OtelSpan) -> OtelSpan:
    """Drop the role=tool input messages: results can then come only from the TOOL spans."""
    a = span.attributes
    idx = {m.group(1) for k, v in a.items()
           if (m := re.match(r"llm\.input_messages\.(\d+)\.message\.role$", k)) and v == "tool"}
    return span.model_copy(update={"attributes": {
        k: v for k, v in a.items() if not any(k.startswith(f"llm.input_messages.{i}.") for i in idx)}})


def _rename_tool(span: OtelSpan, old: str, new: str) -> OtelSpan:
    """Every mention of tool `old` (in model-call messages and on its TOOL span) as `new`."""
    attrs = {k: (new if v == old and (k.endswith(".function.name") or k == "tool.name") else v)
             for k, v in span.attributes.items()}
    return span.model_copy(update={"attributes": attrs, "name": new if span.name == old else span.name})


def _observations(t: Any) -> list[tuple[Any, ...]]:
    out = []
    for i, s in enumerate(t.steps):
        if s.step_type is StepType.tool_call:
            o = t.steps[i + 1]
            assert o.step_type is StepType.observation
            out.append((s.tool_name, json.dumps(s.tool_args, sort_keys=True), s.tool_call_id, o.tool_result))
    return out


def _recovery_agents() -> tuple[list[OtelSpan], dict[str, Any], list[tuple[Any, ...]]]:
    spans, _logs, ep = episode("agents", 1)
    assert ep["tool_calls"] == 2
    want = _observations(build_trajectory(spans).trace)
    return spans, ep, want


def test_agents_results_from_tool_spans_reversed() -> None:
    spans, ep, want = _recovery_agents()
    spans = [_strip_tool_messages(s) for s in spans]
    a, b = _tool_spans(spans)
    # reversed in the list and in time: the pairing follows name + arguments, not position
    swapped = {a.span_id: b.start_ns, b.span_id: a.start_ns}
    spans = [s.model_copy(update={"start_ns": swapped[s.span_id]}) if s.span_id in swapped else s
             for s in spans][::-1]
    t = build_trajectory(spans).trace
    assert _observations(t) == want
    assert t.final_output == ep["final_output"]


def test_agents_same_tool_matched_by_arguments_then_order() -> None:
    spans, _ep, want = _recovery_agents()
    # both calls to the same tool with different arguments, results only on the TOOL spans
    spans = [_rename_tool(_strip_tool_messages(s), "read_file", "query_db") for s in spans]
    want = [("query_db", *w[1:]) for w in want]
    a, b = _tool_spans(spans)
    assert a.attributes["tool.name"] == b.attributes["tool.name"] == "query_db"
    swapped = {a.span_id: b.start_ns, b.span_id: a.start_ns}
    by_args = [s.model_copy(update={"start_ns": swapped[s.span_id]}) if s.span_id in swapped else s
               for s in spans][::-1]
    assert _observations(build_trajectory(by_args).trace) == want
    # without arguments on the TOOL spans: in start order (not list order)
    no_args = [with_attrs(s, **{"input.value": None}) if s in (a, b) else s for s in spans][::-1]
    assert _observations(build_trajectory(no_args).trace) == want
    # ... so when the spans' times are swapped too, order pairs them the other way round
    crossed = [s.model_copy(update={"start_ns": swapped[s.span_id]}) if s.span_id in swapped else s
               for s in no_args]
    got = _observations(build_trajectory(crossed).trace)
    assert [g[:3] for g in got] == [w[:3] for w in want]
    assert [g[3] for g in got] == [w[3] for w in reversed(want)]


# ---- GenAI events in log records ----

@pytest.mark.parametrize("case", episodes(["genai-events"]), ids=_ids)
def test_genai_events_from_logs_alone(case: tuple[str, int]) -> None:
    spans, logs, ep = episode(*case)
    assert logs and all(r.event_name == "gen_ai.client.inference.operation.details" for r in logs)
    stripped = [with_attrs(s, **dict.fromkeys(CONTENT_ATTRS)) for s in spans]
    assert not any(k in s.attributes for s in stripped for k in CONTENT_ATTRS)
    t = build_trajectory(stripped, logs).trace
    want = ep["trace"]
    assert step_view(t.steps) == step_view(want["steps"])
    assert (t.final_output, t.input_text, t.system_prompt, t.task_id, t.workload, t.total_tokens) == (
        want["final_output"], want["input_text"], want["system_prompt"], want["task_id"], want["workload"],
        want["total_tokens"])
    assert [x.name for x in t.tools] == [x["name"] for x in want["tools"]]
    # the logs come in any order
    assert step_view(build_trajectory(stripped, list(reversed(logs))).trace.steps) == step_view(want["steps"])
    # without the logs the stripped spans carry no content at all
    with pytest.raises(TrajectoryError) as exc:
        build_trajectory(stripped, [])
    assert exc.value.kind == "no_content"


@pytest.mark.parametrize("case", episodes(["openai-v2-events"]), ids=_ids)
def test_older_per_message_events_in_logs(case: tuple[str, int]) -> None:
    """opentelemetry-instrumentation-openai-v2: one log record per message, none of the content on the spans."""
    spans, logs, ep = episode(*case)
    names = {r.event_name for r in logs}
    assert "gen_ai.choice" in names and "gen_ai.user.message" in names
    assert not any(k in s.attributes for s in spans for k in CONTENT_ATTRS)
    t = build_trajectory(spans, list(reversed(logs))).trace
    assert step_view(t.steps) == step_view(ep["trace"]["steps"])
    assert (t.final_output, t.input_text, t.system_prompt) == (
        ep["trace"]["final_output"], ep["trace"]["input_text"], ep["trace"]["system_prompt"])
    with pytest.raises(TrajectoryError) as exc:
        build_trajectory(spans, [])
    assert exc.value.kind == "no_content" and "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT" in str(exc.value)


@pytest.mark.parametrize("case", episodes(["genai-events"]), ids=_ids)
def test_genai_events_as_span_events(case: tuple[str, int]) -> None:
    """The same details event on the span itself (span event) instead of a log record."""
    spans, logs, ep = episode(*case)
    by_span = defaultdict(list)
    for r in logs:
        by_span[r.span_id].append(OtelEvent(name=r.event_name, time_ns=r.time_ns, attributes=r.attributes))
    moved = [with_attrs(s, **dict.fromkeys(CONTENT_ATTRS)).model_copy(update={"events": by_span.get(s.span_id, [])})
             for s in spans]
    t = build_trajectory(moved, []).trace
    assert step_view(t.steps) == step_view(ep["trace"]["steps"])


# ---- errors ----

@pytest.mark.parametrize("case", episodes(["genai-nocontent"]), ids=_ids)
def test_no_content(case: tuple[str, int]) -> None:
    spans, logs, ep = episode(*case)
    with pytest.raises(TrajectoryError) as exc:
        build_trajectory(spans, logs)
    assert exc.value.kind == "no_content"
    assert "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT" in str(exc.value)
    assert ep["otel_trace_id"] in str(exc.value)
    assert "opentelemetry.instrumentation.genai" in str(exc.value)  # the scope that made the spans


def test_one_content_less_call_is_enough_for_no_content() -> None:
    spans, logs, _ep = episode("genai", 1)
    first = min(llm_spans(spans), key=lambda s: s.start_ns)
    spans = [with_attrs(s, **dict.fromkeys(CONTENT_ATTRS)) if s.span_id == first.span_id else s for s in spans]
    with pytest.raises(TrajectoryError) as exc:
        build_trajectory(spans, logs)
    assert exc.value.kind == "no_content" and "1 model-call spans" in str(exc.value)


@pytest.mark.parametrize("name", WITH_SDK_TRACE + ["agents"])
def test_no_llm_spans(name: str) -> None:
    spans, _logs, _eps = fixture(name)
    for tid, sp in spans.items():
        others = [s for s in sp if s not in llm_spans(sp) and s not in _tool_spans(sp)]
        assert others
        with pytest.raises(TrajectoryError) as exc:
            build_trajectory(others)
        assert exc.value.kind == "no_llm_spans" and tid in str(exc.value)
    with pytest.raises(TrajectoryError) as exc:
        build_trajectory([])
    assert exc.value.kind == "no_llm_spans"


def test_no_user_message_is_invalid() -> None:
    spans, _logs, _ep = episode("genai", 0)
    spans = [with_attrs(s, **{"gen_ai.input.messages": json.dumps(
        [m for m in json.loads(s.attributes["gen_ai.input.messages"]) if m["role"] != "user"])})
        if "gen_ai.input.messages" in s.attributes else s for s in spans]
    with pytest.raises(TrajectoryError) as exc:
        build_trajectory(spans)
    assert exc.value.kind == "invalid"


def test_root_error_status_is_the_trace_error() -> None:
    spans, _logs, _ep = episode("genai", 0)
    spans = [s.model_copy(update={"status_code": 2, "status_message": "boom"}) if s.parent_span_id is None else s
             for s in spans]
    assert build_trajectory(spans).trace.error == "boom"


# ---- task id, join key ----

def test_task_id_falls_back_to_the_trace_id() -> None:
    spans, _logs, ep = episode("genai", 0)
    spans = [with_attrs(s, **{TASK_ATTR: None}) for s in spans]
    built = build_trajectory(spans)
    assert built.trace.task_id == built.join_key == ep["otel_trace_id"]


def test_task_id_from_the_conversation_id() -> None:
    spans, _logs, ep = episode("genai", 0)
    spans = [with_attrs(s, **{TASK_ATTR: None}) for s in spans]
    spans = [with_attrs(s, **{"gen_ai.conversation.id": "conv-7"}) if s in llm_spans(spans) else s for s in spans]
    built = build_trajectory(spans)
    assert built.trace.task_id == "conv-7"
    assert built.join_key == ep["otel_trace_id"]  # outcomes name a conversation-less trace by its id


def test_task_id_from_a_resource_attribute() -> None:
    spans, _logs, _ep = episode("genai", 0)
    spans = [with_attrs(s, **{TASK_ATTR: None}).model_copy(update={"resource": {**s.resource, TASK_ATTR: "res-1"}})
             for s in spans]
    built = build_trajectory(spans)
    assert built.trace.task_id == built.join_key == "res-1"


# ---- the final-answer marker ----

def test_split_final() -> None:
    assert split_final("It's delivered.", "Final answer:") == (None, "It's delivered.")
    assert split_final("I looked.\nFinal answer: delivered", "Final answer:") == ("I looked.", "delivered")
    assert split_final("I looked.\n  final ANSWER :  delivered ", "Final answer:") == ("I looked.", "delivered")
    # the last marker wins; a marker not at a line start is text
    assert split_final("a\nFinal answer: b\nFinal answer: c", "Final answer:") == ("a\nFinal answer: b", "c")
    assert split_final("not the Final answer: x", "Final answer:") == (None, "not the Final answer: x")
    assert split_final("Final answer: x", "Final answer:") == (None, "x")
    assert split_final("ANSWER: 42", "answer") == (None, "42")  # the colon is optional in the marker
    # an empty marker: everything is the answer
    assert split_final("  I looked.\nFinal answer: delivered  ", "") == (None, "I looked.\nFinal answer: delivered")
    assert split_final("", "") == (None, "")
    # regex metacharacters in the marker are literal
    assert split_final("x\n(a+b)*: y", "(a+b)*:") == ("x", "y")


def _answer_with_marker(spans: list[OtelSpan], text: str) -> list[OtelSpan]:
    last = max(llm_spans(spans), key=lambda s: s.start_ns)
    out = json.loads(last.attributes["gen_ai.output.messages"])
    out[0]["parts"] = [{"type": "text", "content": text}]
    return [with_attrs(s, **{"gen_ai.output.messages": json.dumps(out)}) if s.span_id == last.span_id else s
            for s in spans]


def test_final_marker_in_the_trajectory() -> None:
    spans, _logs, ep = episode("genai", 0)
    spans = _answer_with_marker(spans, "The orders table says so.\nFinal answer: It's delivered.")
    t = build_trajectory(spans).trace
    assert t.final_output == "It's delivered."
    assert [(s.step_type, s.content) for s in t.steps[-2:]] == [
        (StepType.reasoning, "The orders table says so."), (StepType.output, "It's delivered.")]
    assert step_view(t.steps[:-2]) == step_view(ep["trace"]["steps"][:-1])
    # another marker: none found, the whole text is the answer
    t = build_trajectory(spans, final_marker="ANSWER>>").trace
    assert t.final_output == "The orders table says so.\nFinal answer: It's delivered."
    assert t.steps[-1].step_type is StepType.output and t.steps[-2].step_type is not StepType.reasoning
    # an empty marker: no split
    t = build_trajectory(spans, final_marker="").trace
    assert t.final_output == "The orders table says so.\nFinal answer: It's delivered."
    assert step_view(t.steps[:-1]) == step_view(ep["trace"]["steps"][:-1])


# ---- gen_ai.evaluation.result ----

def _with_eval(spans: list[OtelSpan], **attrs: Any) -> list[OtelSpan]:
    root = next(s for s in spans if s.parent_span_id is None)
    ev = OtelEvent(name="gen_ai.evaluation.result", time_ns=root.end_ns,
                   attributes={"gen_ai.evaluation.name": "correctness", **attrs})
    return [s.model_copy(update={"events": [*s.events, ev]}) if s.span_id == root.span_id else s for s in spans]


@pytest.mark.parametrize(("attrs", "verdict"), [
    ({"gen_ai.evaluation.score.label": "pass"}, True),
    ({"gen_ai.evaluation.score.label": " Correct "}, True),
    ({"gen_ai.evaluation.score.label": "FAIL"}, False),
    ({"gen_ai.evaluation.score.label": "incorrect"}, False),
    ({"gen_ai.evaluation.score.value": 0.9}, True),
    ({"gen_ai.evaluation.score.value": 0.5}, True),
    ({"gen_ai.evaluation.score.value": 0.1}, False),
    ({"gen_ai.evaluation.score.value": 1}, True),
    ({"gen_ai.evaluation.score.label": "fail", "gen_ai.evaluation.score.value": 0.9}, False),  # a label wins
    ({"gen_ai.evaluation.score.label": "meh"}, None),
    ({"gen_ai.evaluation.score.value": "0.9"}, None),  # not a number
    ({}, None),
])
def test_evaluation_event(attrs: dict[str, Any], verdict: bool | None) -> None:
    spans, logs, ep = episode("genai", 0)
    spans = _with_eval(spans, **attrs)
    assert evaluation_outcome(spans, logs) is verdict
    built = build_trajectory(spans, logs)
    assert built.evaluation is verdict
    assert built.trace.success is False  # the verdict is the join's to apply
    assert step_view(built.trace.steps) == step_view(ep["trace"]["steps"])


def test_evaluation_in_a_log_record_and_the_last_one_wins() -> None:
    spans, _logs, _ep = episode("genai", 0)
    tid = spans[0].trace_id
    rec = OtelLog(trace_id=tid, event_name="gen_ai.evaluation.result",
                  attributes={"gen_ai.evaluation.name": "x"}, body={"gen_ai.evaluation.score.label": "passed"})
    assert evaluation_outcome(spans, []) is None
    assert evaluation_outcome(spans, [rec]) is True
    assert build_trajectory(spans, [rec]).evaluation is True
    # a span event that passes, then a log record that fails: the last read counts
    later = rec.model_copy(update={"body": None, "attributes": {"gen_ai.evaluation.score.value": 0.0}})
    assert evaluation_outcome(_with_eval(spans, **{"gen_ai.evaluation.score.label": "pass"}), [later]) is False
    # other events are not evaluations
    other = rec.model_copy(update={"event_name": "gen_ai.choice"})
    assert evaluation_outcome(spans, [other]) is None


# ---- attribute values of unexpected types (found by tests/test_otel_otlp.py's fuzzing) ----

def test_odd_value_types_are_no_ids_and_no_tokens() -> None:
    # OpenInference: a tool call id that is a list, not text
    spans, _logs, ep = episode("openinference", 0)
    spans = [with_attrs(s, **{k: [None] for k in s.attributes if k.endswith("tool_call.id")}) for s in spans]
    t = build_trajectory(spans).trace
    assert [s.tool_call_id for s in t.steps] == [None] * len(t.steps)
    assert [v[:4] for v in step_view(t.steps)] == [v[:4] for v in step_view(ep["trace"]["steps"])]
    # official GenAI: tool_calls that is not a list, ids that are numbers, infinite token counts
    spans, _logs, ep = episode("genai", 0)
    first = min(llm_spans(spans), key=lambda s: s.start_ns)
    msgs = json.loads(first.attributes["gen_ai.input.messages"])
    msgs.append({"role": "assistant", "content": "x", "tool_calls": True, "tool_call_id": {"a": 1}})
    uncounted = first.attributes["gen_ai.usage.input_tokens"]
    spans = [with_attrs(s, **{"gen_ai.input.messages": json.dumps(msgs), "gen_ai.usage.input_tokens": float("inf")})
             if s.span_id == first.span_id else s for s in spans]
    t = build_trajectory(spans).trace
    assert t.final_output == ep["trace"]["final_output"]
    assert t.total_tokens == ep["trace"]["total_tokens"] - uncounted
    # an older-form event whose tool_calls is not a list
    spans, logs, _ep = episode("openai-v2-events", 0)
    odd = [r.model_copy(update={"body": {**r.body, "tool_calls": True}}) if isinstance(r.body, dict) else r
           for r in logs]
    assert build_trajectory(spans, odd).trace.final_output
