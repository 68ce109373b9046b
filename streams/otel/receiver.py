"""`stillflow otlp`: an OTLP/HTTP receiver that keeps what instrumented agents send, one record per trace.

Exports `create_app(settings, producer=None)` (the FastAPI app), `running_receiver(settings)` (serves on a
free port in this event loop, yields the base URL: tests, `stillflow up`) and `serve(settings)`.

Endpoints, as the OTLP/HTTP specification says:
- `POST /v1/traces`, `POST /v1/logs`: `application/x-protobuf` or `application/json` (OTLP's JSON mapping),
  optionally `Content-Encoding: gzip`. 200 with an `Export*ServiceResponse` (its `partial_success` says how
  many spans or log records were refused and why), 400 for an undecodable body, 401 without a valid key
  (when keys are set), 413 over `otlp.max_body_bytes`, 415 for another content type or encoding, 429 when
  too much is being published at once and 503 when Kafka did not take the records within
  `otlp.publish_timeout_s`, both with `Retry-After`. Never a 200 for data that was not kept: the answer
  waits until the broker has acknowledged every record. Error bodies are a `google.rpc.Status`.
  Spans go to `stillflow.otlp.spans` as the Collector's Kafka exporter writes them (`otlp_proto`,
  `partition_traces_by_id`: one `TracesData` per trace, keyed by the hex trace id); GenAI log events to
  `stillflow.otlp.logs` the same way.
- `POST /v1/stillflow/outcome`: how an OTel trace ended (`success`, optionally `ground_truth`,
  `expected_steps`, `error`, `final_output`, `workload`, `metadata`), naming it by `trace_id` (the 32-hex
  OTel trace id) or `task_id` (the `stillflow.task_id` its spans carry). 202 once published to
  `stillflow.otlp.outcomes`.
- `GET /healthz`, `GET /readyz`, `GET /metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import zlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from stillflow.auth import bearer_key_ok
from stillflow.contracts import TraceOutcomeEvent, encode, is_valid_id, utcnow
from stillflow.kafka import make_producer
from streams.otel.join import JOIN_META
from streams.otel.otlp import JSON, PROTOBUF, OtlpDecodeError, decode_logs, decode_traces, split_logs, split_traces
from streams.otel.settings import OtlpSettings

__all__ = ["create_app", "running_receiver", "serve", "ReceiverMetrics"]

log = logging.getLogger("stillflow.otlp")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
# google.rpc.Code
_INVALID_ARGUMENT, _UNAUTHENTICATED, _RESOURCE_EXHAUSTED, _UNAVAILABLE = 3, 16, 8, 14


class ReceiverMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.requests = Counter("stillflow_otlp_requests_total", "OTLP requests, by signal and status code",
                                ["signal", "code"], registry=r)
        self.items = Counter("stillflow_otlp_items_total",
                             "Spans and log records received, by signal and result (kept, refused)",
                             ["signal", "result"], registry=r)
        self.records = Counter("stillflow_otlp_records_total", "Records published to Kafka, by signal",
                               ["signal"], registry=r)
        self.seconds = Histogram("stillflow_otlp_request_seconds", "Time to answer an export request",
                                 ["signal"], registry=r,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))


class _Refused(Exception):
    def __init__(self, status: int, code: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _status_body(code: int, message: str, media: str) -> tuple[bytes, str]:
    """A `google.rpc.Status` (code, message) in the request's encoding (hand-encoded: two fields)."""
    if media == PROTOBUF:
        msg = message.encode()
        return b"\x08" + _varint(code) + b"\x12" + _varint(len(msg)) + msg, PROTOBUF
    return json.dumps({"code": code, "message": message}).encode(), JSON


