"""streams.otel.otlp: OTLP/HTTP bodies in (protobuf and JSON), one record per trace, records back to spans.

Uses the recorded requests in tests/fixtures/otel/ and hand-built messages; the fuzz tests hold the
receiver's contract (anything undecodable is an `OtlpDecodeError`, never another exception) and the
builder's (any attribute values give a `Built` or a `TrajectoryError`). Broker-free.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from streams.otel.otlp import (
    JSON,
    MAX_VALUE_CHARS,
    PROTOBUF,
    OtelEvent,
    OtelLog,
    OtelSpan,
    OtlpDecodeError,
    any_value,
    decode_logs,
    decode_traces,
    read_logs,
    read_spans,
    split_logs,
    split_traces,
)
from streams.otel.trajectory import Built, TrajectoryError, build_trajectory
from tests.fuzz_counts import count
from tests.fuzz_inputs import FUZZ, NASTY, json_values

FIXTURES = Path(__file__).parent / "fixtures" / "otel"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))
TID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
SID = bytes.fromhex("b7ad6b7169203331")


@functools.cache
def _requests(name: str) -> list[dict[str, Any]]:
    return json.loads((FIXTURES / f"{name}.json").read_text())["requests"]


def requests(name: str) -> list[dict[str, Any]]:
    return copy.deepcopy(_requests(name))


def all_requests() -> list[tuple[str, int]]:
    return [(n, i) for n in NAMES for i in range(len(_requests(n)))]


def _ids(p: Any) -> str:
    return f"{p[0]}-{p[1]}" if isinstance(p, tuple) else str(p)


def decode(path: str, body: bytes, content_type: str) -> Any:
    return (decode_logs if path == "/v1/logs" else decode_traces)(body, content_type)


def body_of(name: str, i: int) -> tuple[str, dict[str, Any]]:
    req = requests(name)[i]
    return req["path"], req["body"]


@functools.cache
def proto_body(name: str = "genai", i: int = 0) -> bytes:
    path, body = body_of(name, i)
    return decode(path, json.dumps(body).encode(), JSON).SerializeToString()


def kv(key: str, **value: Any) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(**value))


def span(tid: bytes = TID, sid: bytes = SID, name: str = "s", parent: bytes = b"", **attrs: str) -> trace_pb2.Span:
    return trace_pb2.Span(trace_id=tid, span_id=sid, parent_span_id=parent, name=name,
                          start_time_unix_nano=1_000, end_time_unix_nano=2_000,
                          attributes=[kv(k, string_value=v) for k, v in attrs.items()])


# ---- request bodies ----

@pytest.mark.parametrize("case", all_requests(), ids=_ids)
def test_protobuf_and_json_bodies_decode_alike(case: tuple[str, int]) -> None:
    path, body = body_of(*case)
    from_json = decode(path, json.dumps(body).encode(), JSON)
    assert from_json.ByteSize() > 0
    raw = from_json.SerializeToString()
    from_proto = decode(path, raw, PROTOBUF)
    assert from_proto == from_json
    # the content type may carry parameters, in any case
    assert decode(path, raw, "Application/X-Protobuf; charset=binary") == from_json
    assert decode(path, json.dumps(body).encode(), "application/json; charset=utf-8") == from_json
    # the JSON as an exporter writes it again from the message (hex ids, int64 as strings): the same message
    again = json_format.MessageToDict(from_proto)
    for key in ("resourceSpans", "resourceLogs"):
        for r in again.get(key, []):
            for s in r.get("scopeSpans", []) + r.get("scopeLogs", []):
                for rec in s.get("spans", []) + s.get("logRecords", []):
                    for f in ("traceId", "spanId", "parentSpanId"):
                        if f in rec:
                            rec[f] = base64.b64decode(rec[f]).hex()
    assert decode(path, json.dumps(again).encode(), JSON) == from_json
    # the hex ids are the bytes on the message
    if path == "/v1/traces":
        want = [(s["traceId"], s["spanId"], s.get("parentSpanId", "")) for r in body["resourceSpans"]
                for ss in r["scopeSpans"] for s in ss["spans"]]
        got = [(s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex()) for r in from_json.resource_spans
               for ss in r.scope_spans for s in ss.spans]
        assert got == [(t.lower(), s.lower(), p.lower()) for t, s, p in want]


def test_unsupported_content_type_is_not_a_decode_error() -> None:
    for ct in ("text/plain", None, "", "application/grpc"):
        with pytest.raises(ValueError) as exc:
            decode_traces(b"{}", ct)
        assert not isinstance(exc.value, OtlpDecodeError)  # the receiver answers 415, not 400


def _traces_json(**span_fields: Any) -> bytes:
    s = {"traceId": TID.hex(), "spanId": SID.hex(), "name": "x", **span_fields}
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [s]}]}]}).encode()


@pytest.mark.parametrize(("field", "value"), [
    ("traceId", "0af7651916cd43dd8448eb211c80319"),  # 31 characters
    ("traceId", "0af7651916cd43dd8448eb211c80319c00"),  # 34
    ("traceId", "0af7651916cd43dd8448eb211c80319g"),  # not hex
    ("traceId", TID.hex()[:16]),  # a span id's length
    ("traceId", base64.b64encode(TID).decode()),  # base64, as protobuf's own JSON mapping would have it
    ("traceId", 12345),
    ("traceId", None),
    ("traceId", ["0a"]),
    ("spanId", "b7ad6b716920333"),
    ("spanId", "b7ad6b71692033310a"),
    ("spanId", "zzad6b7169203331"),
    ("spanId", TID.hex()),
    ("parentSpanId", "b7ad6b71"),
    ("parentSpanId", "b7ad6b71692033 1"),
    ("parentSpanId", {"x": 1}),
])
def test_json_ids_of_the_wrong_shape(field: str, value: Any) -> None:
    with pytest.raises(OtlpDecodeError, match=field):
        decode_traces(_traces_json(**{field: value}), JSON)


def test_json_ids_in_log_records() -> None:
    rec = {"traceId": TID.hex(), "spanId": SID.hex(), "eventName": "gen_ai.choice"}
    body = {"resourceLogs": [{"scopeLogs": [{"logRecords": [rec]}]}]}
    got = decode_logs(json.dumps(body).encode(), JSON)
    assert got.resource_logs[0].scope_logs[0].log_records[0].trace_id == TID
    rec["traceId"] = "abc"
    with pytest.raises(OtlpDecodeError, match="traceId"):
        decode_logs(json.dumps(body).encode(), JSON)


def test_json_upper_case_and_empty_ids() -> None:
    got = decode_traces(_traces_json(traceId=TID.hex().upper(), parentSpanId=""), JSON)
    s = got.resource_spans[0].scope_spans[0].spans[0]
    assert s.trace_id == TID and s.parent_span_id == b""
    got = decode_traces(_traces_json(traceId=""), JSON)  # decodes; split_traces refuses it
    assert split_traces(got).rejected == 1


def test_unknown_json_fields_are_ignored() -> None:
    path, body = body_of("genai", 0)
    want = decode(path, json.dumps(body).encode(), JSON)
    body["somethingNew"] = {"a": [1, 2]}
    r = body["resourceSpans"][0]
    r["futureField"] = 1
    r["scopeSpans"][0]["scope"]["newScopeField"] = "x"
    r["scopeSpans"][0]["spans"][0]["brandNew"] = {"nested": True}
    assert decode(path, json.dumps(body).encode(), JSON) == want
    # an enum value from a later OTLP version is unknown too: left at its default
    r["scopeSpans"][0]["spans"][0]["kind"] = "SPAN_KIND_FROM_THE_FUTURE"
    got = decode(path, json.dumps(body).encode(), JSON)
    assert got.resource_spans[0].scope_spans[0].spans[0].kind == 0


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[]", b"null", b"42", b'"x"', b"\xff\xfe", b'{"resourceSpans": 5}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": -1}]}]}]}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": [{"key": "a", "value": {"intValue": 1.5}}]}]}]}]}',
    b'{"resourceSpans": [' * 50_000 + b"]" * 50_000 + b"}",
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": ' + b"9" * 5000 + b"}]}]}]}",
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "\\udfff"}]}]}]}',  # a lone surrogate
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name\\ud800": "x"}]}]}]}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "' + TID.hex().encode() + b'", "spanId": 1}]}]}]}',
], ids=lambda r: repr(r[:40]))
def test_bad_json_bodies(raw: bytes) -> None:
    with pytest.raises(OtlpDecodeError):
        decode_traces(raw, JSON)
    as_logs = raw  # the same faults in a logs request
    for a, b in [(b"resourceSpans", b"resourceLogs"), (b"scopeSpans", b"scopeLogs"), (b'"spans"', b'"logRecords"'),
                 (b"startTimeUnixNano", b"timeUnixNano"), (b'"kind"', b'"severityNumber"'), (b'"name', b'"eventName')]:
        as_logs = as_logs.replace(a, b)
    with pytest.raises(OtlpDecodeError):
        decode_logs(as_logs, JSON)


@pytest.mark.parametrize(("label", "raw", "_kind"), NASTY, ids=[n[0] for n in NASTY])
def test_nasty_bodies(label: str, raw: bytes, _kind: str) -> None:
    for dec in (decode_traces, decode_logs):
        for ct in (JSON, PROTOBUF):
            with contextlib.suppress(OtlpDecodeError):  # decoded, or refused: nothing else
                dec(raw, ct)


def test_bad_protobuf_bodies() -> None:
    raw = proto_body()
    for bad in (raw[:-1], raw[: len(raw) // 2], b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05abc"):
        with pytest.raises(OtlpDecodeError):
            decode_traces(bad, PROTOBUF)
        with pytest.raises(OtlpDecodeError):
            read_spans(bad)
    assert decode_traces(b"", PROTOBUF) == trace_pb2.TracesData()  # an empty request is a valid one


# ---- one record per trace ----

def test_split_traces_per_trace_keeping_resource_and_scope() -> None:
    t1, t2, t3 = TID, bytes.fromhex("11" * 16), bytes.fromhex("22" * 16)
    res_a = trace_pb2.ResourceSpans(schema_url="https://a")
    res_a.resource.attributes.append(kv("service.name", string_value="a"))
    sa = res_a.scope_spans.add(schema_url="https://sa")
    sa.scope.name, sa.scope.version = "scope-a", "1.0"
    sa.spans.extend([span(t1, b"\x01" * 8), span(t2, b"\x02" * 8), span(t1, b"\x03" * 8)])
    sb = res_a.scope_spans.add()
    sb.scope.name = "scope-b"
    sb.spans.extend([span(t1, b"\x04" * 8)])
    res_b = trace_pb2.ResourceSpans()
    res_b.resource.attributes.append(kv("service.name", string_value="b"))
    sc = res_b.scope_spans.add()
    sc.scope.name = "scope-c"
    sc.spans.extend([
        span(t3, b"\x05" * 8), span(t1, b"\x06" * 8),
        span(b"", b"\x07" * 8), span(b"\x00" * 16, b"\x08" * 8), span(t1[:8], b"\x09" * 8),  # no valid trace id
        span(t1, b""), span(t1, b"\x00" * 8), span(t1, b"\x01" * 4),  # no valid span id
    ])
    data = trace_pb2.TracesData(resource_spans=[res_a, res_b])
    out = split_traces(data)
    assert list(out.per_trace) == [t1.hex(), t2.hex(), t3.hex()]  # in order of first appearance
    assert out.counts == {t1.hex(): 4, t2.hex(): 1, t3.hex(): 1}
    assert out.rejected == 6
    assert len(out.reasons) == 2 and any("trace id" in r for r in out.reasons) and any(
        "span id" in r for r in out.reasons)
    one = out.per_trace[t1.hex()]
    assert isinstance(one, trace_pb2.TracesData)
    layout = [(r.resource.attributes[0].value.string_value, r.schema_url,
               [(s.scope.name, s.scope.version, s.schema_url, [x.span_id[0] for x in s.spans]) for s in r.scope_spans])
              for r in one.resource_spans]
    assert layout == [("a", "https://a", [("scope-a", "1.0", "https://sa", [1, 3]), ("scope-b", "", "", [4])]),
                      ("b", "", [("scope-c", "", "", [6])])]
    # each part is a request of its own, byte for byte what the Collector would put on Kafka
    assert trace_pb2.TracesData.FromString(one.SerializeToString()) == one
    spans = read_spans(one.SerializeToString())
    assert [(s.span_id, s.scope, s.resource) for s in spans] == [
        ("01" * 8, "scope-a", {"service.name": "a"}), ("03" * 8, "scope-a", {"service.name": "a"}),
        ("04" * 8, "scope-b", {"service.name": "a"}), ("06" * 8, "scope-c", {"service.name": "b"})]
    assert {s.trace_id for s in spans} == {t1.hex()}
    assert split_traces(trace_pb2.TracesData()).per_trace == {}


@pytest.mark.parametrize("name", NAMES)
def test_split_fixture_requests(name: str) -> None:
    for req in requests(name):
        data = decode(req["path"], json.dumps(req["body"]).encode(), JSON)
        out = (split_logs if req["path"] == "/v1/logs" else split_traces)(data)
        assert out.rejected == 0 and out.reasons == []
        n = sum(len(s.spans) for r in getattr(data, "resource_spans", []) for s in r.scope_spans) + sum(
            len(s.log_records) for r in getattr(data, "resource_logs", []) for s in r.scope_logs)
        assert sum(out.counts.values()) == n
        for tid, part in out.per_trace.items():
            reader = read_logs if req["path"] == "/v1/logs" else read_spans
            got = reader(part.SerializeToString())
            assert len(got) == out.counts[tid] and {x.trace_id for x in got} == {tid}


def _log(name: str = "", tid: bytes = TID, attr_name: str | None = None, **kw: Any) -> logs_pb2.LogRecord:
    rec = logs_pb2.LogRecord(trace_id=tid, span_id=SID, event_name=name, time_unix_nano=5, **kw)
    if attr_name is not None:
        rec.attributes.append(kv("event.name", string_value=attr_name))
    return rec


def test_split_logs_keeps_only_genai_events() -> None:
    t2 = bytes.fromhex("33" * 16)
    rl = logs_pb2.ResourceLogs()
    rl.resource.attributes.append(kv("service.name", string_value="svc"))
    sl = rl.scope_logs.add()
    sl.scope.name = "genai-scope"
    sl.log_records.extend([
        _log("gen_ai.choice"),
        _log(attr_name="gen_ai.user.message"),  # before the event_name field: the event.name attribute
        _log("gen_ai.client.inference.operation.details", t2),
        _log("app.log"), _log(attr_name="http.request"), _log(),  # not GenAI events
        _log("gen_ai.choice", b""), _log("gen_ai.choice", b"\x00" * 16),  # no trace to join
        _log("x", attr_name="gen_ai.user.message"),  # the field wins over the attribute
    ])
    rec = _log()
    rec.attributes.append(kv("event.name", int_value=3))  # not a string: no name
    sl.log_records.append(rec)
    out = split_logs(logs_pb2.LogsData(resource_logs=[rl]))
    assert list(out.per_trace) == [TID.hex(), t2.hex()]
    assert out.counts == {TID.hex(): 2, t2.hex(): 1}
    assert out.rejected == 7
    assert len(out.reasons) == 2
    assert any("not a GenAI event" in r for r in out.reasons) and any("trace id" in r for r in out.reasons)
    logs = read_logs(out.per_trace[TID.hex()].SerializeToString())
    assert [(x.event_name, x.trace_id, x.span_id, x.scope, x.resource) for x in logs] == [
        ("gen_ai.choice", TID.hex(), SID.hex(), "genai-scope", {"service.name": "svc"}),
        ("gen_ai.user.message", TID.hex(), SID.hex(), "genai-scope", {"service.name": "svc"})]


# ---- records back to plain spans and logs ----

def _attr_json(v: dict[str, Any]) -> Any:
    """An OTLP/JSON AnyValue as read_spans gives it."""
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return v["boolValue"]
    if "arrayValue" in v:
        return [_attr_json(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return {x["key"]: _attr_json(x.get("value", {})) for x in v["kvlistValue"].get("values", [])}
    if "bytesValue" in v:
        return v["bytesValue"]
    return None


def _enum(enum: Any, v: int | str) -> int:
    return enum.Value(v) if isinstance(v, str) else int(v)


@pytest.mark.parametrize("name", NAMES)
def test_read_spans_is_the_json(name: str) -> None:
    for req in requests(name):
        body = req["body"]
        data = decode(req["path"], json.dumps(body).encode(), JSON)
        if req["path"] == "/v1/logs":
            got_logs = read_logs(data.SerializeToString())
            want_logs = [(rec["traceId"].lower(), rec.get("spanId", "").lower() or None,
                          {a["key"]: _attr_json(a["value"]) for a in rec.get("attributes", [])})
                         for r in body["resourceLogs"] for s in r["scopeLogs"] for rec in s["logRecords"]]
            assert [(x.trace_id, x.span_id, x.attributes) for x in got_logs] == want_logs
            assert all(isinstance(x, OtelLog) and x.event_name.startswith("gen_ai.") for x in got_logs)
            continue
        got = read_spans(data.SerializeToString())
        want = []
        for r in body["resourceSpans"]:
            resource = {a["key"]: _attr_json(a["value"]) for a in r.get("resource", {}).get("attributes", [])}
            for ss in r["scopeSpans"]:
                for s in ss["spans"]:
                    want.append(dict(
                        trace_id=s["traceId"].lower(), span_id=s["spanId"].lower(),
                        parent_span_id=s.get("parentSpanId", "").lower() or None, name=s["name"],
                        kind=_enum(trace_pb2.Span.SpanKind, s.get("kind", 0)), start_ns=int(s["startTimeUnixNano"]),
                        end_ns=int(s["endTimeUnixNano"]),
                        attributes={a["key"]: _attr_json(a["value"]) for a in s.get("attributes", [])},
                        events=[dict(name=e["name"], time_ns=int(e.get("timeUnixNano", 0)),
                                     attributes={a["key"]: _attr_json(a["value"]) for a in e.get("attributes", [])})
                                for e in s.get("events", [])],
                        resource=resource, scope=ss.get("scope", {}).get("name", ""),
                        status_code=_enum(trace_pb2.Status.StatusCode, s.get("status", {}).get("code", 0)),
                        status_message=s.get("status", {}).get("message", "")))
        assert [x.model_dump() for x in got] == want
        # plain and JSON-storable: a table value that comes back equal
        for x in got:
            assert OtelSpan.model_validate_json(x.model_dump_json()) == x


def test_read_round_trip_of_hand_built_records() -> None:
    s = span(parent=b"\x05" * 8, name="chat m", a="1")
    s.kind = trace_pb2.Span.SPAN_KIND_CLIENT
    s.status.code, s.status.message = trace_pb2.Status.STATUS_CODE_ERROR, "boom"
    s.events.add(name="gen_ai.evaluation.result", time_unix_nano=7,
                 attributes=[kv("gen_ai.evaluation.score.value", double_value=0.5)])
    data = trace_pb2.TracesData()
    data.resource_spans.add().scope_spans.add().spans.append(s)
    (got,) = read_spans(data.SerializeToString())
    assert got == OtelSpan(trace_id=TID.hex(), span_id=SID.hex(), parent_span_id="05" * 8, name="chat m", kind=3,
                           start_ns=1000, end_ns=2000, attributes={"a": "1"}, status_code=2, status_message="boom",
                           events=[OtelEvent(name="gen_ai.evaluation.result", time_ns=7,
                                             attributes={"gen_ai.evaluation.score.value": 0.5})])
    # spans without ids are skipped when read (split_traces refuses them before)
    data.resource_spans[0].scope_spans[0].spans.append(span(b"", SID))
    data.resource_spans[0].scope_spans[0].spans.append(span(TID, b"\x00" * 8))
    assert len(read_spans(data.SerializeToString())) == 1
    # a log record: its body as a value, observed time when there is no time
    rec = _log("gen_ai.choice", body=common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(
        values=[kv("index", int_value=0), kv("message", string_value="hi")])))
    rec.time_unix_nano, rec.observed_time_unix_nano = 0, 99
    logs = logs_pb2.LogsData()
    logs.resource_logs.add().scope_logs.add().log_records.extend([rec, _log("gen_ai.choice", b"")])
    (got_log,) = read_logs(logs.SerializeToString())
    assert got_log == OtelLog(trace_id=TID.hex(), span_id=SID.hex(), event_name="gen_ai.choice", time_ns=99,
                              body={"index": 0, "message": "hi"})
    no_span = _log("gen_ai.choice")
    no_span.span_id = b""
    logs = logs_pb2.LogsData()
    logs.resource_logs.add().scope_logs.add().log_records.append(no_span)
    (got_log,) = read_logs(logs.SerializeToString())
    assert got_log.span_id is None and got_log.body is None


def test_any_value_every_kind() -> None:
    A = common_pb2.AnyValue
    assert any_value(A()) is None
    assert any_value(A(string_value="")) == ""
    assert any_value(A(string_value="héllo \U0001F600")) == "héllo \U0001F600"
    assert any_value(A(bool_value=False)) is False and any_value(A(bool_value=True)) is True
    assert any_value(A(int_value=-(2**63))) == -(2**63) and any_value(A(int_value=0)) == 0
    assert any_value(A(double_value=1.5)) == 1.5
    assert math.isnan(any_value(A(double_value=float("nan"))))
    assert any_value(A(double_value=float("-inf"))) == float("-inf")
    assert any_value(A(bytes_value=b"\x00\xffab")) == base64.b64encode(b"\x00\xffab").decode()
    assert any_value(A(bytes_value=b"")) == ""
    assert any_value(A(array_value=common_pb2.ArrayValue())) == []
    assert any_value(A(kvlist_value=common_pb2.KeyValueList())) == {}
    nested = A(kvlist_value=common_pb2.KeyValueList(values=[
        kv("s", string_value="x"), kv("n", int_value=3), kv("none"),
        kv("list", array_value=common_pb2.ArrayValue(values=[
            A(int_value=1), A(string_value="two"), A(),
            A(kvlist_value=common_pb2.KeyValueList(values=[kv("deep", bool_value=True)])),
            A(array_value=common_pb2.ArrayValue(values=[A(double_value=0.25), A(bytes_value=b"\x01")])),
        ])),
        kv("map", kvlist_value=common_pb2.KeyValueList(values=[kv("k", string_value="v")])),
    ]))
    assert any_value(nested) == {"s": "x", "n": 3, "none": None,
                                 "list": [1, "two", None, {"deep": True}, [0.25, "AQ=="]], "map": {"k": "v"}}
    # a key given twice in a kvlist: the last one
    dup = A(kvlist_value=common_pb2.KeyValueList(values=[kv("k", int_value=1), kv("k", int_value=2)]))
    assert any_value(dup) == {"k": 2}


def test_any_value_bounds() -> None:
    A = common_pb2.AnyValue
    assert len(any_value(A(string_value="x" * (MAX_VALUE_CHARS + 10)))) == MAX_VALUE_CHARS
    assert len(any_value(A(bytes_value=b"x" * MAX_VALUE_CHARS))) == MAX_VALUE_CHARS
    v = A(string_value="leaf")
    for _ in range(40):  # deeper than kept: cut to None below the bound, never a RecursionError
        v = A(array_value=common_pb2.ArrayValue(values=[v]))
    got, depth = any_value(v), 0
    while isinstance(got, list):
        got, depth = got[0], depth + 1
    assert got is None and 10 < depth < 40


# ---- fuzzing: the receiver's contract ----

DECODERS = [("decode_traces", lambda b: decode_traces(b, PROTOBUF)),
            ("decode_logs", lambda b: decode_logs(b, PROTOBUF)), ("read_spans", read_spans), ("read_logs", read_logs)]


def only_decode_errors(name: str, fn: Any, raw: bytes) -> None:
    count(f"otlp.{name}")
    try:
        got = fn(raw)
    except OtlpDecodeError as exc:
        assert str(exc)
        return
    if name.startswith("read_"):  # what reads back is plain and storable
        for x in got:
            type(x).model_validate_json(x.model_dump_json())


@pytest.mark.parametrize(("name", "fn"), DECODERS, ids=[d[0] for d in DECODERS])
@FUZZ
@given(raw=st.binary(max_size=400))
def test_fuzz_random_bytes(name: str, fn: Any, raw: bytes) -> None:
    only_decode_errors(name, fn, raw)


def _bodies() -> list[bytes]:
    return [proto_body(n, i) for n, i in all_requests()]


@pytest.mark.parametrize(("name", "fn"), DECODERS, ids=[d[0] for d in DECODERS])
@FUZZ
@given(data=st.data())
def test_fuzz_truncated_and_flipped_protobuf(name: str, fn: Any, data: st.DataObject) -> None:
    raw = data.draw(st.sampled_from(_bodies()))
    how = data.draw(st.sampled_from(["truncate", "flip", "splice", "insert"]))
    i = data.draw(st.integers(0, len(raw) - 1))
    if how == "truncate":
        bad = raw[:i]
    elif how == "flip":
        bad = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1:]
    elif how == "splice":
        bad = raw[:i] + raw[data.draw(st.integers(0, len(raw))):]
    else:
        bad = raw[:i] + data.draw(st.binary(min_size=1, max_size=16)) + raw[i:]
    only_decode_errors(name, fn, bad)


JSON_DECODERS = [("decode_traces[json]", lambda b: decode_traces(b, JSON)),
                 ("decode_logs[json]", lambda b: decode_logs(b, JSON))]


@pytest.mark.parametrize(("name", "fn"), JSON_DECODERS, ids=[d[0] for d in JSON_DECODERS])
@FUZZ
@given(value=json_values)
def test_fuzz_random_json_values(name: str, fn: Any, value: Any) -> None:
    only_decode_errors(name, fn, json.dumps(value).encode())
    if isinstance(value, dict | list):
        wrapped = {"resourceSpans": value, "resourceLogs": value}
        only_decode_errors(name, fn, json.dumps(wrapped).encode())


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@functools.cache
def _body_paths(name: str, i: int) -> list[tuple[Any, ...]]:
    return [p for p in _paths(_requests(name)[i]["body"]) if p]


_ANY_JSON = st.one_of(json_values, st.sampled_from(["0" * 32, "0" * 16, "zz", "-1", "1e400", "9" * 30, "NaN"]),
                      st.integers(min_value=-(2**70), max_value=2**70), st.floats())


@pytest.mark.parametrize(("name", "fn"), JSON_DECODERS, ids=[d[0] for d in JSON_DECODERS])
@FUZZ
@given(data=st.data())
def test_fuzz_mutated_fixture_json(name: str, fn: Any, data: st.DataObject) -> None:
    """A real request with one value anywhere in it replaced by any JSON value."""
    req_name, i = data.draw(st.sampled_from(all_requests()))
    body = requests(req_name)[i]["body"]
    paths = _body_paths(req_name, i)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = body
        try:
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = data.draw(_ANY_JSON)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement took this path away
    raw = json.dumps(body).encode()  # NaN/Infinity written as such: json.loads reads them back
    only_decode_errors(name, fn, raw)
    try:
        msg = fn(raw)
    except OtlpDecodeError:
        return
    out = (split_logs if "logs" in name else split_traces)(msg)
    for part in out.per_trace.values():
        (read_logs if "logs" in name else read_spans)(part.SerializeToString())


# ---- fuzzing: the builder's contract ----

@functools.cache
def _episode_spans(name: str) -> dict[str, list[OtelSpan]]:
    out: dict[str, list[OtelSpan]] = {}
    for req in _requests(name):
        if req["path"] == "/v1/traces":
            for s in read_spans(decode_traces(json.dumps(req["body"]).encode(), JSON).SerializeToString()):
                out.setdefault(s.trace_id, []).append(s)
    return out


def _is_model_call(s: OtelSpan) -> bool:
    a = s.attributes
    return a.get("gen_ai.operation.name") == "chat" or a.get("openinference.span.kind") == "LLM" or \
        a.get("llm.request.type") == "chat"


KEYS = [
    "gen_ai.operation.name", "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
    "gen_ai.tool.definitions", "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
    "gen_ai.usage.prompt_tokens", "llm.usage.total_tokens", "gen_ai.request.model", "gen_ai.response.model",
    "gen_ai.conversation.id", "gen_ai.tool.name", "gen_ai.tool.call.id", "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result", "openinference.span.kind", "llm.input_messages.0.message.role",
    "llm.input_messages.0.message.content", "llm.input_messages.1.message.content",
    "llm.output_messages.0.message.content", "llm.output_messages.0.message.tool_calls.0.tool_call.function.name",
    "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments",
    "llm.output_messages.0.message.tool_calls.0.tool_call.id", "llm.tools.0.tool.json_schema",
    "llm.token_count.total", "llm.token_count.prompt", "llm.model_name", "session.id", "tool.name", "tool.parameters",
    "input.value", "output.value", "gen_ai.prompt.0.role", "gen_ai.prompt.0.content", "gen_ai.prompt.0",
    "gen_ai.completion.0.content", "gen_ai.completion.0.tool_calls.0.name", "gen_ai.completion.0.tool_calls.0",
    "llm.request.functions.0.name", "llm.request.functions.0.parameters", "llm.request.type",
    "stillflow.task_id", "stillflow.workload", "service.name",
]
_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(),
                  st.text(max_size=30), st.sampled_from(["chat", "execute_tool", "LLM", "TOOL", "user", "assistant",
                                                         "tool", "tool_call", "text", "{", "[", "[]", "{}", "null"]))
_struct = st.recursive(_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.sampled_from(
        ["role", "parts", "type", "content", "text", "name", "arguments", "id", "response", "result", "tool_calls",
         "function", "message", "tool_call_id", "parameters", "description", "x"]), kids, max_size=5)),
    max_leaves=10)


def _json_text(v: Any) -> str:
    return json.dumps(v, allow_nan=True)


attr_values = st.one_of(_struct, _struct.map(_json_text))
attr_dicts = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=20)), attr_values, max_size=8)


# a build costs more than a decode, and the drawing of nested attribute values most of all
FUZZ_BUILD = settings(FUZZ, max_examples=60)


def only_trajectory_errors(spans: list[OtelSpan], logs: list[OtelLog] = ()) -> None:
    count("otel.build_trajectory")
    try:
        got = build_trajectory(spans, list(logs))
    except TrajectoryError as exc:
        assert exc.kind in {"no_content", "no_llm_spans", "invalid"} and exc.message
        return
    assert isinstance(got, Built)
    got.trace.model_validate_json(got.trace.model_dump_json())  # a valid, storable AgentTrace


@pytest.mark.parametrize("fixture", ["genai", "openinference", "openllmetry", "openllmetry-flat", "agents"])
@FUZZ_BUILD
@given(data=st.data())
def test_fuzz_build_on_fuzzed_attributes(fixture: str, data: st.DataObject) -> None:
    traces = _episode_spans(fixture)
    spans = [s.model_copy(deep=True) for s in traces[data.draw(st.sampled_from(sorted(traces)))]]
    calls = [i for i, s in enumerate(spans) if _is_model_call(s)]
    # a model call at least, and any other span (tool spans, the root with the task id)
    targets = [data.draw(st.sampled_from(calls))]
    targets += data.draw(st.lists(st.sampled_from(range(len(spans))), max_size=2, unique=True))
    for i in dict.fromkeys(targets):
        fuzzed = data.draw(attr_dicts)
        attrs = fuzzed if data.draw(st.booleans()) else {**spans[i].attributes, **fuzzed}
        spans[i] = spans[i].model_copy(update={"attributes": attrs})
    only_trajectory_errors(spans)


@FUZZ_BUILD
@given(data=st.data())
def test_fuzz_build_on_fuzzed_events(data: st.DataObject) -> None:
    """GenAI events (span events and log records) with any attributes and bodies."""
    traces = _episode_spans("genai")
    spans = [s.model_copy(deep=True) for s in traces[data.draw(st.sampled_from(sorted(traces)))]]
    names = st.sampled_from(["gen_ai.client.inference.operation.details", "gen_ai.system.message",
                             "gen_ai.user.message", "gen_ai.assistant.message", "gen_ai.tool.message", "gen_ai.choice",
                             "gen_ai.evaluation.result", "gen_ai.other"])
    calls = [i for i, s in enumerate(spans) if _is_model_call(s)]
    logs = []
    for i in calls:
        if data.draw(st.booleans()):  # content only in the events
            spans[i] = spans[i].model_copy(update={"attributes": {
                k: v for k, v in spans[i].attributes.items() if k not in (
                    "gen_ai.input.messages", "gen_ai.output.messages")}})
        evs = data.draw(st.lists(st.tuples(names, attr_dicts), max_size=3))
        spans[i] = spans[i].model_copy(update={"events": [OtelEvent(name=n, attributes=a) for n, a in evs]})
        for n, a, body in data.draw(st.lists(st.tuples(names, attr_dicts, attr_values), max_size=3)):
            logs.append(OtelLog(trace_id=spans[i].trace_id, span_id=spans[i].span_id, event_name=n, attributes=a,
                                body=body))
    only_trajectory_errors(spans, logs)
