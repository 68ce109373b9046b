"""OTLP on the wire: request bodies in, one record per trace out, records back to plain spans and logs.

Exports:
- `decode_traces(body, content_type)` / `decode_logs(body, content_type)`: an OTLP/HTTP request body
  (`application/x-protobuf` or OTLP's JSON mapping: hex ids, int64 as strings) → `TracesData` /
  `LogsData`; raises `OtlpDecodeError` (the receiver's 400) for anything undecodable;
- `split_traces(data)` / `split_logs(data)`: one `(hex trace id, TracesData|LogsData)` per trace, each
  keeping its resource and scope (the Collector Kafka exporter's `partition_traces_by_id` shape), plus
  what was refused and why (spans without ids);
- `read_spans(raw)` / `read_logs(raw)`: a record's `otlp_proto` bytes → `OtelSpan` / `OtelLog` (plain,
  JSON-storable: attributes as Python values), for the pure assembly in `streams.otel.assembly`.

The protobuf classes come from `opentelemetry-proto`; the Collector's `otlp_proto` encoding of a
`TracesData` is byte for byte an `ExportTraceServiceRequest` (field 1 is `resource_spans` in both).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from pydantic import Field

from streams.tables import TableModel

__all__ = [
    "PROTOBUF",
    "JSON",
    "OtlpDecodeError",
    "OtelEvent",
    "OtelSpan",
    "OtelLog",
    "Split",
    "decode_traces",
    "decode_logs",
    "split_traces",
    "split_logs",
    "read_spans",
    "read_logs",
    "any_value",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# an attribute value kept for the assembly is cut here: a hostile 100 MB string must not reach a table
MAX_VALUE_CHARS = 1_048_576


class OtlpDecodeError(ValueError):
    """A body that is not OTLP (garbage, truncated protobuf, bad JSON, ids of the wrong length)."""


class OtelEvent(TableModel):
    name: str
    time_ns: int = 0
    attributes: dict[str, Any] = Field(default_factory=dict)


class OtelSpan(TableModel):
    """One span, as the assembly needs it (ids as lowercase hex)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None = None
    name: str = ""
    kind: int = 0
    start_ns: int = 0
    end_ns: int = 0
    attributes: dict[str, Any] = Field(default_factory=dict)
    events: list[OtelEvent] = Field(default_factory=list)
    resource: dict[str, Any] = Field(default_factory=dict)
    scope: str = ""
    status_code: int = 0
    status_message: str = ""


class OtelLog(TableModel):
    """One log record (a GenAI event of the older instrumentations: `gen_ai.user.message`, ...)."""

    trace_id: str
    span_id: str | None = None
    event_name: str = ""
    time_ns: int = 0
    attributes: dict[str, Any] = Field(default_factory=dict)
    body: Any = None
    resource: dict[str, Any] = Field(default_factory=dict)
    scope: str = ""


@dataclass
class Split:
    """A request cut into one message per trace, and what could not be kept."""

    per_trace: OrderedDict[str, Any] = field(default_factory=OrderedDict)  # hex trace id -> TracesData/LogsData
    counts: dict[str, int] = field(default_factory=dict)  # hex trace id -> spans/log records in it
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    def refuse(self, n: int, reason: str) -> None:
        self.rejected += n
        if reason not in self.reasons:
            self.reasons.append(reason)


# ---- request bodies ----

def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _hex_to_b64(value: Any, n_bytes: int, what: str) -> str:
    if not isinstance(value, str):
        raise OtlpDecodeError(f"{what} must be a hex string, got {type(value).__name__}")
    if value == "":
        return ""
    if len(value) != 2 * n_bytes:
        raise OtlpDecodeError(f"{what} {value[:80]!r} must be {2 * n_bytes} hex characters, got {len(value)}")
    try:
        return base64.b64encode(bytes.fromhex(value)).decode()
    except ValueError:
        raise OtlpDecodeError(f"{what} {value[:80]!r} is not hex") from None


_ID_FIELDS = {"traceId": (16, "traceId"), "spanId": (8, "spanId"), "parentSpanId": (8, "parentSpanId")}


