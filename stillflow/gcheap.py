"""`freeze_startup_heap()`: move everything a service allocated while starting into the permanent GC
generation (`gc.freeze`).

A full (generation 2) collection scans every tracked object; after the imports of a service (FastAPI,
pydantic models, faust, aiokafka; torch when a student is loaded) that is tens of thousands of objects
and about 35 ms on these 2-core machines: a stall of the event loop that showed up as the router's p99.
What exists at the end of startup lives as long as the process anyway, so it need not be scanned again;
collections then only walk what requests and events allocate.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> int:
    """Collect once, then freeze what is left; returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
