"""Kafka helpers shared by every service: client construction, topic creation, bootstrap resolution.

aiokafka only. Producers are plain at-least-once producers: the embedded broker (tansu) refuses
InitProducerId, so idempotence and transactions stay off and sinks dedupe by event ids instead.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from stillflow.settings import KafkaSettings, StillflowSettings
from stillflow.topics import TopicSpec, catalogue

if TYPE_CHECKING:
    from stillflow.broker import EmbeddedBroker

__all__ = [
    "resolve_bootstrap",
    "with_bootstrap",
    "make_producer",
    "make_consumer",
    "ensure_topics",
    "ensure_named_topics",
    "list_topics",
    "timestamp_ms",
    "read_to_end",
]


def resolve_bootstrap(settings: StillflowSettings) -> str | None:
    """The cluster to use: the setting, else a `stillflow broker` running on this machine, else None."""
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers
    from stillflow.broker import read_state  # local: only the CLI path needs the state file

    return read_state()


def bootstrap_or_embedded(
    settings: StillflowSettings, log_path: Path
) -> tuple[StillflowSettings, EmbeddedBroker | None]:
    """`settings` pointed at the configured cluster (see `resolve_bootstrap`), else at a fresh embedded
    broker, which is returned too: the caller stops it (`stillflow up`, `stillflow demo`)."""
    from stillflow.broker import EmbeddedBroker

    bootstrap = resolve_bootstrap(settings)
    if bootstrap:
        print(f"broker: {bootstrap}", flush=True)
        return with_bootstrap(settings, bootstrap), None
    broker = EmbeddedBroker(log_path=log_path).start()
    print(f"embedded broker on {broker.bootstrap_servers} (memory storage: its data ends with it)", flush=True)
    return with_bootstrap(settings, broker.bootstrap_servers), broker


def with_bootstrap(settings: StillflowSettings, bootstrap: str) -> StillflowSettings:
    """A copy of `settings` pointed at `bootstrap` (settings are frozen)."""
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})
    return settings.model_copy(update={"kafka": kafka})


def timestamp_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def make_producer(kafka: KafkaSettings, **overrides: object) -> AIOKafkaProducer:
    kw: dict[str, object] = {**kafka.client_kwargs(), "acks": "all", "enable_idempotence": False}
    kw.update(overrides)
    return AIOKafkaProducer(**kw)  # type: ignore[arg-type]


def make_consumer(kafka: KafkaSettings, *topics: str, group_id: str | None, **overrides: object) -> AIOKafkaConsumer:
    kw: dict[str, object] = {
        **kafka.client_kwargs(),
        "group_id": group_id,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
    }
    kw.update(overrides)
    return AIOKafkaConsumer(*topics, **kw)  # type: ignore[arg-type]


async def ensure_topics(settings: StillflowSettings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create the catalogue's topics that do not exist yet; return the names created. Idempotent."""
    specs = specs if specs is not None else catalogue(settings.topics, settings.kafka.default_partitions)
    return await ensure_named_topics(settings, {s.name: (s.partitions, s.configs) for s in specs})


async def ensure_named_topics(settings: StillflowSettings, topics: dict[str, tuple[int, dict[str, str]]]) -> list[str]:
    """Create topics given as name -> (partitions, configs) unless they exist. Services create their
    internal topics this way too: a topic first created by a send would get the broker's default count."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs())  # type: ignore[arg-type]
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        created = []
        for name, (partitions, configs) in topics.items():
            if name in existing:
                continue
            topic = NewTopic(name=name, num_partitions=partitions,
                             replication_factor=settings.kafka.replication_factor, topic_configs=configs)
            try:
                await admin.create_topics([topic])
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another service: that is the point of idempotence
        if created:
            await _wait_visible(admin, created)
        return created
    finally:
        await admin.close()


async def _wait_visible(admin: AIOKafkaAdminClient, names: list[str], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if set(names) <= set(await admin.list_topics()):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise KafkaError(f"topics not visible after {timeout}s: {names}")
        await asyncio.sleep(0.1)


async def list_topics(settings: StillflowSettings) -> dict[str, int]:
    """Topic name -> partition count, as the cluster reports it."""
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs())  # type: ignore[arg-type]
    await consumer.start()
    try:
        names = await consumer.topics()
        return {n: len(consumer.partitions_for_topic(n) or ()) for n in sorted(names)}
    finally:
        await consumer.stop()


async def read_to_end(settings: StillflowSettings, topic: str, *, idle_timeout_s: float = 10.0) -> list[bytes]:
    """Every value of `topic` from the beginning up to its end offsets as of the call: a snapshot
    that finishes even while producers keep writing. Gives up after `idle_timeout_s` without a
    record (an offset that never comes, e.g. a compacted gap)."""
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs(), group_id=None,  # type: ignore[arg-type]
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[bytes] = []
        loop = asyncio.get_running_loop()
        last = loop.time()

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            if batch:
                last = loop.time()
            elif loop.time() - last > idle_timeout_s:
                break
            for records in batch.values():
                out.extend(r.value for r in records if r.value is not None)
        return out
    finally:
        await consumer.stop()