def _ids_to_b64(obj: Any, depth: int = 0) -> Any:
    """OTLP/JSON writes trace and span ids as hex where protobuf's JSON mapping expects base64."""
    if depth > 64:
        raise OtlpDecodeError("the JSON nests deeper than 64 levels")
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in _ID_FIELDS:
                n, what = _ID_FIELDS[k]
                out[k] = _hex_to_b64(v, n, what)
            else:
                out[k] = _ids_to_b64(v, depth + 1)
        return out
    if isinstance(obj, list):
        return [_ids_to_b64(v, depth + 1) for v in obj]
    return obj


def _decode(body: bytes, content_type: str | None, message: Any) -> Any:
    media = _media_type(content_type)
    if media == PROTOBUF:
        try:
            message.ParseFromString(body)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise OtlpDecodeError(f"the body is not a valid OTLP protobuf message: {exc}") from None
        return message
    if media == JSON:
        try:
            data = json.loads(body)
        except ValueError as exc:  # bad UTF-8, bad JSON, an int past Python's 4300-digit conversion limit
            raise OtlpDecodeError(f"the body is not valid JSON: {str(exc)[:500]}") from None
        except RecursionError:
            raise OtlpDecodeError("the JSON nests too deep") from None
        if not isinstance(data, dict):
            raise OtlpDecodeError(f"the body must be a JSON object, got {type(data).__name__}")
        data = _ids_to_b64(data)
        try:
            json_format.ParseDict(data, message, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError, SystemError) as exc:
            # upb raises SystemError/UnicodeEncodeError (not ParseError) on lone surrogates in names and values
            raise OtlpDecodeError(f"the JSON is not an OTLP message: {str(exc)[:500]}") from None
        except RecursionError:
            raise OtlpDecodeError("the JSON nests too deep") from None
        return message
    raise ValueError(f"unsupported content type {content_type!r}")  # the receiver answers 415 before this


def decode_traces(body: bytes, content_type: str | None) -> trace_pb2.TracesData:
    """An `ExportTraceServiceRequest` body (same wire format as `TracesData`)."""
    return _decode(body, content_type, trace_pb2.TracesData())


def decode_logs(body: bytes, content_type: str | None) -> logs_pb2.LogsData:
    """An `ExportLogsServiceRequest` body (same wire format as `LogsData`)."""
    return _decode(body, content_type, logs_pb2.LogsData())


# ---- one record per trace ----

def _hex(raw: bytes, n: int) -> str | None:
    """Lowercase hex of an id of `n` bytes; None when absent, all zero or of the wrong length."""
    if len(raw) != n:
        return None
    h = binascii.hexlify(raw).decode()
    return None if h == "0" * (2 * n) else h


def split_traces(data: trace_pb2.TracesData) -> Split:
    out = Split()
    for rs in data.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                tid = _hex(span.trace_id, 16)
                if tid is None:
                    out.refuse(1, "a span without a valid 16-byte trace id")
                    continue
                if _hex(span.span_id, 8) is None:
                    out.refuse(1, "a span without a valid 8-byte span id")
                    continue
                td = out.per_trace.get(tid)
                if td is None:
                    td = out.per_trace[tid] = trace_pb2.TracesData()
                # the last resource/scope group is the one to extend while spans of a request come in order
                if not td.resource_spans or td.resource_spans[-1].resource != rs.resource:
                    r = td.resource_spans.add()
                    r.resource.CopyFrom(rs.resource)
                    r.schema_url = rs.schema_url
                r = td.resource_spans[-1]
                if not r.scope_spans or r.scope_spans[-1].scope != ss.scope:
                    s = r.scope_spans.add()
                    s.scope.CopyFrom(ss.scope)
                    s.schema_url = ss.schema_url
                r.scope_spans[-1].spans.append(span)
                out.counts[tid] = out.counts.get(tid, 0) + 1
    return out


def _log_event_name(rec: logs_pb2.LogRecord) -> str:
    if rec.event_name:
        return rec.event_name
    for kv in rec.attributes:  # before the `event_name` field existed: the `event.name` attribute
        if kv.key == "event.name" and kv.value.HasField("string_value"):
            return kv.value.string_value
    return ""


def is_genai_event(name: str) -> bool:
    return name.startswith("gen_ai.")


