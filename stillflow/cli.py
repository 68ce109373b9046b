"""The `stillflow` command line.

Plain argparse so that the base install needs nothing more; every heavy import (faust, torch, the
services) happens inside the command that needs it. Other packages add their commands through a
`register(subparsers)` function (see `_PLUGINS`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from stillflow.settings import StillflowSettings

__all__ = ["main", "build_parser"]

log = logging.getLogger("stillflow")

# Modules that add sub-commands; each must import light and expose register(subparsers).
_PLUGINS = ("sim.cli", "streams.cli", "trainer.cli", "router.cli", "stillflow.demo", "stillflow.up",
            "stillflow.advise_cli")


class CLIError(Exception):
    """A user-facing failure: printed without a traceback, exit status 2."""


def positive_int(value: str) -> int:
    """argparse type: a whole number > 0, with a clear error otherwise."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {n}")
    return n


def _settings(args: argparse.Namespace) -> StillflowSettings:
    from stillflow.kafka import resolve_bootstrap, with_bootstrap

    settings = StillflowSettings()
    bootstrap = getattr(args, "bootstrap", None) or resolve_bootstrap(settings)
    if not bootstrap:
        raise CLIError(
            "no Kafka broker: start one with `stillflow broker` (it records its address for other "
            "commands), or set STILLFLOW_KAFKA__BOOTSTRAP_SERVERS / pass --bootstrap"
        )
    return with_bootstrap(settings, bootstrap)


# -- broker -----------------------------------------------------------------------------------


def cmd_broker(args: argparse.Namespace) -> int:
    from stillflow.broker import BrokerError, EmbeddedBroker, clear_state, read_state, write_state

    broker = EmbeddedBroker(port=args.port, host=args.host, log_path=args.log)
    try:
        broker.start()
    except BrokerError as exc:
        raise CLIError(str(exc)) from None
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # The state file names one broker per machine: a second broker does not take it over.
    other = read_state()
    owns_state = other is None
    if owns_state:
        write_state(broker.bootstrap_servers)
    else:
        print(f"note: another `stillflow broker` is running on {other}; other commands keep using that one "
              f"unless given --bootstrap {broker.bootstrap_servers}", file=sys.stderr)
    try:
        if args.create_topics:
            asyncio.run(_create_topics(_with(broker.bootstrap_servers), None))
        print(broker.bootstrap_servers, flush=True)
        print(
            f"embedded broker (tansu, memory storage) on {broker.bootstrap_servers}; "
            f"export STILLFLOW_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap_servers}; Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            if not broker.running:
                raise CLIError("the broker process exited unexpectedly")
    finally:
        if owns_state:
            clear_state()
        broker.stop()
    print("broker stopped", file=sys.stderr)
    return 0


def _with(bootstrap: str) -> StillflowSettings:
    from stillflow.kafka import with_bootstrap

    return with_bootstrap(StillflowSettings(), bootstrap)


# -- topics -----------------------------------------------------------------------------------


async def _create_topics(settings: StillflowSettings, partitions: int | None) -> list[str]:
    from stillflow.kafka import ensure_topics
    from stillflow.topics import catalogue

    specs = catalogue(settings.topics, partitions or settings.kafka.default_partitions)
    return await ensure_topics(settings, specs)


def cmd_topics(args: argparse.Namespace) -> int:
    from stillflow.kafka import list_topics
    from stillflow.topics import catalogue

    settings = _settings(args)
    if args.action == "create":
        created = asyncio.run(_create_topics(settings, args.partitions))
        for spec in catalogue(settings.topics):
            state = "created" if spec.name in created else "exists"
            print(f"{spec.name:32s} {state}")
        return 0
    existing = asyncio.run(list_topics(settings))
    known = {s.name: s for s in catalogue(settings.topics)}
    for name, parts in existing.items():
        spec = known.get(name)
        kind = spec.value.__name__ if spec and spec.value else f"OTLP {spec.encoding}" if spec else ""
        role = f"{kind} (key {spec.key})" if spec else "-"
        print(f"{name:32s} partitions={parts:<3d} {role}")
    missing = sorted(set(known) - set(existing))
    if missing:
        print(f"missing from the catalogue: {', '.join(missing)} (run `stillflow topics create`)", file=sys.stderr)
    return 0


# -- tail -------------------------------------------------------------------------------------


async def _tail(settings: StillflowSettings, args: argparse.Namespace) -> int:
    from stillflow.contracts import ContractError, decode
    from stillflow.kafka import make_consumer
    from stillflow.topics import model_for

    try:
        model = model_for(args.topic, settings.topics)
    except KeyError as exc:
        raise CLIError(str(exc.args[0])) from None
    consumer = make_consumer(
        settings.kafka, args.topic, group_id=None,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
    )
    await consumer.start()
    shown = 0
    try:
        while args.max is None or shown < args.max:
            batch = await consumer.getmany(timeout_ms=500)
            if not batch:
                if args.timeout is not None:
                    args.timeout -= 0.5
                    if args.timeout <= 0:
                        break
                continue
            for records in batch.values():
                for rec in records:
                    key = rec.key.decode(errors="replace") if rec.key else None
                    head = f"{rec.topic}[{rec.partition}]@{rec.offset} key={key}"
                    try:
                        event = decode(rec.value or b"", model)
                        body = json.dumps(event.model_dump(mode="json"), indent=None if args.compact else 2)
                        print(f"{head}\n{body}", flush=True)
                    except ContractError as exc:
                        print(f"{head}\n  !! undecodable ({exc.kind}): {exc.message}", flush=True)
                    shown += 1
                    if args.max is not None and shown >= args.max:
                        return 0
    finally:
        await consumer.stop()
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_tail(_settings(args), args))
    except KeyboardInterrupt:
        return 0


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stillflow", description="Continuous trace distillation for LLM agents, on Kafka."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (tansu, memory storage)")
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback)")
    p.add_argument("--log", default=None, help="write the broker's own log to this file")
    p.add_argument("--create-topics", action="store_true", help="create the topic catalogue once up")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="create or list the topic catalogue")
    p.add_argument("action", choices=["create", "list"])
    p.add_argument("--partitions", type=int, default=None, help="partitions for multi-partition topics")
    p.add_argument("--bootstrap", default=None, help="host:port (default: settings or `stillflow broker`)")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("tail", help="print the events of a topic, decoded")
    p.add_argument("topic")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--max", type=int, default=None, help="stop after N records")
    p.add_argument("--timeout", type=float, default=None, help="stop after S seconds without records")
    p.add_argument("--compact", action="store_true", help="one line per event")
    p.add_argument("--bootstrap", default=None)
    p.set_defaults(func=cmd_tail)

    for name in _PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A package not built yet, or an extra not installed: its commands are simply absent.
            log.debug("no commands from %s: %s", name, exc)
            continue
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"stillflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
