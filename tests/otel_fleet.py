"""Run sim episodes under one OpenTelemetry GenAI instrumentation, exporting OTLP to an endpoint.

    python -m tests.otel_fleet --instrumentation NAME --endpoint http://127.0.0.1:4318 \
        --episodes N --out FILE.json [--protocol http|grpc] [--teacher-url URL]

NAME: `genai` (opentelemetry-instrumentation-genai-openai, content on spans), `genai-nocontent`,
`openinference` (openinference-instrumentation-openai), `openllmetry` (traceloop
opentelemetry-instrumentation-openai, TRACELOOP_TRACE_CONTENT=true), `agents` (OpenAI Agents SDK +
openinference-instrumentation-openai-agents).

One instrumentation per process (they monkeypatch `openai`), hence a script. Each episode runs
inside a root span `sim.episode` (attributes `stillflow.task_id`, `stillflow.workload`,
`stillflow.trace_id`) from the same tracer provider, so one OTel trace = one episode. Spans go
through a BatchSpanProcessor + OTLP exporter (`ENDPOINT/v1/traces` for http, `ENDPOINT` for grpc);
log records through a BatchLogRecordProcessor + OTLP log exporter (`ENDPOINT/v1/logs`). The SDK
1.45 has no EventLoggerProvider any more; none of these instrumentors asks for one (genai and
openllmetry take `logger_provider`, openinference only `tracer_provider`).

FILE.json: for `agents` a list of {"otel_trace_id", "task_id", "final_output", "success"}; otherwise
a list of {"otel_trace_id", "trace": AgentTrace.model_dump(mode="json")} (the SDK-recorded trace).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

INSTRUMENTATIONS = ("genai", "genai-nocontent", "openinference", "openllmetry", "agents")
ROOT_SPAN = "sim.episode"
SERVICE_NAME = "sim-agent"
DEFAULT_FAMILIES = ("lookup", "recovery")


def set_env(name: str) -> None:
    """Environment the instrumentation reads (before it is imported / instrumented)."""
    if name == "genai":
        # util-genai: NO_CONTENT | SPAN_ONLY | EVENT_ONLY | SPAN_AND_EVENT (no semconv opt-in needed)
        os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = os.environ.get(
            "STILLFLOW_OTEL_GENAI_CAPTURE", "SPAN_ONLY")
    elif name == "genai-nocontent":
        os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "NO_CONTENT"
    elif name == "openllmetry":
        os.environ["TRACELOOP_TRACE_CONTENT"] = "true"
    elif name in ("openinference", "agents"):
        os.environ.setdefault("OPENINFERENCE_HIDE_INPUTS", "false")
        os.environ.setdefault("OPENINFERENCE_HIDE_OUTPUTS", "false")
    # never any call to the OpenAI platform (Agents SDK tracing export key etc.)
    os.environ.setdefault("OPENAI_API_KEY", "sim")


class KafkaRecordFile:
    """A span exporter that writes what the Collector's Kafka exporter would: each export batch's spans as
    one OTLP `TracesData` per trace (the real exporter library's encoder), length-prefixed, to a file. With
    a SimpleSpanProcessor every span is its own batch, so a trace arrives over several records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = open(path, "ab")  # noqa: SIM115 - closed at shutdown

    def export(self, spans: Any) -> Any:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace.export import SpanExportResult

        by_trace: dict[int, list[Any]] = {}
        for span in spans:
            by_trace.setdefault(span.context.trace_id, []).append(span)
        for tid, group in by_trace.items():
            raw = encode_spans(group).SerializeToString()
            key = format(tid, "032x").encode()
            self.fh.write(len(key).to_bytes(4, "big") + key + len(raw).to_bytes(4, "big") + raw)
        self.fh.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.fh.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.fh.flush()
        return True


def read_record_file(path: Path) -> list[tuple[bytes, bytes]]:
    """(key, value) records written by `KafkaRecordFile`."""
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        key = data[i + 4:i + 4 + n]
        i += 4 + n
        m = int.from_bytes(data[i:i + 4], "big")
        out.append((key, data[i + 4:i + 4 + m]))
        i += 4 + m
    return out


def make_providers(endpoint: str, protocol: str, record_file: Path | None = None) -> tuple[Any, Any]:
    from opentelemetry import trace
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    base = endpoint.rstrip("/")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        insecure = not base.startswith("https://")
        target = base.split("://", 1)[-1]
        span_exporter = OTLPSpanExporter(endpoint=target, insecure=insecure)
        log_exporter = OTLPLogExporter(endpoint=target, insecure=insecure)
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(endpoint=base + "/v1/traces")
        log_exporter = OTLPLogExporter(endpoint=base + "/v1/logs")
    resource = Resource.create({"service.name": SERVICE_NAME})
    tracer_provider = TracerProvider(resource=resource)
    if record_file is not None:  # as a Collector with the Kafka exporter would write them, not sent anywhere
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        tracer_provider.add_span_processor(SimpleSpanProcessor(KafkaRecordFile(record_file)))
    else:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    # Not installed as the global providers: the in-process teacher (FastAPI >= 0.16x traces itself
    # through the global API) would add its own server spans, in traces of their own. Every
    # instrumentor gets the providers explicitly. STILLFLOW_OTEL_GLOBAL=1 installs them anyway.
    if os.environ.get("STILLFLOW_OTEL_GLOBAL") == "1":
        trace.set_tracer_provider(tracer_provider)
        set_logger_provider(logger_provider)
    return tracer_provider, logger_provider


def instrument(name: str, tracer_provider: Any, logger_provider: Any) -> Any:
    if name in ("genai", "genai-nocontent"):
        from opentelemetry.instrumentation.genai.openai import OpenAIInstrumentor

        inst = OpenAIInstrumentor()
        inst.instrument(tracer_provider=tracer_provider, logger_provider=logger_provider)
        return inst
    if name == "openinference":
        from openinference.instrumentation.openai import OpenAIInstrumentor as OIOpenAIInstrumentor

        inst = OIOpenAIInstrumentor()
        inst.instrument(tracer_provider=tracer_provider)
        return inst
    if name == "openllmetry":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor as TLOpenAIInstrumentor

        inst = TLOpenAIInstrumentor()
        inst.instrument(tracer_provider=tracer_provider, logger_provider=logger_provider)
        return inst
    if name == "agents":
        from tests.otel_agents_sdk import instrument_agents

        return instrument_agents(tracer_provider)
    raise ValueError(f"unknown instrumentation {name!r}; one of {', '.join(INSTRUMENTATIONS)}")


def pick_tasks(n: int, families: tuple[str, ...] = DEFAULT_FAMILIES, world_seed: int = 0, offset: int = 0) -> list[Any]:
    """A deterministic set: the families' train tasks in index order, interleaved (lookup-0, recovery-0, ...)."""
    from sim.tasks import get_suite

    suite = get_suite(world_seed)
    iters = [suite.iter_split("train", family=f) for f in families]
    out: list[Any] = []
    while len(out) < n + offset:
        for it in iters:
            if len(out) < n + offset:
                out.append(next(it))
    return out[offset:]


@contextlib.asynccontextmanager
async def teacher(url: str | None, *, policy: str, errors: bool, seed: int) -> AsyncIterator[str]:
    if url:
        yield url
        return
    from sim.server import running_server
    from sim.settings import ErrorRates, SimSettings, with_sim

    kw: dict[str, Any] = dict(latency_ms=0.0, latency_jitter_ms=0.0, seed=seed, policy=policy)
    if not errors:
        kw["error_rates"] = ErrorRates.none()
    async with running_server(with_sim(SimSettings(), **kw)) as base:
        yield base


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import openai
    from opentelemetry import trace

    tracer_provider, logger_provider = make_providers(args.endpoint, args.protocol, args.record_file)
    inst = instrument(args.instrumentation, tracer_provider, logger_provider)
    tracer = trace.get_tracer("stillflow.sim", tracer_provider=tracer_provider)
    tasks = pick_tasks(args.episodes, offset=args.offset)
    out: list[dict[str, Any]] = []
    import httpx

    reporter = httpx.AsyncClient(timeout=30.0) if args.outcome_url else None

    async def report(otel_trace_id: str, task: Any, success: bool) -> None:
        """What a real agent does at the end of an episode: tell stillflow how it went (by the OTel trace id)."""
        if reporter is None:
            return
        r = await reporter.post(args.outcome_url, json={
            "trace_id": otel_trace_id, "success": success, "ground_truth": task.ground_truth,
            "expected_steps": task.expected_steps})
        r.raise_for_status()

    try:
        async with teacher(args.teacher_url, policy=args.policy, errors=args.errors, seed=args.seed) as url:
            client = openai.AsyncOpenAI(base_url=url, api_key="sim", max_retries=0, timeout=60.0)
            for i, task in enumerate(tasks):
                trace_id = f"otel-{i}"
                attrs = {"stillflow.task_id": task.task_id, "stillflow.workload": task.family,
                         "stillflow.trace_id": trace_id}
                with tracer.start_as_current_span(ROOT_SPAN, attributes=attrs) as root:
                    otel_trace_id = format(root.get_span_context().trace_id, "032x")
                    if args.instrumentation == "agents":
                        from tests.otel_agents_sdk import run_agents_episode

                        ep = await run_agents_episode(client, task, trace_id=trace_id, model=args.model)
                        root.set_attribute("stillflow.success", ep.success)
                        out.append({"otel_trace_id": otel_trace_id, "task_id": task.task_id,
                                    "final_output": ep.final_output, "success": ep.success,
                                    "error": ep.error, "tool_calls": ep.tool_calls})
                        success = ep.success
                    else:
                        from sim.openai_agent import run_openai_episode

                        tr = await run_openai_episode(client, task, model=args.model, trace_id=trace_id)
                        root.set_attribute("stillflow.success", tr.success)
                        out.append({"otel_trace_id": otel_trace_id, "trace": tr.model_dump(mode="json")})
                        success = tr.success
                await report(otel_trace_id, task, success)
            await client.close()
    finally:
        if reporter is not None:
            await reporter.aclose()
        tracer_provider.force_flush()
        logger_provider.force_flush()
        with contextlib.suppress(Exception):
            inst.uninstrument()
        tracer_provider.shutdown()
        logger_provider.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.otel_fleet", description=__doc__.split("\n")[0])
    p.add_argument("--instrumentation", required=True, choices=INSTRUMENTATIONS)
    p.add_argument("--endpoint", required=True, help="OTLP base, e.g. http://127.0.0.1:4318 (grpc: :4317)")
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--teacher-url", default=None, help="an already running teacher (…/v1); default: start one")
    p.add_argument("--model", default="teacher")
    p.add_argument("--policy", default="teacher", choices=("teacher", "perfect", "random"))
    p.add_argument("--errors", action="store_true", help="keep the policy's default error rates (default: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset", type=int, default=0, help="skip the first N tasks of the deterministic set")
    p.add_argument("--record-file", type=Path, default=None,
                   help="write the spans as Collector Kafka records to this file instead of exporting them")
    p.add_argument("--outcome-url", default=None,
                   help="POST each episode's outcome here (stillflow otlp's /v1/stillflow/outcome), by OTel trace id")
    args = p.parse_args(argv)
    set_env(args.instrumentation)
    out = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    ok = sum(bool(r.get("success", r.get("trace", {}).get("success"))) for r in out)
    print(f"{args.instrumentation}: {len(out)} episodes, {ok} successful -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
