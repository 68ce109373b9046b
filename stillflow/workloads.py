"""Workloads: the named jobs of the agents, and what every service needs to know about them.

Exports
- `resolve_workload(workload, agent_id, template)` — the workload of a trace or request: the one it names,
  else the default of the settings (`workloads.default`, a template over the agent id: `{agent_id}`);
- `WorkloadLabels` — a bounded metric label: the N busiest workloads by name, the rest `other`;
- `wilson_interval(successes, n)` — the 95% Wilson score interval of a rate (per-workload reports).

Pure: no Kafka, no Prometheus (the services wire these into their metrics).
"""

from __future__ import annotations

import math
from collections import Counter

from stillflow.contracts import is_valid_id

__all__ = ["OTHER", "DEFAULT_TEMPLATE", "resolve_workload", "WorkloadLabels", "wilson_interval"]

OTHER = "other"
DEFAULT_TEMPLATE = "{agent_id}"


def resolve_workload(workload: str | None, agent_id: str | None = None, template: str = DEFAULT_TEMPLATE) -> str:
    """The workload a trace or request belongs to: `workload` when it is a valid id, else `template` with
    `{agent_id}` filled in (an agent that does not say its job is taken to do one job). A template that
    renders to no valid id gives "default"."""
    if workload is not None and is_valid_id(workload):
        return workload
    try:
        name = template.format(agent_id=agent_id or "agent")
    except (KeyError, IndexError, ValueError):
        name = template
    return name if is_valid_id(name) else "default"


class WorkloadLabels:
    """The label value of a workload on a metric, at most `max_named` names plus `other`.

    A name is kept by the busiest: the first `max_named` workloads seen get their own label; a workload
    without one that has since seen more events than the least busy named one takes its place (that one
    reads `other` from then on). `pin(names)` names workloads whatever their traffic (the router pins those
    its live version serves). Counts of unnamed workloads are kept for at most `track` names (the rarest
    forgotten first), so memory is bounded whatever the traffic.
    """

    def __init__(self, max_named: int = 8, *, track: int = 1000) -> None:
        if max_named < 0:
            raise ValueError("max_named must be >= 0")
        self.max_named = max_named
        self.track = max(track, max_named)
        self._named: dict[str, int] = {}
        self._pinned: set[str] = set()
        self._others: Counter[str] = Counter()

    def pin(self, names: set[str] | list[str]) -> None:
        names = set(names)
        if names == self._pinned:
            return
        self._pinned = names
        for n in self._pinned:
            self._named.setdefault(n, self._others.pop(n, 0))

    def named(self) -> list[str]:
        return sorted(self._named)

    def label(self, workload: str) -> str:
        """Count one event of `workload` and return its label value."""
        if workload == OTHER:
            return OTHER
        if workload in self._named:
            self._named[workload] += 1
            return workload
        count = self._others[workload] + 1
        self._others[workload] = count
        unpinned = [n for n in self._named if n not in self._pinned]
        if len(unpinned) < self.max_named:
            self._named[workload] = self._others.pop(workload)
            return workload
        least = min(unpinned, key=lambda n: (self._named[n], n)) if unpinned else None
        if least is not None and count > self._named[least]:
            self._others[least] = self._named.pop(least)
            self._named[workload] = self._others.pop(workload)
            return workload
        if len(self._others) > self.track:
            for name, _ in self._others.most_common()[self.track // 2:]:
                del self._others[name]
        return OTHER


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The Wilson score interval (95% by default) of `successes` out of `n`; None when n is 0. Unlike the
    normal approximation it stays inside [0, 1] and is honest at 0/n and n/n (40 of 40 is [0.91, 1])."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
