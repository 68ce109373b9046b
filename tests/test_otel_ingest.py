"""OpenTelemetry in, end to end: real instrumentation libraries and real exporters → `stillflow otlp` (or the
records a Collector's Kafka exporter writes) → the streams worker → scored traces equal to the SDK path's.

Each instrumented fleet runs in its own process (`tests.otel_fleet`: the instrumentations monkeypatch
`openai`), against the sim teacher, and reports each episode's outcome to the receiver by OTel trace id, as
an agent would. The same episodes, as the SDK recorded them, go through `TraceEmitter` to the same worker:
steps and verdicts must be equal.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from stillflow.contracts import AgentTrace, DeadLetter, ScoredTrace, decode
from stillflow.kafka import ensure_topics, make_producer, read_to_end, with_bootstrap
from stillflow.sdk import TraceEmitter
from stillflow.settings import KafkaSettings, StillflowSettings, TopicNames
from streams.otel.settings import OtlpSection, OtlpSettings
from tests.otel_fleet import read_record_file
from tests.streams_worker import StreamsWorker, streams_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPISODES = 20
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class OtelEnv:
    settings: StillflowSettings
    url: str  # the receiver
    worker: StreamsWorker
    tmp: Path


@pytest.fixture(scope="module")
async def otel(broker: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OtelEnv]:
    from streams.otel.receiver import running_receiver

    tmp = tmp_path_factory.mktemp("otel")
    topics = TopicNames().with_prefix(f"o{uuid.uuid4().hex[:10]}.")
    settings = with_bootstrap(StillflowSettings(kafka=KafkaSettings(session_timeout_ms=6000,
                                                                    heartbeat_interval_ms=1000), topics=topics), broker)
    await ensure_topics(settings)
    env = streams_env(settings, f"otel-{uuid.uuid4().hex[:8]}", otel__settle_s=1, otel__outcome_wait_s=6,
                      otel__check_interval_s=0.5, otel__trace_timeout_s=15)
    worker = StreamsWorker(env, tmp / "worker.log").start()
    osettings = OtlpSettings(kafka=settings.kafka, topics=topics, otlp=OtlpSection(port=0))
    try:
        async with running_receiver(osettings) as url:
            yield OtelEnv(settings, url, worker, tmp)
    finally:
        worker.stop()


async def _fleet(otel: OtelEnv, instrumentation: str, n: int, *extra: str, report: bool = True,
                 env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    out = otel.tmp / f"{instrumentation}-{uuid.uuid4().hex[:6]}.json"
    outcome = ["--outcome-url", f"{otel.url}/v1/stillflow/outcome"] if report else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.otel_fleet", "--instrumentation", instrumentation, "--endpoint", otel.url,
        "--episodes", str(n), "--out", str(out), *outcome, *extra,
        cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})})
    text, _ = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode == 0, text.decode(errors="replace")[-3000:]
    return json.loads(out.read_text())


async def _scored(otel: OtelEnv, ids: set[str], timeout: float = 90) -> dict[str, ScoredTrace]:
    """The ScoredTrace of each of `ids` (trace ids), waiting until all are there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    found: dict[str, ScoredTrace] = {}
    while True:
        for raw in await read_to_end(otel.settings, otel.settings.topics.traces_scored, idle_timeout_s=1):
            st = decode(raw, ScoredTrace)
            if st.trace.trace_id in ids:
                assert st.trace.trace_id not in found or found[st.trace.trace_id].event_id == st.event_id, \
                    f"trace {st.trace.trace_id} scored twice"
                found[st.trace.trace_id] = st
        if set(found) >= ids or loop.time() > deadline:
            break
        await asyncio.sleep(1)
    missing = ids - set(found)
    assert not missing, f"{len(missing)} traces never scored, e.g. {sorted(missing)[:3]}; worker log:\n" \
                        f"{otel.worker.log()[-3000:]}\nDLQ: {await _letters(otel)}"
    return found


async def _letters(otel: OtelEnv) -> list[DeadLetter]:
    return [decode(raw, DeadLetter) for raw in await read_to_end(otel.settings, otel.settings.topics.dlq,
                                                                  idle_timeout_s=1)]


def _steps(trace: AgentTrace) -> list[tuple[Any, ...]]:
    return [(s.step_type.value, s.tool_name, s.tool_args, s.tool_result,
             s.content if s.step_type.value in ("reasoning", "output") else None) for s in trace.steps]


def _verdict(st: ScoredTrace) -> tuple[bool, tuple[str, ...]]:
    return st.passed, tuple(sorted(st.rejected_by))


