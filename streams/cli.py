"""`stillflow streams` (run a worker) and `stillflow export` (dataset topics → JSONL files).

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


def cmd_export(args: argparse.Namespace) -> int:
    import asyncio

    from streams.export import export

    report = asyncio.run(export(_settings(args), out_dir=args.out, fmt=args.format, since=args.since,
                                timeout_s=args.timeout))
    print(report.summary())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("streams", help="run a stream-processing worker (assemble, score, gate, format, window)")
    p.add_argument("--bootstrap", default=None, help="host:port (default: settings or `stillflow broker`)")
    p.add_argument("--web-port", type=int, default=None, help="this worker's web/metrics port (default 6066)")
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_streams)

    p = sub.add_parser("export", help="write the dataset topics as JSONL (trl or OpenAI fine-tuning format)")
    p.add_argument("--format", choices=["trl", "openai"], default="trl")
    p.add_argument("--out", required=True, help="directory to write sft.jsonl and dpo.jsonl into")
    p.add_argument("--since", default=None, help="only windows from this one on (a window id like w-1767225600)")
    p.add_argument("--timeout", type=float, default=10.0, help="stop when no record came for this many seconds")
    p.add_argument("--bootstrap", default=None)
    p.set_defaults(func=cmd_export)
