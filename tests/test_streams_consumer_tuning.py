"""`bound_fetch_wait` on stand-ins for a faust app (its assignment signal and consumer) and the real aiokafka
Fetcher attribute it sets; a worker with it runs through the broker in tests/test_streams_app.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import aiokafka.consumer.fetcher as fetcher_mod
import pytest
from mode import Signal

from streams.consumer_tuning import bound_fetch_wait


class _App:  # what bound_fetch_wait touches of a faust.App
    def __init__(self, fetcher: Any) -> None:
        self.consumer = SimpleNamespace(_thread=SimpleNamespace(_consumer=SimpleNamespace(_fetcher=fetcher)))
        self.on_partitions_assigned = Signal().with_default_sender(self)


def _app(fetcher: Any) -> Any:
    return _App(fetcher)


async def test_the_cap_is_set_on_assignment() -> None:
    fetcher = SimpleNamespace(_fetch_max_wait_ms=1500)
    app = _app(fetcher)
    bound_fetch_wait(app, 100)
    assert fetcher._fetch_max_wait_ms == 1500  # nothing before the consumer has partitions
    await app.on_partitions_assigned.send(set())
    assert fetcher._fetch_max_wait_ms == 100
    fetcher._fetch_max_wait_ms = 1500  # e.g. a consumer made afresh
    await app.on_partitions_assigned.send(set())
    assert fetcher._fetch_max_wait_ms == 100


def test_aiokafka_still_reads_the_attribute_per_request() -> None:
    # the cap relies on this private attribute: fail here, not silently in production, when it goes
    with open(fetcher_mod.__file__) as f:
        assert "self._fetch_max_wait_ms" in f.read()


async def test_a_missing_fetcher_is_a_warning_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    app = _app(None)
    bound_fetch_wait(app, 100)
    with caplog.at_level(logging.WARNING, logger="streams.consumer_tuning"):
        await app.on_partitions_assigned.send(set())
    assert "cannot bound the fetch wait" in caplog.text


def test_a_negative_cap_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0 ms"):
        bound_fetch_wait(_app(SimpleNamespace(_fetch_max_wait_ms=1)), -1)