async def _through_sdk(otel: OtelEnv, episodes: list[dict[str, Any]], tag: str) -> dict[str, str]:
    """Emit the SDK-recorded traces (under ids of their own); returns hex trace id -> SDK trace id."""
    pairs = {}
    async with TraceEmitter(otel.settings, agent_id="sdk") as em:
        for i, ep in enumerate(episodes):
            trace = AgentTrace.model_validate(ep["trace"])
            sdk_id = f"sdk-{tag}-{i}"
            await em.emit_trace(trace.model_copy(update={"trace_id": sdk_id}))
            pairs[ep["otel_trace_id"]] = sdk_id
    return pairs


@pytest.mark.parametrize("instrumentation", ["genai", "openinference", "openllmetry"])
async def test_an_instrumented_fleet_gives_the_sdk_paths_traces(otel: OtelEnv, instrumentation: str) -> None:
    # one of them gzips its requests, as the exporter does with OTEL_EXPORTER_OTLP_COMPRESSION=gzip
    env = {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"} if instrumentation == "openllmetry" else None
    episodes = await _fleet(otel, instrumentation, EPISODES, "--errors", env=env)
    assert len(episodes) == EPISODES
    pairs = await _through_sdk(otel, episodes, instrumentation)
    scored = await _scored(otel, set(pairs) | set(pairs.values()))
    differ = []
    for hex_id, sdk_id in pairs.items():
        o, s = scored[hex_id], scored[sdk_id]
        assert o.trace.metadata["source"] == "otel" and o.trace.metadata["outcome"] == "reported"
        assert o.trace.task_id == s.trace.task_id and o.trace.workload == s.trace.workload
        if _steps(o.trace) != _steps(s.trace) or o.trace.final_output != s.trace.final_output \
                or o.trace.success != s.trace.success or _verdict(o) != _verdict(s):
            differ.append((hex_id, _steps(o.trace), _steps(s.trace), _verdict(o), _verdict(s)))
    assert not differ, f"{len(differ)} of {EPISODES} differ, first: {differ[0]}"
    verdicts = {_verdict(st) for st in scored.values()}
    assert len(verdicts) > 1, "the error modes should give some rejected traces too"


async def test_the_agents_sdk_traced_by_openinference(otel: OtelEnv) -> None:
    episodes = await _fleet(otel, "agents", 6)
    scored = await _scored(otel, {ep["otel_trace_id"] for ep in episodes})
    for ep in episodes:
        st = scored[ep["otel_trace_id"]]
        calls = [s for s in st.trace.steps if s.step_type.value == "tool_call"]
        results = [s for s in st.trace.steps if s.step_type.value == "observation"]
        assert len(calls) == len(results) == ep["tool_calls"] > 0
        assert all(r.tool_result for r in results) and [c.tool_name for c in calls] == [r.tool_name for r in results]
        assert st.trace.final_output == ep["final_output"]
        assert st.trace.success is ep["success"] and st.trace.metadata["outcome"] == "reported"
        assert st.trace.task_id == ep["task_id"]


async def test_collector_records_assemble_as_the_receivers(otel: OtelEnv) -> None:
    """Spans written to stillflow.otlp.spans as the Collector's Kafka exporter does (otlp_proto, one trace per
    record, a trace over several records) give the trace the receiver gives for the same episodes."""
    via_receiver = await _fleet(otel, "genai", 4)
    record_file = otel.tmp / "collector.records"
    via_collector = await _fleet(otel, "genai", 4, "--record-file", str(record_file))
    records = read_record_file(record_file)
    assert len(records) > len(via_collector)  # several records per trace
    producer = make_producer(otel.settings.kafka)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(otel.settings.topics.otlp_spans, value, key=key)
    finally:
        await producer.stop()
    a = await _scored(otel, {ep["otel_trace_id"] for ep in via_receiver})
    b = await _scored(otel, {ep["otel_trace_id"] for ep in via_collector})
    for r, c in zip(via_receiver, via_collector, strict=True):  # the same sim episodes (same sim trace ids)
        x, y = a[r["otel_trace_id"]], b[c["otel_trace_id"]]
        assert _steps(x.trace) == _steps(y.trace) and _verdict(x) == _verdict(y)
        assert x.trace.total_tokens == y.trace.total_tokens and x.trace.input_text == y.trace.input_text


async def test_a_trace_without_content_is_dead_lettered_with_the_switch(otel: OtelEnv) -> None:
    episodes = await _fleet(otel, "genai-nocontent", 2)
    ids = {ep["otel_trace_id"] for ep in episodes}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline:
        letters = [d for d in await _letters(otel) if d.kind == "no_content"]
        named = {json.loads(base64.b64decode(d.raw_b64))["trace_id"] for d in letters}
        if ids <= named:
            break
        await asyncio.sleep(1)
    assert ids <= named, f"no_content letters for {named}, wanted {ids}"
    assert all("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT" in d.reason for d in letters)
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{otel.worker.web_port}/metrics")).text
    assert 'stillflow_streams_otel_no_content_total{scope="opentelemetry.instrumentation.genai.openai"}' in text


async def test_a_trace_nobody_reports_on_is_scored_with_success_unknown(otel: OtelEnv) -> None:
    episodes = await _fleet(otel, "openinference", 2, "--offset", "40", report=False)
    scored = await _scored(otel, {ep["otel_trace_id"] for ep in episodes})
    for st in scored.values():
        assert st.trace.metadata["outcome"] == "unknown" and st.trace.success is False
        assert not st.passed and "success" in st.rejected_by


async def test_outcomes_named_by_task_id_join_their_traces(otel: OtelEnv) -> None:
    """No trace id known to the agent: it reports by the `stillflow.task_id` its spans carry."""
    episodes = await _fleet(otel, "genai", 4, "--offset", "50", report=False)
    async with httpx.AsyncClient(base_url=otel.url) as http:
        for ep in episodes:
            t = ep["trace"]
            r = await http.post("/v1/stillflow/outcome", json={"task_id": t["task_id"], "success": t["success"],
                                                               "ground_truth": t["ground_truth"]})
            assert r.status_code == 202 and r.json()["joins_by"] == "task_id"
    scored = await _scored(otel, {ep["otel_trace_id"] for ep in episodes})
    for ep in episodes:
        st = scored[ep["otel_trace_id"]]
        assert st.trace.metadata["outcome"] == "reported" and st.trace.success is ep["trace"]["success"]
        assert st.trace.ground_truth == ep["trace"]["ground_truth"]


async def _count_scored(otel: OtelEnv, ids: set[str]) -> dict[str, int]:
    n: dict[str, int] = dict.fromkeys(ids, 0)
    for raw in await read_to_end(otel.settings, otel.settings.topics.traces_scored, idle_timeout_s=1):
        st = decode(raw, ScoredTrace)
        if st.trace.trace_id in n:
            n[st.trace.trace_id] += 1
    return n


async def test_bad_records_late_and_twice_sent_spans(otel: OtelEnv) -> None:
    """Garbage on the span topic is dead-lettered, records sent twice (an exporter's retry) and out of order
    give one trace each, spans hours late are dead-lettered and never built: the worker keeps going."""
    record_file = otel.tmp / "twice.records"
    episodes = await _fleet(otel, "genai", 3, "--offset", "60", "--record-file", str(record_file))
    records = read_record_file(record_file)
    from opentelemetry.proto.trace.v1 import trace_pb2

    late = trace_pb2.TracesData()
    late.ParseFromString(records[0][1])
    hours_ago = int((time.time() - 3 * 3600) * 1e9)
    late_id = bytes(range(16))
    for rs in late.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                span.trace_id, span.start_time_unix_nano, span.end_time_unix_nano = late_id, hours_ago, hours_ago + 1000
    valid = records[0][1]
    garbage = [b"\xff\x00 not protobuf", valid[: len(valid) // 2], None]
    producer = make_producer(otel.settings.kafka)
    await producer.start()
    try:
        topic = otel.settings.topics.otlp_spans
        for value in garbage:
            await producer.send_and_wait(topic, value, key=b"0123456789abcdef0123456789abcdef")
        await producer.send_and_wait(topic, late.SerializeToString(), key=late_id.hex().encode())
        for key, value in [*records, *reversed(records)]:  # everything twice, the second time backwards
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()
    ids = {ep["otel_trace_id"] for ep in episodes}
    await _scored(otel, ids)
    await asyncio.sleep(3)  # time for a duplicate to show up, were there one
    assert set((await _count_scored(otel, ids)).values()) == {1}
    kinds = [d.kind for d in await _letters(otel)]
    assert "late" in kinds and "empty" in kinds and kinds.count("invalid_otlp") >= 1
    assert otel.worker.alive()
    letters = [d for d in await _letters(otel) if d.kind == "late"]
    assert any(late_id.hex() in d.reason for d in letters)
