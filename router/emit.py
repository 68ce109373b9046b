"""Publishing what the router served: trace steps and outcomes (so teacher answers become training data)
and a `RouteDecision` per request, through the SDK's `TraceEmitter`.

Exports `EventSink` (publishes; never blocks or fails a request: each publish is a background task,
failures are counted in `stillflow_router_emit_errors_total` and logged) and `NullSink` (the router
without Kafka).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from router.metrics import RouterMetrics
from stillflow.contracts import RouteDecision, TraceOutcomeEvent, TraceStep
from stillflow.sdk import TraceEmitter
from stillflow.settings import StillflowSettings

__all__ = ["EventSink", "NullSink"]

log = logging.getLogger("stillflow.router.emit")


class NullSink:
    """Drops every event (the router with `kafka=false`)."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def turn(self, *, trace_id: str, task_id: str, agent_id: str, first_seq: int, steps: list[TraceStep],
             decision: RouteDecision) -> None:
        return None

    def decision(self, decision: RouteDecision) -> None:
        return None

    async def outcome(self, event: TraceOutcomeEvent) -> None:
        return None


class EventSink(NullSink):
    def __init__(self, settings: StillflowSettings, metrics: RouterMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.emitter = TraceEmitter(settings, agent_id="router")
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.emitter.start()

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        try:
            await self.emitter.close()
        except Exception as exc:
            log.warning("closing the emitter: %s", exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.metrics.emit_errors.inc()
            log.warning("an event was not published: %r", task.exception())

    async def _turn(self, trace_id: str, task_id: str, agent_id: str, first_seq: int, steps: list[TraceStep],
                    decision: RouteDecision) -> None:
        for i, step in enumerate(steps):
            await self.emitter.emit_step(trace_id=trace_id, task_id=task_id, agent_id=agent_id, seq=first_seq + i,
                                         step=step)
        self.metrics.events_emitted.labels("trace_steps").inc(len(steps))
        await self._decision(decision)

    async def _decision(self, decision: RouteDecision) -> None:
        await self.emitter.emit(self.settings.topics.router_decisions, decision.trace_id, decision)
        self.metrics.events_emitted.labels("router_decisions").inc()

    def turn(self, *, trace_id: str, task_id: str, agent_id: str, first_seq: int, steps: list[TraceStep],
             decision: RouteDecision) -> None:
        self._spawn(self._turn(trace_id, task_id, agent_id, first_seq, steps, decision))

    def decision(self, decision: RouteDecision) -> None:
        self._spawn(self._decision(decision))

    async def outcome(self, event: TraceOutcomeEvent) -> None:
        """Awaited: the agent that reports an outcome is told whether it was accepted."""
        await self.emitter.emit_outcome(event)
        self.metrics.events_emitted.labels("trace_outcomes").inc()
