"""`stillflow advise`: the command around `stillflow.advise` (reading the events, the flags, the output).

Exports `register(subparsers)` (the CLI's plugin hook), `read_jsonl(paths)` (recorded events, one JSON event a
line: `ScoredTrace` or `RouteDecision`, told apart by their fields) and `read_topics(settings, since=...,
timeout_s=...)` (the scored-traces and route-decisions topics from the start, or from `since`, up to their
end offsets at the time of the call). Imports light: aiokafka only inside `read_topics`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from stillflow.contracts import ContractError, RouteDecision, ScoredTrace, decode
from stillflow.settings import StillflowSettings

__all__ = ["register", "read_jsonl", "read_topics", "cmd_advise"]

Events = tuple[list[ScoredTrace], list[RouteDecision]]

# records whose event time is a little before `since` can sit after it in a partition (events arrive out
# of order): the read starts this much earlier and filters by event time
_SEEK_SLACK = timedelta(minutes=5)


def _kind(obj: dict[str, Any]) -> type[ScoredTrace] | type[RouteDecision] | None:
    if "trace" in obj and "score" in obj:
        return ScoredTrace
    if "served_by" in obj and "request_id" in obj:
        return RouteDecision
    return None


def read_jsonl(paths: Iterable[str | Path]) -> tuple[list[ScoredTrace], list[RouteDecision], list[str]]:
    """(scored traces, route decisions, problems) of recorded files, one JSON event a line. Blank lines are
    skipped; a line that is no event of either kind is a problem (`file:line: why`), not an error."""
    scored: list[ScoredTrace] = []
    decisions: list[RouteDecision] = []
    problems: list[str] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    problems.append(f"{path}:{n}: not JSON")
                    continue
                model = _kind(obj) if isinstance(obj, dict) else None
                if model is None:
                    problems.append(f"{path}:{n}: neither a ScoredTrace nor a RouteDecision")
                    continue
                try:
                    event = decode(line, model)
                except ContractError as exc:
                    problems.append(f"{path}:{n}: {exc}")
                    continue
                (scored if isinstance(event, ScoredTrace) else decisions).append(event)  # type: ignore[arg-type]
    return scored, decisions, problems


async def read_topics(settings: StillflowSettings, *, since: datetime | None = None, timeout_s: float = 60.0,
                      idle_s: float = 10.0) -> tuple[list[ScoredTrace], list[RouteDecision], list[str]]:
    """(scored traces, route decisions, problems) from the two topics: from the first offset (or the first
    at `since` less a few minutes) up to the end offsets taken when the read starts, so it finishes while
    producers keep writing. Stops after `timeout_s` in all or `idle_s` without a record, and says so."""
    from aiokafka import TopicPartition

    from stillflow.kafka import make_consumer

    models: dict[str, type[ScoredTrace] | type[RouteDecision]] = {
        settings.topics.traces_scored: ScoredTrace, settings.topics.router_decisions: RouteDecision}
    problems: list[str] = []
    scored: list[ScoredTrace] = []
    decisions: list[RouteDecision] = []
    consumer = make_consumer(settings.kafka, group_id=None)
    try:
        await consumer.start()
        tps = []
        for topic in models:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                problems.append(f"topic {topic} does not exist (yet)")
            tps += [TopicPartition(topic, p) for p in sorted(parts or ())]
        if not tps:
            return scored, decisions, problems
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        if since is None:
            await consumer.seek_to_beginning(*tps)
        else:
            ms = int((since - _SEEK_SLACK).timestamp() * 1000)
            found = await consumer.offsets_for_times({tp: max(0, ms) for tp in tps})
            for tp in tps:
                at = found.get(tp)
                consumer.seek(tp, at.offset if at is not None else ends[tp])
        loop = asyncio.get_running_loop()
        started = last = loop.time()
        undecodable = 0
        while True:
            behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not behind:
                break
            now = loop.time()
            if now - started > timeout_s or now - last > idle_s:
                problems.append(f"stopped reading after {now - started:.0f} s with {len(behind)} partitions short "
                                "of their end offsets: the range may be incomplete (--timeout)")
                break
            batch = await consumer.getmany(*behind, timeout_ms=500, max_records=5000)
            if batch:
                last = loop.time()
            for tp, records in batch.items():
                for rec in records:
                    if rec.offset >= ends[tp]:
                        continue  # written after the read started
                    try:
                        event = decode(rec.value or b"", models[tp.topic])
                    except ContractError:
                        undecodable += 1  # the DLQ's business; the advice counts what it can read
                        continue
                    (scored if isinstance(event, ScoredTrace) else decisions).append(event)  # type: ignore[arg-type]
        if undecodable:
            problems.append(f"{undecodable} records could not be decoded and were skipped")
        return scored, decisions, problems
    finally:
        await consumer.stop()


def _when(value: str | None, now: datetime, flag: str) -> datetime | None:
    from stillflow.advise import parse_when
    from stillflow.cli import CLIError

    if value is None:
        return None
    try:
        return parse_when(value, now)
    except ValueError as exc:
        raise CLIError(f"{flag}: {exc}") from None


def _kafka_events(args: argparse.Namespace, settings: StillflowSettings, since: datetime | None) -> Events:
    from aiokafka.errors import KafkaError

    from stillflow.cli import CLIError
    from stillflow.kafka import resolve_bootstrap, with_bootstrap

    bootstrap = args.bootstrap or resolve_bootstrap(settings)
    if not bootstrap:
        raise CLIError("no Kafka broker to read from: set STILLFLOW_KAFKA__BOOTSTRAP_SERVERS or pass --bootstrap "
                       "host:port (or run `stillflow broker` / `stillflow up` on this machine), or read recorded "
                       "events with --from-jsonl FILE")
    settings = with_bootstrap(settings, bootstrap)
    try:
        scored, decisions, problems = asyncio.run(read_topics(settings, since=since, timeout_s=args.timeout))
    except KafkaError as exc:
        raise CLIError(f"cannot read from the Kafka broker at {bootstrap} ({exc}): is it "
                       "running? Point at another with STILLFLOW_KAFKA__BOOTSTRAP_SERVERS or --bootstrap") from None
    for p in problems:
        print(f"stillflow advise: {p}", file=sys.stderr)
    return scored, decisions


def cmd_advise(args: argparse.Namespace) -> int:
    from stillflow.advise import AdviseError, advise_from_events, render_markdown, render_text, to_json
    from stillflow.cli import CLIError
    from stillflow.costs import CostModel

    if not getattr(args, "verbose", False):
        logging.getLogger("aiokafka").setLevel(logging.WARNING)  # its INFO lines would drown the table
    settings = StillflowSettings()
    now = datetime.now(UTC)
    since = _when(args.since, now, "--since")
    until = _when(args.until, now, "--until")
    if args.from_jsonl:
        try:
            scored, decisions, problems = read_jsonl(args.from_jsonl)
        except OSError as exc:
            raise CLIError(f"--from-jsonl: {exc}") from None
        for p in problems[:10]:
            print(f"stillflow advise: skipped {p}", file=sys.stderr)
        if len(problems) > 10:
            print(f"stillflow advise: ... and {len(problems) - 10} more lines skipped", file=sys.stderr)
    else:
        t0 = time.time()
        scored, decisions = _kafka_events(args, settings, since)
        if since is not None and until is None:
            until = datetime.fromtimestamp(t0, UTC)  # the range is "since then": up to the time of the call
    try:
        prices = settings.advise
        cost = CostModel(
            prices.teacher_price_per_1k if args.teacher_price_per_1k is None else args.teacher_price_per_1k,
            prices.student_price_per_1k if args.student_price_per_1k is None else args.student_price_per_1k)
        report = advise_from_events(scored, decisions, since=since, until=until, settings=settings, cost=cost,
                                    student_share=args.student_share)
    except (AdviseError, ValueError) as exc:
        source = ", ".join(args.from_jsonl) if args.from_jsonl else "the topics"
        raise CLIError(f"{exc} (read {len(scored)} scored traces and {len(decisions)} route decisions from "
                       f"{source})") from None
    if args.out:
        Path(args.out).write_text(render_markdown(report), encoding="utf-8")
    if args.json:
        print(to_json(report))
    else:
        print(render_text(report), end="")
        if args.out:
            print(f"markdown report: {args.out}")
    return 0


def _price(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a price in USD, got {value!r}") from None
    if x < 0 or x != x:
        raise argparse.ArgumentTypeError(f"a price cannot be negative, got {value}")
    return x


def _share(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1], got {value!r}") from None
    if not 0 <= x <= 1:
        raise argparse.ArgumentTypeError(f"a share is in [0, 1], got {value}")
    return x


def register(sub: Any) -> None:
    p = sub.add_parser(
        "advise", help="per workload: is distilling worth it (volume, latency, context, drift, consistency, cost)",
        description="Reads the scored traces and route decisions of a time range and tells, per workload, which "
                    "symptoms call for distilling or fine-tuning, with cost per day now and with the student. "
                    "Thresholds: STILLFLOW_ADVISE__* (docs/advise.md).")
    p.add_argument("--since", default=None, help="start of the range: ISO-8601 or a duration back from now "
                                                 "(30m, 2h, 1d); default: the first event")
    p.add_argument("--until", default=None, help="end of the range, same forms; default: the last event (with a "
                                                 "--since read from the topics: now)")
    p.add_argument("--from-beginning", action="store_true", default=True,
                   help="read the topics from their start up to their end offsets at the time of the call "
                        "(the default; with --since the read starts at that time)")
    p.add_argument("--from-jsonl", nargs="+", metavar="FILE", default=None,
                   help="read recorded events instead of Kafka: one JSON ScoredTrace or RouteDecision a line")
    p.add_argument("--json", action="store_true", help="print every number as JSON instead of the table")
    p.add_argument("--out", default=None, metavar="REPORT.md", help="also write the report as markdown")
    p.add_argument("--teacher-price-per-1k", type=_price, default=None,
                   help="USD per 1k teacher tokens (default: settings advise.teacher_price_per_1k, 0.01)")
    p.add_argument("--student-price-per-1k", type=_price, default=None,
                   help="USD per 1k student tokens (default: settings advise.student_price_per_1k, 0.0005)")
    p.add_argument("--student-share", type=_share, default=None,
                   help="cost 'with the student' at this share of calls instead of the measured one (what if)")
    p.add_argument("--timeout", type=float, default=60.0, help="give up reading the topics after S seconds")
    p.add_argument("--bootstrap", default=None, help="host:port (default: settings or `stillflow broker`)")
    p.set_defaults(func=cmd_advise)
