"""Bad input: the SDK refuses it with a named field; a consumer dead-letters it and keeps going."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from pydantic import ValidationError

from stillflow.contracts import (
    ContractError,
    DeadLetter,
    Limits,
    TraceStep,
    TraceStepEvent,
    decode,
    encode,
    get_limits,
    set_limits,
)
from stillflow.dlq import DeadLetterSink, TypedConsumer, decode_or_letter
from stillflow.kafka import make_consumer, make_producer
from stillflow.sdk import TraceEmitter
from stillflow.settings import LimitsSettings
from tests.helpers import read_topics


@pytest.fixture
def limits_50k():
    old = get_limits()
    set_limits(Limits(max_step_content_chars=20_000, max_event_bytes=50_000))
    yield
    set_limits(old)


def _step_event(seq: int, content: str = "ok") -> bytes:
    return encode(TraceStepEvent(trace_id="t-1", task_id="k-1", seq=seq,
                                 step=TraceStep(step_type="reasoning", content=content)))


def test_decode_or_letter_is_pure() -> None:
    ev, letter = decode_or_letter(_step_event(0), TraceStepEvent, source_topic="s")
    assert ev is not None and letter is None
    ev, letter = decode_or_letter(b"\x00\x01", TraceStepEvent, source_topic="s", partition=2, offset=9,
                                  key=b"k", service="test")
    assert ev is None and letter is not None
    assert (letter.kind, letter.partition, letter.offset, letter.service) == ("invalid_json", 2, 9, "test")
    assert base64.b64decode(letter.raw_b64) == b"\x00\x01" and base64.b64decode(letter.key_b64) == b"k"
    _, tomb = decode_or_letter(None, TraceStepEvent, source_topic="s")
    assert tomb is not None and tomb.kind == "empty"


@pytest.mark.integration
async def test_sdk_refuses_bad_input_naming_the_field(settings, limits_50k) -> None:
    # The emitter applies the limits of its settings (STILLFLOW_LIMITS__MAX_EVENT_BYTES=50000).
    settings = settings.model_copy(update={"limits": LimitsSettings(max_step_content_chars=20_000,
                                                                    max_event_bytes=50_000)})
    async with TraceEmitter(settings) as em:
        with pytest.raises(ValidationError) as err:
            await em.emit_step(trace_id="t\n1", task_id="k", seq=0, step={"step_type": "output"})
        assert "trace_id" in str(err.value)
        with pytest.raises(ValidationError) as err:
            await em.emit_step(trace_id="t1", task_id="k", seq=0, step={"step_type": "levitate"})
        assert "step_type" in str(err.value)
        with pytest.raises(ContractError, match="oversize"):
            # each step's content is within its limit, but the event with all of them is not
            big = [{"step_type": "reasoning", "content": "x" * 15_000} for _ in range(4)]
            from stillflow.contracts import TraceOutcomeEvent

            await em.emit_outcome(TraceOutcomeEvent(trace_id="t1", task_id="k", n_steps=4, input_text="q",
                                                    steps=big))
        assert em.sent == 0  # nothing half-sent


@pytest.mark.integration
async def test_consumer_dead_letters_four_kinds_and_keeps_consuming(settings, limits_50k) -> None:
    topic = settings.topics.trace_steps
    valid = [_step_event(i) for i in range(3)]
    wrong_step = json.loads(_step_event(7))
    wrong_step["step"]["step_type"] = "teleport"
    bad = [
        b"\x8b\xad\xf0\x0d not json at all",
        json.dumps({"trace_id": "t-1", "message": "I am some other event"}).encode(),
        b'{"pad": "' + b"z" * 60_000 + b'"}',
        json.dumps(wrong_step).encode(),
    ]
    stream = [valid[0], bad[0], bad[1], valid[1], bad[2], bad[3], valid[2]]
    producer = make_producer(settings.kafka, max_request_size=1_048_576)
    await producer.start()
    try:
        for raw in stream:
            await producer.send_and_wait(topic, raw, key=b"t-1", partition=0)
        consumer = make_consumer(settings.kafka, topic, group_id=f"g-{topic}")
        await consumer.start()
        got: list[TraceStepEvent] = []
        sink = DeadLetterSink(producer, settings.topics.dlq)

        async def consume() -> None:
            async for delivered in TypedConsumer(consumer, TraceStepEvent, sink, service="test"):
                got.append(delivered.event)
                if len(got) == 3:
                    return

        try:
            await asyncio.wait_for(consume(), 30)
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
    assert [e.seq for e in got] == [0, 1, 2]  # the valid traffic around the bad records is untouched
    letters = [decode(r.value, DeadLetter) for r in await read_topics(settings, [settings.topics.dlq], expected=4)]
    assert len(letters) == 4
    by_offset = {le.offset: le for le in letters}
    assert sorted(by_offset) == [1, 2, 4, 5]
    assert by_offset[1].kind == "invalid_json"
    assert by_offset[2].kind == "schema" and "Field required" in by_offset[2].reason
    assert by_offset[4].kind == "oversize" and "limit is 50000" in by_offset[4].reason
    assert by_offset[5].kind == "schema" and "step.step_type" in by_offset[5].reason
    assert all(le.source_topic == topic and le.service == "test" and le.partition == 0 for le in letters)
    assert base64.b64decode(by_offset[1].raw_b64) == bad[0]
    assert by_offset[4].raw_b64 == "" and "omitted" in by_offset[4].reason  # too big to copy into the DLQ
    assert sink.counts == {"invalid_json": 1, "schema": 2, "oversize": 1}
