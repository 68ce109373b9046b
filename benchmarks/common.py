"""Shared bench plumbing: a broker for the run (embedded unless STILLFLOW_KAFKA__BOOTSTRAP_SERVERS),
and JSON output. Benchmarks compare ratios measured side by side in one run; never absolute times."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from stillflow.contracts import AgentTrace

_embedded_pid: int | None = None


@contextlib.contextmanager
def bench_broker() -> Iterator[str]:
    global _embedded_pid
    external = os.environ.get("STILLFLOW_KAFKA__BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    from stillflow.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        _embedded_pid = broker.proc.pid if broker.proc else None
        try:
            yield broker.bootstrap_servers
        finally:
            _embedded_pid = None


def broker_pid() -> int | None:
    """The embedded broker's process while `bench_broker` runs one (None for an external broker): benches
    report its CPU, since on a small machine the broker competes with the worker for the same cores."""
    return _embedded_pid


def trace_records(traces: Iterable[AgentTrace]) -> list[tuple[str, bytes, bytes, int]]:
    """Exactly the records the SDK sends for `traces`: (topic role, key, value, timestamp ms), in order."""
    from stillflow.contracts import TraceOutcomeEvent, TraceStepEvent, encode
    from stillflow.kafka import timestamp_ms

    out = []
    for t in traces:
        for seq, step in enumerate(t.steps):
            ev = TraceStepEvent(trace_id=t.trace_id, task_id=t.task_id, agent_id=t.agent_id, seq=seq, step=step,
                                timestamp=step.timestamp)
            out.append(("steps", t.trace_id.encode(), encode(ev), timestamp_ms(step.timestamp)))
        oc = TraceOutcomeEvent.from_trace(t)
        out.append(("outcomes", t.trace_id.encode(), encode(oc), timestamp_ms(oc.timestamp)))
    return out


def emit_result(name: str, result: dict[str, Any]) -> None:
    """One JSON object per bench on stdout (progress goes to stderr)."""
    payload = {"bench": name, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, **result}
    print(json.dumps(payload), flush=True)


def quiet_training() -> None:
    """Benches that train: warnings and library logs off (their own progress goes to stderr)."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    for name in ("transformers", "datasets", "trl", "trainer", "peft"):
        logging.getLogger(name).setLevel(logging.WARNING)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc), to tell work from waiting on a shared machine."""
    from pathlib import Path

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds(pid: int) -> float:
    """CPU time of a process's live children (the streams worker's scoring process), summed."""
    from pathlib import Path

    total = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(cpu_seconds(int(k)) for k in kids)
    return total


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
