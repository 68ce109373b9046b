"""Dead letters: decode-or-dead-letter for every consumer, and the sink that publishes the letters.

`decode_or_letter` is pure (no I/O) so faust agents, aiokafka consumers and tests share it;
`DeadLetterSink` publishes with any aiokafka producer; `TypedConsumer` is the consumer-side helper:
an async iterator of valid events that dead-letters the rest and keeps going.
"""

from __future__ import annotations

import base64
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from pydantic import BaseModel

from stillflow.contracts import ContractError, DeadLetter, decode, encode
from stillflow.kafka import timestamp_ms

__all__ = ["make_dead_letter", "decode_or_letter", "encode_letter", "DeadLetterSink", "TypedConsumer", "Delivered"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

# A reason is for people; cap it so that a hostile record cannot make the DLQ record oversize.
_MAX_REASON = 2000


def make_dead_letter(
    raw: bytes | None,
    *,
    source_topic: str,
    reason: str,
    kind: str,
    partition: int | None = None,
    offset: int | None = None,
    key: bytes | None = None,
    service: str = "unknown",
) -> DeadLetter:
    data = raw or b""
    return DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key_b64=base64.b64encode(key).decode() if key is not None else None,
        raw_b64=base64.b64encode(data).decode(),
        raw_size=len(data),
        reason=reason[:_MAX_REASON],
        kind=kind,
        service=service,
    )


def decode_or_letter(
    raw: bytes | None,
    model: type[M],
    *,
    source_topic: str,
    partition: int | None = None,
    offset: int | None = None,
    key: bytes | None = None,
    service: str = "unknown",
) -> tuple[M | None, DeadLetter | None]:
    """Exactly one of the pair is set: the valid event, or the dead letter that says why not."""
    if raw is None:
        letter = make_dead_letter(
            None, source_topic=source_topic, reason="empty record (tombstone)", kind="empty",
            partition=partition, offset=offset, key=key, service=service,
        )
        return None, letter
    try:
        return decode(raw, model), None
    except ContractError as exc:
        letter = make_dead_letter(
            raw, source_topic=source_topic, reason=exc.message, kind=exc.kind,
            partition=partition, offset=offset, key=key, service=service,
        )
        return None, letter


def encode_letter(letter: DeadLetter) -> bytes:
    """The letter's bytes; an oversize original keeps its reason and origin but not its bytes."""
    try:
        return encode(letter)
    except ContractError:
        # An oversize original makes an oversize letter: keep the reason and where it came from,
        # drop the copy of the bytes (the offset still points at them while retention lasts).
        slim = letter.model_copy(update={"raw_b64": "", "reason": letter.reason + " [raw bytes omitted: too large]"})
        return encode(slim)


class DeadLetterSink:
    """Publishes dead letters to the DLQ topic (keyed by the original key) and counts them by kind."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.counts: Counter[str] = Counter()

    async def send(self, letter: DeadLetter) -> None:
        key = base64.b64decode(letter.key_b64) if letter.key_b64 else None
        await self.producer.send_and_wait(
            self.topic, encode_letter(letter), key=key, timestamp_ms=timestamp_ms(letter.timestamp)
        )
        self.counts[letter.kind] += 1
        log.warning(
            "dead-lettered %s[%s]@%s (%s): %s",
            letter.source_topic, letter.partition, letter.offset, letter.kind, letter.reason[:200],
        )


@dataclass(frozen=True)
class Delivered(Generic[M]):
    event: M
    record: ConsumerRecord[Any, Any]


class TypedConsumer(Generic[M]):
    """Iterate valid events of one model from a started consumer; invalid records go to the DLQ.

    The iterator never raises for bad input; commit offsets yourself (the consumer is yours).
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        model: type[M] | dict[str, type[BaseModel]],
        sink: DeadLetterSink,
        *,
        service: str = "unknown",
    ) -> None:
        self.consumer = consumer
        self.models = model
        self.sink = sink
        self.service = service

    def _model(self, topic: str) -> type[BaseModel]:
        if isinstance(self.models, dict):
            return self.models[topic]
        return self.models

    async def handle(self, record: ConsumerRecord[Any, Any]) -> BaseModel | None:
        event, letter = decode_or_letter(
            record.value, self._model(record.topic), source_topic=record.topic, partition=record.partition,
            offset=record.offset, key=record.key, service=self.service,
        )
        if letter is not None:
            await self.sink.send(letter)
        return event

    def __aiter__(self) -> AsyncIterator[Delivered[M]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivered[M]]:
        async for record in self.consumer:
            event = await self.handle(record)
            if event is not None:
                yield Delivered(event, record)  # type: ignore[arg-type]
