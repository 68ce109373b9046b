"""`stillflow otlp` against the real broker: the OTLP/HTTP status codes for every kind of body, one record per
trace on the span topic, the outcome endpoint, keys, and what happens when Kafka does not take the data."""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from stillflow.contracts import TraceOutcomeEvent, decode
from stillflow.kafka import ensure_topics, read_to_end, with_bootstrap
from stillflow.settings import KafkaSettings, StillflowSettings, TopicNames
from streams.otel.otlp import decode_logs, decode_traces
from streams.otel.settings import OtlpSection, OtlpSettings
from tests.fuzz_inputs import draw_batch

pytestmark = [pytest.mark.integration]

FIXTURES = Path(__file__).parent / "fixtures" / "otel"
PB, JS = "application/x-protobuf", "application/json"


def _fixture_bodies(name: str, path: str = "/v1/traces") -> list[dict[str, Any]]:
    return [r["body"] for r in json.loads((FIXTURES / f"{name}.json").read_text())["requests"] if r["path"] == path]


def _trace_pb(name: str = "genai") -> bytes:
    return decode_traces(json.dumps(_fixture_bodies(name)[0]).encode(), JS).SerializeToString()


def _trace_ids(body: dict[str, Any]) -> set[str]:
    return {s["traceId"] for rs in body["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]}


def _status(resp: httpx.Response) -> tuple[int, str]:
    """(code, message) of a google.rpc.Status error body, in either encoding."""
    if resp.headers["content-type"].startswith(JS):
        d = resp.json()
        return d["code"], d["message"]
    from google.protobuf import any_pb2  # noqa: F401 - google.rpc.Status needs googleapis-common-protos
    from google.rpc import status_pb2

    s = status_pb2.Status()
    s.ParseFromString(resp.content)
    return s.code, s.message


async def _settings(bootstrap: str, **otlp: Any) -> OtlpSettings:
    topics = TopicNames().with_prefix(f"r{uuid.uuid4().hex[:10]}.")
    base = with_bootstrap(StillflowSettings(kafka=KafkaSettings(session_timeout_ms=6000, heartbeat_interval_ms=1000),
                                            topics=topics), bootstrap)
    await ensure_topics(base)
    return OtlpSettings(kafka=base.kafka, topics=topics, otlp=OtlpSection(port=0, **otlp))


@pytest.fixture
async def receiver(broker: str) -> AsyncIterator[tuple[OtlpSettings, httpx.AsyncClient]]:
    from streams.otel.receiver import running_receiver

    settings = await _settings(broker, max_body_bytes=4_000_000, max_record_bytes=1_000_000)
    async with running_receiver(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield settings, http


async def test_valid_bodies_are_kept_one_record_per_trace(receiver) -> None:
    settings, http = receiver
    bodies = _fixture_bodies("openinference")
    want = set().union(*(_trace_ids(b) for b in bodies))
    for i, body in enumerate(bodies):
        if i % 2:
            r = await http.post("/v1/traces", json=body)  # OTLP/JSON, hex ids
            assert r.status_code == 200 and r.headers["content-type"].startswith(JS) and r.json() == {}
        else:
            raw = decode_traces(json.dumps(body).encode(), JS).SerializeToString()
            r = await http.post("/v1/traces", content=gzip.compress(raw),
                                headers={"content-type": PB, "content-encoding": "gzip"})
            assert r.status_code == 200 and r.headers["content-type"] == PB
            resp = trace_service_pb2.ExportTraceServiceResponse()
            resp.ParseFromString(r.content)
            assert not resp.HasField("partial_success")
    recs = await read_to_end(settings, settings.topics.otlp_spans)
    from opentelemetry.proto.trace.v1 import trace_pb2

    seen = set()
    for raw in recs:
        td = trace_pb2.TracesData()
        td.ParseFromString(raw)
        ids = {s.trace_id.hex() for rs in td.resource_spans for ss in rs.scope_spans for s in ss.spans}
        assert len(ids) == 1  # one trace per record, as the Collector's partition_traces_by_id
        seen |= ids
    assert seen == want


@pytest.mark.parametrize("headers, body, status", [
    ({"content-type": "text/plain"}, b"hello", 415),
    ({}, b"\x0a\x00", 415),
    ({"content-type": PB}, b"\xff\xff\xff\xff\x0f garbage", 400),
    ({"content-type": PB, "content-encoding": "gzip"}, b"not gzip at all", 400),
    ({"content-type": PB, "content-encoding": "br"}, b"\x0a\x00", 415),
    ({"content-type": JS}, b"[1, 2, 3]", 400),
    ({"content-type": JS}, b"{not json", 400),
    ({"content-type": JS}, json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "abc", "spanId": "0102030405060708", "name": "x"}]}]}]}).encode(), 400),
    ({"content-type": JS}, json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "zz" * 16, "spanId": "0102030405060708", "name": "x"}]}]}]}).encode(), 400),
])
async def test_bad_bodies_get_the_otlp_status(receiver, headers, body, status) -> None:
    _, http = receiver
    r = await http.post("/v1/traces", content=body, headers=headers)
    assert r.status_code == status, r.text
    code, message = _status(r)
    assert code in (3, 8) and message
    assert (await http.get("/healthz")).status_code == 200


