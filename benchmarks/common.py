"""Shared bench plumbing: a broker for the run (embedded unless STILLFLOW_KAFKA__BOOTSTRAP_SERVERS),
and JSON output. Benchmarks compare ratios measured side by side in one run; never absolute times."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def bench_broker() -> Iterator[str]:
    external = os.environ.get("STILLFLOW_KAFKA__BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    from stillflow.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


def emit_result(name: str, result: dict[str, Any]) -> None:
    """One JSON object per bench on stdout (progress goes to stderr)."""
    payload = {"bench": name, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, **result}
    print(json.dumps(payload), flush=True)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
