"""The embedded broker: start, answer metadata, pause/resume, stop; clear errors."""

from __future__ import annotations

import asyncio

import pytest

from stillflow.broker import BrokerError, EmbeddedBroker, probe_metadata
from stillflow.contracts import TraceStep
from stillflow.kafka import ensure_topics, list_topics, with_bootstrap
from stillflow.sdk import BackpressureTimeout, TraceEmitter
from stillflow.settings import SDKSettings, StillflowSettings
from stillflow.topics import catalogue

pytestmark = pytest.mark.integration


def test_start_probe_stop() -> None:
    with EmbeddedBroker() as broker:
        host, port = broker.bootstrap_servers.split(":")
        brokers = probe_metadata(host, int(port))
        assert brokers and brokers[0][1:] == (host, int(port))  # advertises the address we connect to
        proc = broker.proc
    assert proc is not None and proc.poll() is not None  # stopped, not orphaned
    with pytest.raises(OSError):
        probe_metadata(host, int(port), timeout=0.5)


def test_explicit_port_in_use_is_a_clear_error() -> None:
    with EmbeddedBroker() as first, pytest.raises(BrokerError, match=f"{first.port} is already in use"):
        EmbeddedBroker(port=first.port, startup_timeout=3).start()


def test_broken_binary_is_a_clear_error() -> None:
    with pytest.raises(BrokerError, match="tansu exited with code 1"):
        EmbeddedBroker(binary="/bin/false", startup_timeout=3).start()


async def test_topics_are_idempotent() -> None:
    with EmbeddedBroker() as broker:
        settings = with_bootstrap(StillflowSettings(), broker.bootstrap_servers)
        created = await ensure_topics(settings)
        assert len(created) == len(catalogue())
        assert await ensure_topics(settings) == []
        topics = await list_topics(settings)
        assert topics["stillflow.trace.steps"] == 3 and topics["stillflow.models.versions"] == 1


async def test_emitter_backpressure_when_broker_hangs() -> None:
    """Broker paused: emit blocks at the in-flight bound and then raises; nothing is dropped silently,
    and once the broker is back every accepted event is delivered."""
    with EmbeddedBroker() as broker:
        settings = with_bootstrap(
            StillflowSettings(sdk=SDKSettings(max_in_flight=40, send_timeout_s=2.0, linger_ms=0)),
            broker.bootstrap_servers,
        )
        await ensure_topics(settings)
        step = TraceStep(step_type="reasoning", content="x")
        async with TraceEmitter(settings) as em:
            await em.emit_step(trace_id="warm", task_id="k", seq=0, step=step)
            await em.flush()
            broker.pause()
            accepted = 0
            try:
                with pytest.raises(BackpressureTimeout, match="40 events in flight"):
                    for seq in range(1000):
                        await em.emit_step(trace_id="t", task_id="k", seq=seq, step=step)
                        accepted += 1
                        assert em.in_flight <= 40
                assert accepted == 40
            finally:
                broker.resume()
            await asyncio.wait_for(em.flush(), 60)
            assert em.sent == 1 + accepted and em.failed == 0
