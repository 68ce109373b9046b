"""Test helpers: build traces, read topics back, probe for a Docker engine."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from pydantic import BaseModel

from stillflow.contracts import AgentTrace, ToolSpec, TraceStep
from stillflow.settings import StillflowSettings

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

CALC = ToolSpec(
    name="calc",
    description="evaluate an arithmetic expression",
    parameters={"type": "object", "properties": {"expr": {"type": "string"}}, "required": ["expr"]},
)


SIM_START = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


def teacher_traces(n: int, *, seed: int, start: datetime = SIM_START, rate: float = 20.0) -> list[AgentTrace]:
    """`n` sim teacher traces made offline (no broker), `rate` per second of event time from `start`."""
    from sim.policies import make_policy
    from sim.runner import iter_offline

    return list(iter_offline(n, make_policy("teacher"), seed=seed, start=start, rate=rate))


def make_trace(i: int, n_steps: int = 6, *, task: str | None = None) -> AgentTrace:
    """A deterministic, valid trace whose step contents say where they belong."""
    steps = []
    t0 = EPOCH + timedelta(seconds=i)
    for s in range(n_steps - 1):
        ts = t0 + timedelta(milliseconds=s)
        kind = ("reasoning", "tool_call", "observation")[s % 3]
        if kind == "tool_call":
            steps.append(TraceStep(step_type="tool_call", content=f"t{i}s{s}", tool_name="calc",
                                   tool_args={"expr": f"{i}+{s}"}, tool_call_id=f"c{i}-{s}", timestamp=ts))
        elif kind == "observation":
            steps.append(TraceStep(step_type="observation", tool_name="calc", tool_call_id=f"c{i}-{s - 1}",
                                   tool_result=str(i + s - 1), timestamp=ts))
        else:
            steps.append(TraceStep(step_type="reasoning", content=f"trace {i} step {s}: thinking ünïcödé ✓",
                                   timestamp=ts))
    steps.append(TraceStep(step_type="output", content=f"answer {i}", timestamp=t0 + timedelta(seconds=1)))
    return AgentTrace(
        trace_id=f"tr-{i:06d}", task_id=task or f"task-{i % 17}", agent_id="agent-1", input_text=f"question {i}",
        tools=[CALC], steps=steps, final_output=f"answer {i}", success=True, ground_truth=f"answer {i}",
        expected_steps=n_steps, model_id="teacher", total_tokens=10 * n_steps, timestamp=t0,
    )


def real_shaped_row(i: int = 0, *, start: datetime = EPOCH) -> dict:
    """An AgentTrace row as real agents record one (JSON, nulls included): a namespaced task id, ids with
    `/ @ # =` and non-ASCII letters, provider-style tool-call ids, tool results that are an object, a list,
    a number and null, and optional fields sent as null."""
    t0 = start + timedelta(seconds=i)

    def at(ms: int) -> str:
        return (t0 + timedelta(milliseconds=ms)).isoformat()

    search = {"name": "search_emails", "description": "search the inbox",
              "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}
    files = {"name": "list_files", "description": None,
             "parameters": {"type": "object", "properties": {}}}
    return {
        "trace_id": f"run#{i}/ü=ok", "task_id": f"workspace/drive/user_task_{i}", "agent_id": "agent@team-α",
        "input_text": "Which files did Emma share, and how many e-mails mention the launch?",
        "system_prompt": None, "tools": [search, files],
        "steps": [
            {"step_type": "reasoning", "content": "Search the inbox first.", "tool_name": None, "tool_args": None,
             "tool_result": None, "tool_call_id": None, "timestamp": at(0)},
            {"step_type": "tool_call", "content": None, "tool_name": "search_emails",
             "tool_args": '{"query": "launch"}', "tool_call_id": f"toolu_01A{i}xYz", "timestamp": at(1)},
            {"step_type": "observation", "tool_name": "search_emails", "tool_call_id": f"toolu_01A{i}xYz",
             "tool_result": {"hits": [{"id": 7, "subject": "Launch 🚀"}, {"id": 9, "subject": None}], "total": 2},
             "timestamp": at(2)},
            {"step_type": "tool_call", "tool_name": "list_files", "tool_args": {},
             "tool_call_id": "3f2b8c1e-9d4a-4e7b-a1c2-5d6e7f809a1b", "timestamp": at(3)},
            {"step_type": "observation", "tool_name": "list_files",
             "tool_call_id": "3f2b8c1e-9d4a-4e7b-a1c2-5d6e7f809a1b", "tool_result": [0, 4], "timestamp": at(4)},
            {"step_type": "tool_call", "tool_name": "list_files", "tool_args": {}, "tool_call_id": "call_2",
             "timestamp": at(5)},
            {"step_type": "observation", "tool_name": "list_files", "tool_call_id": "call_2", "tool_result": None,
             "timestamp": at(6)},
            {"step_type": "output", "content": "0 4", "timestamp": at(7)},
        ],
        "final_output": "0 4", "success": True, "error": None, "quality_score": None, "model_id": "teacher-large",
        "total_tokens": None, "wall_time_seconds": None, "ground_truth": "0 4", "expected_steps": None,
        "cost_usd": None, "metadata": {"suite": "workspace", "attempt": 1, "tags": ["clean"], "note": None},
        "timestamp": t0.isoformat(),
    }


def big_trace(n_steps: int = 200, total_bytes: int = 1_000_000) -> AgentTrace:
    """A real-sized trace: `n_steps` steps whose JSON comes to about `total_bytes`."""
    per = total_bytes // n_steps - 300
    steps = []
    for i in range(n_steps):
        if i % 2 == 0:
            steps.append(TraceStep(step_type="tool_call", tool_name="read", tool_args={"path": f"/docs/{i}"},
                                   tool_call_id=f"call_{i}", content="r" * per))
        else:
            steps.append(TraceStep(step_type="observation", tool_name="read", tool_call_id=f"call_{i - 1}",
                                   tool_result={"path": f"/docs/{i - 1}", "text": "t" * per}))
    read = ToolSpec(name="read", description="read a document",
                    parameters={"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]})
    return AgentTrace(trace_id="big/1", task_id="suite/area/big", input_text="read everything", steps=steps,
                      tools=[read], final_output="done", success=True)


async def read_topics(
    settings: StillflowSettings, topics: list[str], *, expected: int, timeout: float = 30.0
) -> list[ConsumerRecord]:
    """Read from the beginning until `expected` records arrived or `timeout` passed (no group)."""
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=settings.kafka.bootstrap_servers, group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await consumer.start()
    out: list[ConsumerRecord] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < expected and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=300, max_records=5000)
            for records in batch.values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


def docker_engine_problem() -> str | None:
    """None when a Docker engine answers; else why not (used as the skip reason)."""
    try:
        import docker
    except ImportError:
        return "the docker SDK is not installed (pip install 'stillflow[dev]')"
    try:
        client = docker.from_env(timeout=3)
        client.ping()
        return None
    except Exception as exc:  # the SDK raises several kinds; all mean "no usable engine"
        return f"no Docker engine answers ({type(exc).__name__}: {str(exc)[:120]})"


def as_scored(trace: AgentTrace) -> AgentTrace:
    """The trace as the streams worker publishes it on the scored topic: its workload named (the default
    setting's, from the agent id, when it sends none) and redacted (`streams.redact_scored`)."""
    from stillflow.workloads import resolve_workload
    from streams.pii import default_redactor

    if trace.workload is None:
        trace = trace.model_copy(update={"workload": resolve_workload(None, trace.agent_id)})
    return default_redactor.redact_trace(trace)[0]


def built_streams_app(data_dir, *, partitions: int):
    """A `StreamsApp` built with default settings and a broker address it never contacts (nothing is
    started): for tests of what the app wires up."""
    from streams.app import create_app
    from streams.settings import StreamsSettings

    base = StillflowSettings().model_dump()
    base["kafka"]["bootstrap_servers"] = "127.0.0.1:1"
    settings = StreamsSettings(**base)
    settings = settings.model_copy(update={"streams": settings.streams.model_copy(update={"data_dir": data_dir})})
    return create_app(settings, partitions=partitions)


_T0 = datetime(2026, 1, 1, tzinfo=UTC)


def sample_events() -> dict[type[BaseModel], BaseModel]:
    """One valid instance of every contract model (fixed times and ids)."""
    from stillflow.contracts import (
        DatasetWindowClosed,
        DeadLetter,
        ModelVersionEvent,
        OffsetRange,
        PreferencePair,
        RouteDecision,
        ScoredTrace,
        SFTExample,
        TraceOutcomeEvent,
        TraceStepEvent,
        TrainingRunEvent,
        TrajectoryScore,
    )

    step = TraceStep(step_type="tool_call", tool_name="calc", tool_args={"expr": "1+1"}, tool_call_id="c1",
                     timestamp=_T0)
    trace = AgentTrace(trace_id="t1", task_id="k1", input_text="q", steps=[step], final_output="2", success=True,
                       tools=[ToolSpec(name="calc")], timestamp=_T0)
    score = TrajectoryScore(correctness=1, efficiency=1, tool_selection=1, safety=1, reasoning_quality=1, overall=1)
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "2"}]
    return {
        TraceStepEvent: TraceStepEvent(trace_id="t1", task_id="k1", seq=0, step=step, timestamp=_T0),
        TraceOutcomeEvent: TraceOutcomeEvent.from_trace(trace, include_steps=True),
        AgentTrace: trace,
        ScoredTrace: ScoredTrace(trace=trace, score=score, passed=True, timestamp=_T0),
        SFTExample: SFTExample(example_id="e1", trace_id="t1", task_id="k1", messages=msgs, score=1, timestamp=_T0),
        PreferencePair: PreferencePair(pair_id="p1", task_id="k1", chosen_trace_id="t1", rejected_trace_id="t2",
                                       prompt=msgs[:1], chosen=msgs[1:], rejected=msgs[1:], chosen_score=1,
                                       rejected_score=0, timestamp=_T0),
        DatasetWindowClosed: DatasetWindowClosed(window_id="w1", window_start=_T0, window_end=_T0, timestamp=_T0,
                                                 offsets=[OffsetRange(topic="x", partition=0, first=0, last=1)]),
        TrainingRunEvent: TrainingRunEvent(run_id="r1", status="finished", model_name="m", metrics={"a": 1.0},
                                           timestamp=_T0),
        ModelVersionEvent: ModelVersionEvent(model_name="m", version="v1", status="promoted", manifest_sha256="0" * 64,
                                             timestamp=_T0),
        RouteDecision: RouteDecision(trace_id="t1", request_id="r1", served_by="teacher", reason="no_student",
                                     timestamp=_T0),
        DeadLetter: DeadLetter(source_topic="s", raw_b64="", raw_size=0, reason="r", kind="schema", timestamp=_T0),
    }
