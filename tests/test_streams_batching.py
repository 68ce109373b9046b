"""`take_batches` on a stand-in for faust's Stream (the parts it uses), without a broker: batches are at most
`max_`, end when the input pauses for `idle` (not after all of `within`), and events are acked only after
their batch was consumed. The worker's use of it runs through the broker in tests/test_streams_app.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from streams.batching import take_batches


class _Channel:
    def __aiter__(self) -> _Channel:
        return self


class _FakeStream:
    """Feeds values through the added processors as faust's passive drainer does, one event at a time."""

    def __init__(self) -> None:
        self.enable_acks = True
        self.channel = _Channel()
        self._processors: list[Any] = []
        self.current_event: Any = None
        self.should_stop = False
        self.acked: list[int] = []
        self.passive = False

    def add_processor(self, fun: Any) -> None:
        self._processors.append(fun)

    def _enable_passive(self, channel: Any) -> None:
        self.passive = True

    async def wait(self, event: asyncio.Event) -> None:
        await event.wait()

    async def wait_for_stopped(self, event: asyncio.Event, timeout: float | None = None) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return False

    async def ack(self, event: int) -> None:
        self.acked.append(event)

    async def feed(self, values: list[int], every: float = 0.0) -> None:
        for v in values:
            self.current_event = v
            for p in list(self._processors):
                await p(v)
            await asyncio.sleep(every)


async def _collect(stream: _FakeStream, out: list[tuple[float, list[int], list[int]]], **kw: Any) -> None:
    async for batch in take_batches(stream, **kw):
        out.append((time.monotonic(), list(batch), list(stream.acked)))


async def test_batches_are_capped_and_end_when_the_input_pauses() -> None:
    stream = _FakeStream()
    out: list[tuple[float, list[int], list[int]]] = []
    # `within` is long: a batch that waited for it would make this test take 30 s
    consumer = asyncio.ensure_future(_collect(stream, out, max_=10, within=30.0, idle=0.02))
    await asyncio.sleep(0)
    t0 = time.monotonic()
    await stream.feed(list(range(25)))
    while sum(len(b) for _, b, _ in out) < 25:
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - t0
    stream.should_stop = True
    consumer.cancel()
    assert [b for _, b, _ in out] == [list(range(10)), list(range(10, 20)), list(range(20, 25))]
    assert elapsed < 10, f"the last, partial batch waited {elapsed:.1f} s: it should end once the input paused"
    # an event is acked after the batch holding it was consumed, never before
    for i, (_, batch, acked_when_yielded) in enumerate(out):
        assert not set(batch) & set(acked_when_yielded)
        assert all(v in acked_when_yielded for _, earlier, _ in out[:i] for v in earlier)
    await asyncio.sleep(0.05)
    assert stream.acked == list(range(25))
    assert stream.passive


async def test_a_steady_trickle_waits_for_within_not_idle() -> None:
    stream = _FakeStream()
    out: list[tuple[float, list[int], list[int]]] = []
    consumer = asyncio.ensure_future(_collect(stream, out, max_=1000, within=0.3, idle=0.05))
    await asyncio.sleep(0)
    await stream.feed(list(range(30)), every=0.02)  # gaps shorter than idle: one growing batch
    while sum(len(b) for _, b, _ in out) < 30:
        await asyncio.sleep(0.005)
    stream.should_stop = True
    consumer.cancel()
    sizes = [len(b) for _, b, _ in out]
    assert sum(sizes) == 30 and len(sizes) <= 4, sizes  # ~0.6 s of input in batches of up to 0.3 s


async def test_processor_and_acks_are_restored_when_the_consumer_stops() -> None:
    stream = _FakeStream()
    gen = take_batches(stream, 5, 1.0, 0.01)
    task = asyncio.ensure_future(gen.__anext__())
    await asyncio.sleep(0)
    assert stream.enable_acks is False and len(stream._processors) == 1
    await stream.feed([1, 2])
    assert await task == [1, 2]
    await gen.aclose()
    assert stream.enable_acks is True and stream._processors == []
    assert stream.acked == [1, 2]


@pytest.mark.parametrize("args", [(0, 1.0, 0.1), (5, 0.0, 0.1), (5, 1.0, 0.0)])
async def test_bad_arguments_are_refused(args: tuple[int, float, float]) -> None:
    with pytest.raises(ValueError, match="take_batches needs"):
        await take_batches(_FakeStream(), *args).__anext__()


async def test_held_batches_are_acked_by_the_consumer_and_a_pause_is_told_once() -> None:
    stream = _FakeStream()
    got: list[list[int]] = []

    async def consume() -> None:
        async for batch in take_batches(stream, 10, 30.0, 0.02, held=True):
            got.append(list(batch))

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    await stream.feed(list(range(15)))
    await asyncio.sleep(0.3)  # many idle periods: the pause is told once, not per period
    assert got == [list(range(10)), list(range(10, 15)), []]
    assert stream.acked == []  # held: the consumer acks (here: never)
    await stream.feed([99])
    await asyncio.sleep(0.1)
    stream.should_stop = True
    task.cancel()
    assert got[3:] == [[99], []]
