"""`bound_fetch_wait(app, ms)`: cap how long the worker's fetch requests may wait at the broker.

faust builds its aiokafka consumer with `fetch_max_wait_ms=1500`, and that is not a faust setting.
With one broker (so one fetch in flight at a time) it stalls a consumer that is busier than its input:
aiokafka does not fetch for partitions that still hold unconsumed records, and after 0.1 s of that it
sends a fetch for the assigned partitions that hold none, here the idle ones (the expiry topic; trace
partitions already read to their end). The broker parks that request for up to 1.5 s, since those
partitions get no new data, and until it returns, the partitions that do have data wait behind it.
In the ingest bench this showed up as 0.2 to 0.9 s with no events inside rounds of about 1.3 s.
The same cap bounds how long a new record may wait to be fetched on a broker that does not answer a
parked fetch as soon as data comes.

The cap is set on aiokafka's fetcher (a private attribute, read for every fetch request) each time
partitions are assigned, which is after the consumer started. When faust or aiokafka no longer have
it, a warning says so and the consumer keeps faust's value.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["bound_fetch_wait"]

log = logging.getLogger(__name__)


def _fetcher(app: Any) -> Any | None:
    thread = getattr(app.consumer, "_thread", None)
    consumer = getattr(thread, "_consumer", None)
    fetcher = getattr(consumer, "_fetcher", None)
    return fetcher if hasattr(fetcher, "_fetch_max_wait_ms") else None


def bound_fetch_wait(app: Any, ms: int) -> None:
    """From the first assignment on, the app's fetch requests wait at most `ms` at the broker."""
    if ms < 0:
        raise ValueError(f"fetch wait must be >= 0 ms, got {ms}")

    async def on_assigned(sender: Any, assigned: Any = None, **kwargs: Any) -> None:
        fetcher = _fetcher(app)
        if fetcher is None:
            log.warning("cannot bound the fetch wait to %d ms: this faust/aiokafka has no fetcher where expected", ms)
            return
        if fetcher._fetch_max_wait_ms != ms:
            log.info("fetch requests wait at most %d ms at the broker (was %d)", ms, fetcher._fetch_max_wait_ms)
            fetcher._fetch_max_wait_ms = ms

    app.on_partitions_assigned.connect(on_assigned)