def split_logs(data: logs_pb2.LogsData) -> Split:
    """GenAI event log records, one message per trace; other records are refused (not kept) with a reason."""
    out = Split()
    for rl in data.resource_logs:
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                if not is_genai_event(_log_event_name(rec)):
                    out.refuse(1, "a log record that is not a GenAI event (event name gen_ai.*): not kept")
                    continue
                tid = _hex(rec.trace_id, 16)
                if tid is None:
                    out.refuse(1, "a GenAI event without a trace id: it cannot be joined to a trace")
                    continue
                ld = out.per_trace.get(tid)
                if ld is None:
                    ld = out.per_trace[tid] = logs_pb2.LogsData()
                if not ld.resource_logs or ld.resource_logs[-1].resource != rl.resource:
                    r = ld.resource_logs.add()
                    r.resource.CopyFrom(rl.resource)
                r = ld.resource_logs[-1]
                if not r.scope_logs or r.scope_logs[-1].scope != sl.scope:
                    s = r.scope_logs.add()
                    s.scope.CopyFrom(sl.scope)
                r.scope_logs[-1].log_records.append(rec)
                out.counts[tid] = out.counts.get(tid, 0) + 1
    return out


# ---- records back to plain spans ----

def _cut(s: str) -> str:
    return s if len(s) <= MAX_VALUE_CHARS else s[:MAX_VALUE_CHARS]


def any_value(v: Any, depth: int = 0) -> Any:
    """An OTLP `AnyValue` as a Python value (bytes as base64 text)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value":
        return _cut(v.string_value)
    if kind in ("bool_value", "int_value", "double_value"):
        return getattr(v, kind)
    if kind == "bytes_value":
        return _cut(base64.b64encode(v.bytes_value).decode())
    if depth > 16:
        return None
    if kind == "array_value":
        return [any_value(x, depth + 1) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value, depth + 1) for kv in v.kvlist_value.values}
    return None  # pragma: no cover - a future AnyValue kind


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _parse(raw: bytes, message: Any, what: str) -> Any:
    try:
        message.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise OtlpDecodeError(f"the record is not an OTLP {what} protobuf message: {exc}") from None
    return message


def read_spans(raw: bytes) -> list[OtelSpan]:
    """A `stillflow.otlp.spans` record (otlp_proto `TracesData`) → its spans; spans without ids are skipped."""
    data = _parse(raw, trace_pb2.TracesData(), "traces")
    out: list[OtelSpan] = []
    for rs in data.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = ss.scope.name
            for s in ss.spans:
                tid, sid = _hex(s.trace_id, 16), _hex(s.span_id, 8)
                if tid is None or sid is None:
                    continue
                out.append(OtelSpan(
                    trace_id=tid, span_id=sid, parent_span_id=_hex(s.parent_span_id, 8), name=s.name,
                    kind=int(s.kind), start_ns=int(s.start_time_unix_nano), end_ns=int(s.end_time_unix_nano),
                    attributes=_attrs(s.attributes),
                    events=[OtelEvent(name=e.name, time_ns=int(e.time_unix_nano), attributes=_attrs(e.attributes))
                            for e in s.events],
                    resource=resource, scope=scope, status_code=int(s.status.code),
                    status_message=_cut(s.status.message),
                ))
    return out


def read_logs(raw: bytes) -> list[OtelLog]:
    """A `stillflow.otlp.logs` record (otlp_proto `LogsData`) → its GenAI event records."""
    data = _parse(raw, logs_pb2.LogsData(), "logs")
    out: list[OtelLog] = []
    for rl in data.resource_logs:
        resource = _attrs(rl.resource.attributes)
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                tid = _hex(rec.trace_id, 16)
                if tid is None:
                    continue
                out.append(OtelLog(
                    trace_id=tid, span_id=_hex(rec.span_id, 8), event_name=_log_event_name(rec),
                    time_ns=int(rec.time_unix_nano or rec.observed_time_unix_nano),
                    attributes=_attrs(rec.attributes),
                    body=any_value(rec.body) if rec.HasField("body") else None,
                    resource=resource, scope=sl.scope.name,
                ))
    return out
