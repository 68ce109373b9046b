"""Batches of stream events that end as soon as the input pauses.

faust's `Stream.take_events(max_, within)` yields when `max_` events are buffered or `within` seconds
have passed. A backlog's last, partial batch therefore always waits the whole `within` (0.1 s by
default, chosen to spread the assembler's per-batch work), and so does every trace in quiet traffic.
`take_batches` is the same generator with one more way to end a batch: the buffer stopped growing for
`idle` seconds, i.e. everything the consumer had fetched is in. Under load nothing changes (a
buffer that keeps growing runs to `max_` or `within`); at the end of a burst the batch goes at once.

It is `take_events` (faust-streaming 0.15) with that one change, and uses the same stream internals:
a processor fills the buffer from the passively drained channel; events are acked after the batch's
consumer has handled them (at-least-once: the batch's writes are handed to the producer before its
offsets may be committed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from mode.utils.futures import notify

__all__ = ["take_batches"]


async def take_batches(stream: Any, max_: int, within: float, idle: float, *,
                       held: bool = False) -> AsyncIterator[Sequence[Any]]:
    """Yield lists of events: at most `max_`, at most `within` seconds after the last batch was
    consumed, and as soon as no event came for `idle` seconds (with at least one buffered).

    `held`: the consumer acks the events itself (`stream.ack(event)`), e.g. once a batch's results
    are out, which may be after later batches were yielded; and once the input pauses after a
    batch, an empty list is yielded (once), so that a consumer holding a batch can finish it."""
    if max_ < 1 or within <= 0 or idle <= 0:
        raise ValueError(f"take_batches needs max_ >= 1, within > 0 and idle > 0 (got {max_}, {within}, {idle})")
    loop = asyncio.get_running_loop()
    events: list[Any] = []
    buffer_full = asyncio.Event()
    got_event = asyncio.Event()  # set by each buffered event, cleared with the buffer
    buffer_consumed = asyncio.Event()
    buffer_consuming: asyncio.Future[Any] | None = None
    enable_acks = stream.enable_acks
    channel_it = stream.channel.__aiter__()

    async def add_to_buffer(value: Any) -> Any:
        nonlocal buffer_consuming
        try:
            if buffer_consuming is not None:  # the consumer is handling a batch: hold this event back
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found no current event")
            events.append(event)
            got_event.set()
            if len(events) >= max_:
                buffer_full.set()
                buffer_consumed.clear()
                await stream.wait(buffer_consumed)  # never more than max_ in a batch
        except asyncio.CancelledError:  # pragma: no cover - the worker is stopping
            raise
        except Exception as exc:  # pragma: no cover - as in faust: a broken buffer crashes the stream
            stream.log.exception("Error adding to batch buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # acked here, after the batch was consumed
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    paused_told = True  # nothing held before the first batch
    try:
        while not stream.should_stop:
            deadline = loop.time() + within
            while not stream.should_stop:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                seen = len(events)
                if events or (held and not paused_told):
                    await stream.wait_for_stopped(buffer_full, timeout=min(idle, remaining))
                else:  # nothing buffered or to tell: one wake-up per `within`, or at the first event
                    await stream.wait_for_stopped(got_event, timeout=remaining)
                if buffer_full.is_set() or (events and len(events) == seen):
                    break  # full, or the input paused with something buffered
                if held and not events and not paused_told:
                    break  # the input paused after a batch: say so
            if not events:
                if held and not paused_told and not stream.should_stop:
                    paused_told = True
                    yield []
                continue
            paused_told = False
            buffer_consuming = loop.create_future()
            try:
                yield list(events)
            finally:
                batch = list(events)
                events.clear()
                got_event.clear()
                if not held:
                    for event in batch:
                        await stream.ack(event)
                notify(buffer_consuming)
                buffer_full.clear()
                buffer_consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)
