"""The same round trip against Apache Kafka in Docker, where a Docker engine exists."""

from __future__ import annotations

import pytest

from stillflow.kafka import ensure_topics, with_bootstrap
from stillflow.sdk import TraceEmitter
from stillflow.settings import StillflowSettings, TopicNames
from tests.helpers import docker_engine_problem, make_trace, read_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_problem = docker_engine_problem()


@pytest.mark.skipif(_problem is not None, reason=f"testcontainers Kafka needs Docker: {_problem}")
async def test_roundtrip_on_apache_kafka() -> None:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer().with_kraft() as kafka:
        settings = with_bootstrap(StillflowSettings(topics=TopicNames().with_prefix("tc.")),
                                  kafka.get_bootstrap_server())
        await ensure_topics(settings)
        traces = [make_trace(i, 10) for i in range(20)]
        async with TraceEmitter(settings) as em:
            for t in traces:
                await em.emit_trace(t)
        recs = await read_topics(settings, [settings.topics.trace_steps, settings.topics.trace_outcomes],
                                 expected=220, timeout=60)
        assert len(recs) == 220
