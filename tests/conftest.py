"""Shared fixtures: one broker per test session, and per-test topic names.

The broker is, in order of preference:
- `STILLFLOW_TEST_BOOTSTRAP=host:port`: an external cluster you run;
- `STILLFLOW_TEST_KAFKA=testcontainers`: Apache Kafka in Docker via testcontainers (skips, with the
  reason, when no Docker engine answers);
- otherwise the embedded tansu broker on a free loopback port.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

from stillflow.kafka import ensure_topics, with_bootstrap
from stillflow.settings import KafkaSettings, StillflowSettings, TopicNames
from tests.helpers import docker_engine_problem

if TYPE_CHECKING:
    from stillflow.broker import EmbeddedBroker

# Counts fuzzed inputs per decoder and prints them in the terminal summary.
pytest_plugins = ["tests.fuzz_counts"]


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    external = os.environ.get("STILLFLOW_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    if os.environ.get("STILLFLOW_TEST_KAFKA") == "testcontainers":
        problem = docker_engine_problem()
        if problem:
            pytest.skip(f"STILLFLOW_TEST_KAFKA=testcontainers but {problem}")
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from stillflow.broker import EmbeddedBroker

    with EmbeddedBroker() as embedded:
        yield embedded.bootstrap_servers


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    """An embedded broker for one test alone (SIGSTOP on the session broker would stall every other test)."""
    from stillflow.broker import EmbeddedBroker

    b = EmbeddedBroker().start()
    try:
        yield b
    finally:
        b.resume()  # never leave a stopped process behind
        b.stop()


@pytest.fixture
def topic_names() -> TopicNames:
    """The whole catalogue under a prefix unique to this test."""
    return TopicNames().with_prefix(f"t{uuid.uuid4().hex[:10]}.")


@pytest.fixture
async def settings(broker: str, topic_names: TopicNames) -> AsyncIterator[StillflowSettings]:
    """Settings pointed at the session broker, with this test's topics created.

    Short session timeouts: every group join on tansu waits half the session timeout.
    """
    base = StillflowSettings(
        kafka=KafkaSettings(session_timeout_ms=6000, heartbeat_interval_ms=1000),
        topics=topic_names,
    )
    s = with_bootstrap(base, broker)
    await ensure_topics(s)
    yield s
