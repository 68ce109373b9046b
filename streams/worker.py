"""Run one streams worker: make sure the topics exist, then start the faust app until a signal.

Several workers with the same `app_id` form one consumer group and share the partitions.
"""

from __future__ import annotations

import asyncio
import logging
import os

from stillflow.kafka import ensure_named_topics, ensure_topics, list_topics
from streams.settings import StreamsSettings

__all__ = ["source_partitions", "run_worker"]

log = logging.getLogger(__name__)


async def source_partitions(settings: StreamsSettings) -> int:
    """Create the catalogue's and the app's internal topics if needed and return the partition count of the trace topics
    (steps and outcomes must agree: the assembly table is co-partitioned with both)."""
    await ensure_topics(settings)
    topics = await list_topics(settings)
    steps, outcomes = topics.get(settings.topics.trace_steps), topics.get(settings.topics.trace_outcomes)
    if not steps or steps != outcomes:
        raise RuntimeError(
            f"{settings.topics.trace_steps} has {steps} partitions and {settings.topics.trace_outcomes} has "
            f"{outcomes}: they must be equal (both are keyed by trace_id and assembled together)"
        )
    internal = settings.internal_topics()
    named = {
        internal["expire"]: (int(steps), {}),
        internal["windows"]: (1, {}),  # one partition: the watermark and windows are global
    }
    if settings.streams.otel.enabled:
        t = settings.topics
        otlp = {name: topics.get(name) for name in (t.otlp_spans, t.otlp_logs, t.otlp_outcomes)}
        wrong = {name: n for name, n in otlp.items() if n != steps}
        if wrong:  # a Collector may have created its topic first
            raise RuntimeError(
                "the OTLP topics must have as many partitions as the trace topics (" + str(steps) + "): "
                + ", ".join(f"{name} has {n}" for name, n in wrong.items())
                + " (their traces are assembled in one table; or set STILLFLOW_STREAMS__OTEL__ENABLED=false)")
        named[internal["otel_tick"]] = (int(steps), {})
        named[internal["otel_tasks"]] = (int(steps), {})
    await ensure_named_topics(settings, named)
    return int(steps)


def run_worker(settings: StreamsSettings, *, loglevel: str = "info") -> int:
    """Blocks until SIGINT/SIGTERM; returns the exit status."""
    from faust.worker import Worker  # heavy: only when a worker really starts

    from streams.app import create_app

    settings.limits.apply()
    partitions = asyncio.run(source_partitions(settings))
    streams_app = create_app(settings, partitions=partitions)
    log.info("streams worker %s: %d partitions, web/metrics on %s:%d (pid %d)", settings.streams.app_id, partitions,
             settings.streams.web_host, settings.streams.web_port, os.getpid())
    class _Worker(Worker):
        async def on_startup_finished(self) -> None:
            await super().on_startup_finished()
            # The imports (faust, aiokafka, pydantic, jsonschema) and the recovered tables are there for
            # the life of the process: out of the full collections, which otherwise stalled the assembler
            # ~45 ms about once per 6,000 events (stillflow.gcheap).
            from stillflow.gcheap import freeze_startup_heap

            log.info("streams worker started: %d objects frozen out of the GC's full collections",
                     freeze_startup_heap())

    worker = _Worker(streams_app.app, loglevel=loglevel, redirect_stdouts=False)
    # faust's terminal spinner, at levels >= WARN, sets the root logger to DEBUG so that it can spin on
    # every record: every aiokafka debug call then builds a LogRecord (~2 per event). A service log has
    # no use for a spinner.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
