"""`stillflow streams` (run a worker), `stillflow export` (dataset topics → JSONL files) and `stillflow dataset
build` (trace files → the same files, offline).

Imports light: faust and the app load inside the command.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _settings(args: argparse.Namespace):  # -> StreamsSettings
    from stillflow.cli import CLIError
    from stillflow.kafka import resolve_bootstrap, with_bootstrap
    from streams.settings import StreamsSettings

    settings = StreamsSettings()
    bootstrap = args.bootstrap or resolve_bootstrap(settings)
    if not bootstrap:
        raise CLIError("no Kafka broker: run `stillflow broker`, or set STILLFLOW_KAFKA__BOOTSTRAP_SERVERS")
    settings = with_bootstrap(settings, bootstrap)
    updates = {}
    if getattr(args, "web_port", None) is not None:
        updates["web_port"] = args.web_port
    if updates:
        settings = settings.model_copy(update={"streams": settings.streams.model_copy(update=updates)})
    return settings


def cmd_streams(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    return run_worker(_settings(args), loglevel=args.loglevel)


def cmd_otlp(args: argparse.Namespace) -> int:
    from stillflow.cli import CLIError
    from stillflow.kafka import resolve_bootstrap, with_bootstrap
    from streams.otel.settings import OtlpSettings

    settings = OtlpSettings()
    bootstrap = args.bootstrap or resolve_bootstrap(settings)
    if not bootstrap:
        raise CLIError("no Kafka broker: run `stillflow broker`, or set STILLFLOW_KAFKA__BOOTSTRAP_SERVERS")
    settings = with_bootstrap(settings, bootstrap)
    updates = {k: v for k, v in (("port", args.port), ("host", args.host)) if v is not None}
    if updates:
        settings = settings.model_copy(update={"otlp": settings.otlp.model_copy(update=updates)})
    import asyncio

    from stillflow.kafka import ensure_topics
    from streams.otel.receiver import serve

    asyncio.run(ensure_topics(settings))
    serve(settings, log_level=args.loglevel)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import asyncio

    from streams.export import export

    report = asyncio.run(export(_settings(args), out_dir=args.out, fmt=args.format, since=args.since,
                                timeout_s=args.timeout))
    print(report.summary())
    return 0


def cmd_dataset_build(args: argparse.Namespace) -> int:
    import sys

    from stillflow.cli import CLIError
    from streams.dataset_build import SHOW_PROBLEMS, BuildError, build_dataset

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    try:
        report = build_dataset(args.sources, args.out, fmt=args.format, workers=args.workers,
                               progress=not args.quiet, log=say)
    except BuildError as exc:
        raise CLIError(str(exc)) from None
    for p in report.problems[:SHOW_PROBLEMS]:
        print(f"skipped {p}", file=sys.stderr)
    if len(report.problems) > SHOW_PROBLEMS:
        print(f"... and {len(report.problems) - SHOW_PROBLEMS} more unreadable rows: see "
              f"{report.out_dir / 'unreadable.jsonl'}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(report.summary())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("streams", help="run a stream-processing worker (assemble, score, gate, format, window)")
    p.add_argument("--bootstrap", default=None, help="host:port (default: settings or `stillflow broker`)")
    p.add_argument("--web-port", type=int, default=None, help="this worker's web/metrics port (default 6066)")
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_streams)

    p = sub.add_parser(
        "otlp", help="run the OTLP/HTTP receiver: OpenTelemetry spans of instrumented agents in, as traces",
        description="Receives OTLP/HTTP (POST /v1/traces, /v1/logs; protobuf or JSON, gzip) from any "
        "OpenTelemetry exporter and publishes the spans, one record per trace, to stillflow.otlp.spans (the "
        "Collector Kafka exporter's otlp_proto shape), where the streams worker builds them into traces. "
        "POST /v1/stillflow/outcome reports how a trace ended. Settings: STILLFLOW_OTLP__*.")
    p.add_argument("--port", type=int, default=None, help="listen port (default 4318, OTLP/HTTP's)")
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument("--bootstrap", default=None, help="host:port (default: settings or `stillflow broker`)")
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_otlp)

    p = sub.add_parser("export", help="write the dataset topics as JSONL (trl or OpenAI fine-tuning format)")
    p.add_argument("--format", choices=["trl", "openai"], default="trl")
    p.add_argument("--out", required=True, help="directory to write sft.jsonl and dpo.jsonl into")
    p.add_argument("--since", default=None, help="only windows from this one on (a window id like w-1767225600)")
    p.add_argument("--timeout", type=float, default=10.0, help="stop when no record came for this many seconds")
    p.add_argument("--bootstrap", default=None)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("dataset", help="datasets without the broker: `stillflow dataset build`")
    dsub = p.add_subparsers(dest="dataset_command", required=True, metavar="COMMAND")
    b = dsub.add_parser(
        "build", help="score, gate, format, redact and pair trace files into a dataset, as the stream does",
        description="Reads AgentTrace rows (JSON lines, .gz too; ScoredTrace rows give their trace) and runs the "
        "stream's own scoring, gates, formatting, PII redaction, windows and pair mining on them, in event-time "
        "order, with each task's efficiency reference carried from trace to trace. Writes sft.jsonl, dpo.jsonl "
        "and manifest.json (the layout of `stillflow export`, which `stillflow train --from-jsonl DIR` reads), "
        "plus rejected.jsonl (trace id, gates, reasons), unreadable.jsonl (file, line, reason) and "
        "dead_letters.jsonl. Settings (quality gates, windows, pairs, limits) are the stream's "
        "(STILLFLOW_* environment variables); the LLM judge is not called.")
    b.add_argument("--from", dest="sources", action="append", required=True, metavar="FILE",
                   help="a file of traces (repeat for several)")
    b.add_argument("--out", required=True, help="directory to write the dataset into")
    b.add_argument("--format", choices=["trl", "openai"], default="trl")
    b.add_argument("--workers", type=int, default=None,
                   help="scoring processes (default: one per CPU for 2 000+ traces, else this process)")
    b.add_argument("--quiet", action="store_true", help="no progress on stderr")
    b.set_defaults(func=cmd_dataset_build)
