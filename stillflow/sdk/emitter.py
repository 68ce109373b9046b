"""`TraceEmitter`: publish trace events from an agent (async), and `SyncTraceEmitter` for sync agents.

Delivery is at-least-once: events are keyed by trace_id (per-trace order is kept within a partition),
the Kafka record timestamp is the event time, and a bounded number of events may be in flight —
beyond it `emit_*` waits (backpressure) and, after `send_timeout_s`, raises `BackpressureTimeout`.
A failed delivery is never silent: it is raised by the next `emit_*` or by `flush()`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Coroutine
from concurrent.futures import Future
from datetime import datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from pydantic import BaseModel

from stillflow.contracts import (
    SCHEMA_VERSION,
    AgentTrace,
    ContractError,
    TraceOutcomeEvent,
    TraceStep,
    TraceStepEvent,
    encode,
    get_limits,
    id_problem,
    new_id,
)
from stillflow.kafka import make_producer, resolve_bootstrap, timestamp_ms, with_bootstrap
from stillflow.settings import StillflowSettings

__all__ = ["TraceEmitter", "SyncTraceEmitter", "EmitError", "BackpressureTimeout"]

T = TypeVar("T")


class EmitError(RuntimeError):
    """An event could not be delivered (the broker refused it, or the emitter is closed)."""


class BackpressureTimeout(EmitError):
    """The in-flight bound stayed full for `send_timeout_s`: the broker is not keeping up or is gone."""


def _step_event_head(trace: AgentTrace) -> str:
    """The constant part of a trace's step events. The ids are checked here (a trace built with
    `model_construct` was never validated) and written as JSON strings."""
    ids = []
    for name in ("trace_id", "task_id", "agent_id"):
        value = getattr(trace, name)
        problem = id_problem(value)
        if problem is not None:
            raise ContractError("schema", f"AgentTrace.{name}: an id {problem}")
        ids.append(json.dumps(value, ensure_ascii=False))
    return f'"schema_version":{SCHEMA_VERSION},"trace_id":{ids[0]},"task_id":{ids[1]},"agent_id":{ids[2]}'


def _step_event_bytes(head: str, seq: int, step: TraceStep) -> bytes:
    """A TraceStepEvent's JSON built directly: the SDK's hot path, ~2x cheaper than building the model
    and dumping it. tests/test_sdk_encoding.py proves it decodes to the same event."""
    return (f'{{"event_id":"{new_id()}",{head},"timestamp":"{step.timestamp.isoformat()}","seq":{seq},'
            f'"step":{step.model_dump_json()}}}').encode()


class TraceEmitter:
    """Async context manager over an aiokafka producer.

    >>> async with TraceEmitter() as em:          # settings from STILLFLOW_* env
    ...     await em.emit_trace(trace)            # all steps, then the outcome
    """

    def __init__(
        self,
        settings: StillflowSettings | None = None,
        *,
        bootstrap_servers: str | None = None,
        agent_id: str = "agent",
        workload: str | None = None,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        settings = settings or StillflowSettings()
        if bootstrap_servers:
            settings = with_bootstrap(settings, bootstrap_servers)
        self.settings = settings
        self.agent_id = agent_id
        # the agents' job: set on every trace and outcome that names none (None: the streams derive it
        # from the agent id, setting `workloads.default`)
        self.workload = workload
        self._producer = producer
        self._own_producer = producer is None
        sdk = settings.sdk
        self._max_in_flight = sdk.max_in_flight
        self._timeout = sdk.send_timeout_s
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._error: BaseException | None = None
        self._closed = False
        self.sent = 0
        self.failed = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> TraceEmitter:
        self.settings.limits.apply()
        if self._producer is None:
            bootstrap = resolve_bootstrap(self.settings)
            if not bootstrap:
                raise EmitError(
                    "no Kafka to emit to: set STILLFLOW_KAFKA__BOOTSTRAP_SERVERS, pass bootstrap_servers=, "
                    "or run `stillflow broker`"
                )
            sdk = self.settings.sdk
            kafka = with_bootstrap(self.settings, bootstrap).kafka
            self._producer = make_producer(
                kafka,
                linger_ms=sdk.linger_ms,
                max_batch_size=sdk.max_batch_size,
                compression_type=sdk.compression_type,
                acks=sdk.acks,
            )
            # aiokafka's send() waits for room in a full partition batch (one batch in flight and one
            # filling per partition) for request_timeout_ms, the knob of its produce requests too: bound
            # that wait by send_timeout_s as well, without shortening the requests (a private attribute,
            # read per send; the sender keeps its own copy).
            wait_ms = getattr(self._producer, "_request_timeout_ms", None)
            if isinstance(wait_ms, int | float):
                self._producer._request_timeout_ms = min(wait_ms, self._timeout * 1000)
            await self._producer.start()
        return self

    async def close(self) -> None:
        """Flush what is in flight, then stop the producer (if we made it)."""
        if self._closed:
            return
        try:
            if self._producer is not None:
                await self.flush()
        finally:
            self._closed = True
            if self._own_producer and self._producer is not None:
                await self._producer.stop()

    async def __aenter__(self) -> TraceEmitter:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- emitting ----------------------------------------------------------------------------

    async def emit_step(
        self,
        *,
        trace_id: str,
        task_id: str,
        seq: int,
        step: TraceStep | dict[str, Any],
        agent_id: str | None = None,
        workload: str | None = None,
    ) -> TraceStepEvent:
        """Publish one step (validated here: a bad field raises pydantic's ValidationError naming it)."""
        step = step if isinstance(step, TraceStep) else TraceStep.model_validate(step)
        event = TraceStepEvent(
            trace_id=trace_id, task_id=task_id, agent_id=agent_id or self.agent_id, seq=seq, step=step,
            workload=workload or self.workload, timestamp=step.timestamp,
        )
        await self.emit(self.settings.topics.trace_steps, trace_id, event)
        return event

    async def emit_outcome(self, outcome: TraceOutcomeEvent) -> TraceOutcomeEvent:
        if outcome.workload is None and self.workload is not None:
            outcome = outcome.model_copy(update={"workload": self.workload})
        await self.emit(self.settings.topics.trace_outcomes, outcome.trace_id, outcome)
        return outcome

    async def emit_trace(self, trace: AgentTrace, *, steps_in_outcome: bool = False) -> TraceOutcomeEvent:
        """All steps in order, then the outcome. With `steps_in_outcome` the steps ride in the outcome
        (one event per trace, for agents that buffer their steps)."""
        if not steps_in_outcome:
            topic, key = self.settings.topics.trace_steps, trace.trace_id.encode()
            head = _step_event_head(trace)
            limit = get_limits().max_event_bytes
            for seq, step in enumerate(trace.steps):
                value = _step_event_bytes(head, seq, step)
                if len(value) > limit:
                    raise ContractError("oversize", f"step {seq} of {trace.trace_id} is {len(value)} bytes, "
                                                    f"the limit is {limit}")
                await self.send_raw(topic, key, value, timestamp_ms(step.timestamp))
        outcome = TraceOutcomeEvent.from_trace(trace, include_steps=steps_in_outcome)
        return await self.emit_outcome(outcome)

    async def emit(self, topic: str, key: str, event: BaseModel, *, timestamp: datetime | None = None) -> None:
        """Publish any contract event (encoded, size-checked) keyed by `key`."""
        value = encode(event)
        ts = timestamp or getattr(event, "timestamp", None)
        await self.send_raw(topic, key.encode(), value, timestamp_ms(ts) if ts else None)

    async def send_raw(self, topic: str, key: bytes | None, value: bytes, ts_ms: int | None) -> None:
        if self._error is not None:
            self._raise_pending()
        if self._closed or self._producer is None:
            raise EmitError("the emitter is not started (use `async with TraceEmitter(...)`)")
        pending = self._pending
        if len(pending) >= self._max_in_flight:
            await self._make_room()
        try:
            fut = await self._producer.send(topic, value, key=key, timestamp_ms=ts_ms)
        except KafkaTimeoutError as exc:  # no room in the partition's batch within send_timeout_s
            raise BackpressureTimeout(
                f"no room to send to {topic} for {self._timeout}s: the broker is not acknowledging"
            ) from exc
        except Exception as exc:
            self.failed += 1
            raise EmitError(f"send to {topic} failed: {exc!r}") from exc
        pending.append(fut)
        if len(pending) & 1023 == 0:
            self._reap()

    # In-flight bookkeeping: a deque of delivery futures reaped in order, instead of a semaphore and a
    # done-callback per event (each callback costs a loop round trip; this is the SDK's hot path).
    def _reap(self) -> None:
        pending = self._pending
        while pending and pending[0].done():
            self._settle(pending.popleft())

    def _settle(self, fut: asyncio.Future[Any]) -> None:
        exc = EmitError("delivery cancelled") if fut.cancelled() else fut.exception()
        if exc is None:
            self.sent += 1
        else:
            self.failed += 1
            if self._error is None:
                self._error = exc

    def _raise_pending(self) -> None:
        exc, self._error = self._error, None
        raise EmitError(f"{self.failed} event(s) failed delivery; first error: {exc!r}") from exc

    async def _make_room(self) -> None:
        self._reap()
        pending = self._pending
        if len(pending) < self._max_in_flight:
            return
        oldest = pending[0]
        try:
            await asyncio.wait_for(asyncio.shield(oldest), self._timeout)
        except TimeoutError:
            raise BackpressureTimeout(
                f"{self._max_in_flight} events in flight for {self._timeout}s: the broker is not acknowledging"
            ) from None
        except Exception:  # noqa: S110 - a failed delivery is recorded by _settle and raised below
            pass
        self._reap()
        if self._error is not None:
            self._raise_pending()

    async def flush(self) -> None:
        """Wait until every event emitted so far is acknowledged; raise if any failed."""
        if self._producer is not None:
            await self._producer.flush()
            if self._pending:
                await asyncio.wait(list(self._pending))
            self._reap()
        if self._error is not None:
            self._raise_pending()

    @property
    def in_flight(self) -> int:
        self._reap()
        return len(self._pending)


class SyncTraceEmitter:
    """The same emitter for synchronous agents: it runs its own event loop in a daemon thread.

    >>> with SyncTraceEmitter() as em:
    ...     em.emit_trace(trace)
    """

    def __init__(self, settings: StillflowSettings | None = None, **kwargs: Any) -> None:
        self._settings = settings
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._emitter: TraceEmitter | None = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise EmitError("the emitter is not started (use `with SyncTraceEmitter(...)`)")
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result()

    def start(self) -> SyncTraceEmitter:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="stillflow-emitter", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop

        async def make() -> TraceEmitter:
            return await TraceEmitter(self._settings, **self._kwargs).start()

        try:
            self._emitter = self._call(make())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def _stop_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            loop.close()

    def close(self) -> None:
        try:
            if self._emitter is not None and self._loop is not None:
                self._call(self._emitter.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncTraceEmitter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def emitter(self) -> TraceEmitter:
        if self._emitter is None:
            raise EmitError("the emitter is not started")
        return self._emitter

    def emit_step(self, **kw: Any) -> TraceStepEvent:
        return self._call(self.emitter.emit_step(**kw))

    def emit_outcome(self, outcome: TraceOutcomeEvent) -> TraceOutcomeEvent:
        return self._call(self.emitter.emit_outcome(outcome))

    def emit_trace(self, trace: AgentTrace, *, steps_in_outcome: bool = False) -> TraceOutcomeEvent:
        return self._call(self.emitter.emit_trace(trace, steps_in_outcome=steps_in_outcome))

    def flush(self) -> None:
        self._call(self.emitter.flush())