async def test_truncated_gzip_and_sizes(receiver) -> None:
    _, http = receiver
    gz = gzip.compress(_trace_pb())
    r = await http.post("/v1/traces", content=gz[: len(gz) // 2], headers={"content-type": PB, "content-encoding": "gzip"})
    assert r.status_code == 400 and "truncated" in _status(r)[1]
    r = await http.post("/v1/traces", content=b"\x00" * 4_100_000, headers={"content-type": PB})
    assert r.status_code == 413 and "MAX_BODY_BYTES" in _status(r)[1]
    bomb = gzip.compress(b"\x00" * 20_000_000)  # 20 kB that inflate to 20 MB
    r = await http.post("/v1/traces", content=bomb, headers={"content-type": PB, "content-encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in _status(r)[1]


async def test_spans_without_ids_and_oversize_traces_are_refused_in_partial_success(receiver) -> None:
    settings, http = receiver
    body = _fixture_bodies("genai")[0]
    kept = _trace_ids(body)
    spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans.append({"spanId": "0102030405060708", "name": "no trace id"})
    spans.append({"traceId": "00" * 16, "spanId": "0102030405060709", "name": "zero trace id"})
    spans.append({"traceId": "ab" * 16, "name": "no span id"})
    huge = {"traceId": "cd" * 16, "spanId": "0a0b0c0d0e0f0102", "name": "1 MB attribute",
            "attributes": [{"key": "gen_ai.input.messages", "value": {"stringValue": "x" * 1_048_576}}]}
    spans.append(huge)
    r = await http.post("/v1/traces", json=body)
    assert r.status_code == 200
    ps = r.json()["partialSuccess"]
    assert int(ps["rejectedSpans"]) == 4
    assert "trace id" in ps["errorMessage"] and "span id" in ps["errorMessage"] and "MAX_RECORD_BYTES" in ps["errorMessage"]
    recs = await read_to_end(settings, settings.topics.otlp_spans)
    assert len(recs) == len(kept)
    from opentelemetry.proto.trace.v1 import trace_pb2

    got = set()
    for raw in recs:
        td = trace_pb2.TracesData()
        td.ParseFromString(raw)
        got |= {s.trace_id.hex() for rs in td.resource_spans for ss in rs.scope_spans for s in ss.spans}
    assert got == kept


async def test_log_events_are_kept_and_other_logs_refused(receiver) -> None:
    settings, http = receiver
    bodies = _fixture_bodies("genai-events", "/v1/logs")
    assert bodies
    body = bodies[0]
    n = sum(len(sl["logRecords"]) for rl in body["resourceLogs"] for sl in rl["scopeLogs"])
    body["resourceLogs"][0]["scopeLogs"][0]["logRecords"].append({"body": {"stringValue": "an app log line"}})
    r = await http.post("/v1/logs", json=body)
    assert r.status_code == 200
    ps = r.json()["partialSuccess"]
    assert int(ps["rejectedLogRecords"]) == 1 and "not a GenAI event" in ps["errorMessage"]
    raw = decode_logs(json.dumps(bodies[0]).encode(), JS).SerializeToString()
    r = await http.post("/v1/logs", content=raw, headers={"content-type": PB})
    assert r.status_code == 200
    resp = logs_service_pb2.ExportLogsServiceResponse()
    resp.ParseFromString(r.content)
    assert resp.partial_success.rejected_log_records == 1
    recs = await read_to_end(settings, settings.topics.otlp_logs)
    assert recs and n > 0


async def test_the_outcome_endpoint(receiver) -> None:
    settings, http = receiver
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = await http.post("/v1/stillflow/outcome", json={"trace_id": tid.upper(), "success": True, "ground_truth": "42"})
    assert r.status_code == 202 and r.json()["joins_by"] == "trace_id" and r.json()["trace_id"] == tid
    r = await http.post("/v1/stillflow/outcome", json={"task_id": "billing/T-7@eu", "success": False})
    assert r.status_code == 202 and r.json()["joins_by"] == "task_id"
    for bad in [{"trace_id": tid}, {"success": True}, {"trace_id": "abc", "success": True},
                {"task_id": "", "success": True}, [1], {"trace_id": tid, "success": True, "expected_steps": -1},
                {"trace_id": tid, "success": True, "metadata": "x"}]:
        r = await http.post("/v1/stillflow/outcome", json=bad)
        assert r.status_code == 400 and r.json()["error"]["message"], bad
    r = await http.post("/v1/stillflow/outcome", content=b"{", headers={"content-type": JS})
    assert r.status_code == 400
    recs = await read_to_end(settings, settings.topics.otlp_outcomes)
    events = {e.trace_id: e for e in (decode(raw, TraceOutcomeEvent) for raw in recs)}  # two keys: any order
    assert set(events) == {tid, "billing/T-7@eu"} and len(recs) == 2
    assert events[tid].ground_truth == "42" and events["billing/T-7@eu"].metadata["stillflow_join"] == "task"


async def test_api_keys(broker: str) -> None:
    from streams.otel.receiver import running_receiver

    settings = await _settings(broker, api_keys=("k-one", "k-two"))
    async with running_receiver(settings) as url, httpx.AsyncClient(base_url=url) as http:
        body = _trace_pb()
        for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "Basic k-one"}):
            r = await http.post("/v1/traces", content=body, headers={"content-type": PB, **headers})
            assert r.status_code == 401 and _status(r)[0] == 16
        r = await http.post("/v1/traces", content=body, headers={"content-type": PB, "authorization": "Bearer k-two"})
        assert r.status_code == 200
        r = await http.post("/v1/stillflow/outcome", json={"task_id": "t", "success": True})
        assert r.status_code == 401


async def test_kafka_not_taking_the_data_is_a_503_then_429_never_a_200(own_broker) -> None:
    from streams.otel.receiver import running_receiver

    settings = await _settings(own_broker.bootstrap_servers, publish_timeout_s=2.0, max_inflight_bytes=1,
                               retry_after_s=3)
    body = _trace_pb()
    async with running_receiver(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.post("/v1/traces", content=body, headers={"content-type": PB})
        assert r.status_code == 200
        own_broker.pause()
        try:
            first = asyncio.create_task(http.post("/v1/traces", content=body, headers={"content-type": PB}))
            await asyncio.sleep(0.5)
            second = await http.post("/v1/traces", content=body, headers={"content-type": PB})
            assert second.status_code == 429 and second.headers["retry-after"] == "3"
            r = await first
            assert r.status_code == 503 and r.headers["retry-after"] == "3" and "Kafka" in _status(r)[1]
        finally:
            own_broker.resume()
        for _ in range(30):  # the producer reconnects
            r = await http.post("/v1/traces", content=body, headers={"content-type": PB})
            if r.status_code == 200:
                break
            await asyncio.sleep(1)
        assert r.status_code == 200


def _mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    cut = st.integers(0, len(valid)).map(lambda n: valid[:n])
    flip = st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(
        lambda t: valid[: t[0]] + bytes([t[1]]) + valid[t[0] + 1:])
    return st.one_of(st.binary(max_size=2000), cut, flip)


async def test_fuzzed_bodies_get_200_or_400_and_the_receiver_keeps_running(receiver) -> None:
    _, http = receiver
    valid = _trace_pb("openllmetry")
    counts = {200: 0, 400: 0}
    for raw in draw_batch(_mutations(valid), 150):
        r = await http.post("/v1/traces", content=raw, headers={"content-type": PB})
        assert r.status_code in (200, 400), (r.status_code, raw[:80])
        counts[r.status_code] += 1
        if r.status_code == 200:
            trace_service_pb2.ExportTraceServiceResponse().ParseFromString(r.content)
    js = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                      lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(
                          ["resourceSpans", "scopeSpans", "spans", "traceId", "spanId", "name", "attributes"]), c,
                          max_size=4), max_leaves=20)
    for value in draw_batch(js, 100):
        r = await http.post("/v1/traces", content=json.dumps(value).encode(), headers={"content-type": JS})
        assert r.status_code in (200, 400), (r.status_code, value)
    assert counts[200] and counts[400]
    assert (await http.get("/healthz")).status_code == 200


async def test_a_grpc_exporter_is_told_no_and_the_receiver_keeps_serving(receiver) -> None:
    """OTLP/gRPC is not served (documented): the real gRPC exporter pointed at the HTTP port fails its export."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    _, http = receiver
    mem = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(mem))
    with tp.get_tracer("t").start_as_current_span("chat x"):
        pass
    exporter = OTLPSpanExporter(endpoint=str(http.base_url).split("://")[1].rstrip("/"), insecure=True, timeout=2)
    result = await asyncio.to_thread(exporter.export, mem.get_finished_spans())
    exporter.shutdown()
    assert result is SpanExportResult.FAILURE
    assert (await http.get("/healthz")).status_code == 200