class _Inflight:
    """Bytes being published at once: beyond the bound, requests are told to come back (429)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    @contextlib.contextmanager
    def hold(self, n: int, retry_after: int) -> Any:
        if self.used and self.used + n > self.limit:
            raise _Refused(429, _RESOURCE_EXHAUSTED, f"the receiver is publishing {self.used} bytes already "
                           f"(STILLFLOW_OTLP__MAX_INFLIGHT_BYTES={self.limit}); retry later", retry_after)
        self.used += n
        try:
            yield
        finally:
            self.used -= n


def _unzip(body: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
        if len(out) > limit:
            raise _Refused(413, _RESOURCE_EXHAUSTED, f"the body is over {limit} bytes once decompressed "
                           "(STILLFLOW_OTLP__MAX_BODY_BYTES)")
        if not d.eof:
            raise _Refused(400, _INVALID_ARGUMENT, "the gzip body is truncated")
        return out
    except zlib.error as exc:
        raise _Refused(400, _INVALID_ARGUMENT, f"the body is not valid gzip: {exc}") from None


def create_app(settings: OtlpSettings | None = None, *, producer: Any = None,
               metrics: ReceiverMetrics | None = None) -> FastAPI:
    settings = settings or OtlpSettings()
    sec = settings.otlp
    topics = settings.topics
    metrics = metrics or ReceiverMetrics()
    keys = [k.get_secret_value().encode() for k in sec.api_keys]
    inflight = _Inflight(sec.max_inflight_bytes)
    state: dict[str, Any] = {"producer": producer, "own": producer is None}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if state["producer"] is None:
            p = make_producer(settings.kafka, max_request_size=max(1_048_576, sec.max_record_bytes + 65_536),
                              linger_ms=2, request_timeout_ms=int(sec.publish_timeout_s * 1000))
            await p.start()
            state["producer"] = p
        try:
            yield
        finally:
            if state["own"] and state["producer"] is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(state["producer"].stop(), 10)

    app = FastAPI(title="stillflow OTLP receiver", lifespan=lifespan, docs_url=None, redoc_url=None)

    def check_key(request: Request) -> None:
        if not bearer_key_ok(request.headers.get("authorization"), keys):
            raise _Refused(401, _UNAUTHENTICATED, "missing or invalid API key (Authorization: Bearer <key>; "
                           "exporters: OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<key>)")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        too_big = _Refused(413, _RESOURCE_EXHAUSTED, f"the body is over {sec.max_body_bytes} bytes "
                           "(STILLFLOW_OTLP__MAX_BODY_BYTES)")
        if declared is not None and declared.isdigit() and int(declared) > sec.max_body_bytes:
            raise too_big
        parts, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > sec.max_body_bytes:
                raise too_big
            parts.append(chunk)
        body = b"".join(parts)
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding == "gzip":
            return _unzip(body, sec.max_body_bytes)
        if encoding not in ("", "identity"):
            raise _Refused(415, _INVALID_ARGUMENT, f"unsupported Content-Encoding {encoding!r} (gzip or none)")
        return body

    async def publish(topic: str, records: list[tuple[str, bytes]], signal: str) -> None:
        producer = state["producer"]
        try:
            async with asyncio.timeout(sec.publish_timeout_s):  # one deadline for the request (a task per send
                futures = [await producer.send(topic, value, key=key.encode()) for key, value in records]  # cost)
                await asyncio.gather(*futures)
        except Exception as exc:  # a timeout, the broker gone, a producer error: the data was not kept
            log.warning("OTLP %s: Kafka did not take %d records: %r", signal, len(records), exc)
            raise _Refused(503, _UNAVAILABLE, f"Kafka did not take the data within {sec.publish_timeout_s:g} s "
                           f"({type(exc).__name__}); nothing of it can be counted as kept, retry",
                           sec.retry_after_s) from None
        metrics.records.labels(signal).inc(len(records))

    def refused_response(exc: _Refused, media: str, signal: str) -> Response:
        metrics.requests.labels(signal, str(exc.status)).inc()
        body, ctype = _status_body(exc.code, exc.message, media)
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return Response(body, status_code=exc.status, media_type=ctype, headers=headers)

    async def export(request: Request, signal: str) -> Response:
        media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        answer_media = media if media in (PROTOBUF, JSON) else PROTOBUF
        with metrics.seconds.labels(signal).time():
            try:
                check_key(request)
                if media not in (PROTOBUF, JSON):
                    raise _Refused(415, _INVALID_ARGUMENT, f"unsupported Content-Type {media or 'none'!r}: OTLP/HTTP "
                                   f"takes {PROTOBUF} or {JSON}")
                body = await read_body(request)
                try:
                    data = decode_traces(body, media) if signal == "traces" else decode_logs(body, media)
                except OtlpDecodeError as exc:
                    raise _Refused(400, _INVALID_ARGUMENT, str(exc)) from None
                split = split_traces(data) if signal == "traces" else split_logs(data)
                records = []
                for tid, part in split.per_trace.items():
                    raw = part.SerializeToString()
                    if len(raw) > sec.max_record_bytes:
                        split.refuse(split.counts[tid], f"trace {tid}: {len(raw)} bytes of it in one request, over "
                                     f"STILLFLOW_OTLP__MAX_RECORD_BYTES={sec.max_record_bytes}")
                        continue
                    records.append((tid, raw))
                if records:
                    with inflight.hold(len(body), sec.retry_after_s):
                        await publish(topics.otlp_spans if signal == "traces" else topics.otlp_logs, records,
                                      signal)
            except _Refused as exc:
                return refused_response(exc, answer_media, signal)
            kept = sum(split.counts[tid] for tid, _ in records)
            metrics.items.labels(signal, "kept").inc(kept)
            metrics.items.labels(signal, "refused").inc(split.rejected)
            metrics.requests.labels(signal, "200").inc()
            if signal == "traces":
                resp = trace_service_pb2.ExportTraceServiceResponse()
                if split.rejected:
                    resp.partial_success.rejected_spans = split.rejected
                    resp.partial_success.error_message = "; ".join(split.reasons)[:2000]
            else:
                resp = logs_service_pb2.ExportLogsServiceResponse()
                if split.rejected:
                    resp.partial_success.rejected_log_records = split.rejected
                    resp.partial_success.error_message = "; ".join(split.reasons)[:2000]
            if answer_media == JSON:
                return Response(json_format.MessageToJson(resp, indent=None).encode(), media_type=JSON)
            return Response(resp.SerializeToString(), media_type=PROTOBUF)

    async def traces(request: Request) -> Response:
        return await export(request, "traces")

    async def logs(request: Request) -> Response:
        return await export(request, "logs")

    async def outcome(request: Request) -> Response:
        try:
            check_key(request)
            body = await read_body(request)
        except _Refused as exc:
            metrics.requests.labels("outcome", str(exc.status)).inc()
            return JSONResponse({"error": {"message": exc.message, "code": exc.status}}, status_code=exc.status)
        try:
            event = outcome_event(json.loads(body))
        except (ValueError, TypeError, RecursionError) as exc:
            metrics.requests.labels("outcome", "400").inc()
            return JSONResponse({"error": {"message": f"invalid outcome: {exc}"[:1000], "code": 400}},
                                status_code=400)
        by_task = event.metadata.get(JOIN_META) == "task"
        key = event.task_id if by_task else event.trace_id
        try:
            await publish(topics.otlp_outcomes, [(key, encode(event))], "outcome")
        except _Refused as exc:
            metrics.requests.labels("outcome", "503").inc()
            return JSONResponse({"error": {"message": exc.message, "code": 503}}, status_code=503,
                                headers={"Retry-After": str(exc.retry_after)})
        metrics.requests.labels("outcome", "202").inc()
        return JSONResponse({"trace_id": event.trace_id, "task_id": event.task_id, "event_id": event.event_id,
                             "joins_by": "task_id" if by_task else "trace_id"},
                            status_code=202)

    # the three hot endpoints as plain Starlette routes: FastAPI's dependency solving per request cost more than
    # the handler's own work (they take the raw request anyway)
    app.router.add_route("/v1/traces", traces, methods=["POST"])
    app.router.add_route("/v1/logs", logs, methods=["POST"])
    app.router.add_route("/v1/stillflow/outcome", outcome, methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        ok = state["producer"] is not None
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def outcome_event(body: Any) -> TraceOutcomeEvent:
    """The `TraceOutcomeEvent` an outcome report stands for (raises ValueError with the reason)."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    if not isinstance(body.get("success"), bool):
        raise ValueError("`success` (a boolean) is required")
    trace_id, task_id = body.get("trace_id"), body.get("task_id")
    if trace_id is not None:
        if not isinstance(trace_id, str) or not _HEX32.match(trace_id.lower()):
            raise ValueError("`trace_id` must be the OTel trace id: 32 hex characters")
        trace_id = trace_id.lower()
    if task_id is not None and (not isinstance(task_id, str) or not is_valid_id(task_id)):
        raise ValueError("`task_id` must be a non-empty printable id")
    if trace_id is None and task_id is None:
        raise ValueError("name the trace: `trace_id` (the OTel trace id) or `task_id` (its stillflow.task_id)")
    meta = body.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValueError("`metadata` must be an object of strings")
    metadata = {str(k): str(v) for k, v in meta.items()}
    if trace_id is None:
        metadata[JOIN_META] = "task"
    fields = {k: body[k] for k in ("ground_truth", "expected_steps", "error", "final_output", "workload",
                                   "quality_score", "cost_usd") if body.get(k) is not None}
    try:
        return TraceOutcomeEvent(trace_id=trace_id or task_id, task_id=task_id or trace_id, n_steps=0, input_text="",
                                 success=body["success"], metadata=metadata, timestamp=utcnow(), **fields)
    except Exception as exc:  # pydantic's ValidationError: the field and why
        raise ValueError(str(exc)[:800]) from None


@contextlib.asynccontextmanager
async def running_receiver(settings: OtlpSettings, *, producer: Any = None,
                           metrics: ReceiverMetrics | None = None) -> AsyncIterator[str]:
    """Serve on `settings.otlp.host` and a free port (or the set one) in this loop; yields the base URL."""
    from stillflow.serving import serving

    app = create_app(settings, producer=producer, metrics=metrics)
    async with serving(app, host=settings.otlp.host, port=settings.otlp.port, lifespan="on") as (host, port):
        yield f"http://{host}:{port}"


def serve(settings: OtlpSettings, *, log_level: str = "info") -> None:
    import uvicorn

    log.info("OTLP/HTTP receiver on http://%s:%d (/v1/traces, /v1/logs, /v1/stillflow/outcome)",
             settings.otlp.host, settings.otlp.port)
    uvicorn.run(create_app(settings), host=settings.otlp.host, port=settings.otlp.port, log_level=log_level,
                access_log=False)
