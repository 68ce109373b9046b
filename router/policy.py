"""Routing policy: pure decisions, no I/O (unit-tested without a model, a teacher or a broker).

Exports
- `ExpiringLRU` — a bounded, expiring map (per-trace memory that cannot grow without bound);
- `StickyTraces` — the traces escalated to the teacher, bounded (LRU) and expiring (TTL);
- `canary_bucket(trace_id)` — a stable number in [0, 100) per trace, so a trace stays on one version;
- `Plan` and `RoutingPolicy.plan(...)` — who is asked first: the live student, the canary, or the teacher;
- `Verdict` and `RoutingPolicy.judge(...)` — given the student's turn, who serves it.

The rules, in order: no student loaded → teacher (`no_student`); a trace escalated before → teacher
(`sticky`); shadow mode → the teacher serves and the student runs beside it (`shadow`); otherwise the
student answers first (the canary version for `canary_percent` of the traces, by a hash of the trace id)
and serves when its turn is valid and its confidence is at or above the threshold (`confident`); else the
teacher serves (`below_threshold`, `invalid_output`, `student_error`, `student_busy`) and the trace
becomes sticky, so one agent episode is never half student, half teacher after an escalation.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

__all__ = ["ExpiringLRU", "StickyTraces", "canary_bucket", "Plan", "Verdict", "RoutingPolicy"]

V = TypeVar("V")

Reason = Literal["confident", "below_threshold", "sticky", "no_student", "shadow", "student_error",
                 "invalid_output", "student_busy"]


class ExpiringLRU(Generic[V]):
    """A map of at most `max_size` entries (least recently written dropped first), each expiring `ttl_s`
    after it was written. Bounded memory for per-trace state (sticky traces, the router's trace book)."""

    def __init__(self, max_size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_size = max_size
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def put(self, key: str, value: V) -> None:
        self._items[key] = (self._clock() + self.ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)

    def get(self, key: str) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            del self._items[key]
            return None
        return item[1]

    def pop(self, key: str) -> V | None:
        value = self.get(key)
        self._items.pop(key, None)
        return value

    def __len__(self) -> int:
        return len(self._items)


class StickyTraces:
    """Trace ids that stay with the teacher: at most `max_size`, each for `ttl_s` after its last escalation."""

    def __init__(self, max_size: int = 100_000, ttl_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._map: ExpiringLRU[bool] = ExpiringLRU(max_size, ttl_s, clock)

    def add(self, trace_id: str) -> None:
        self._map.put(trace_id, True)

    def __contains__(self, trace_id: object) -> bool:
        return isinstance(trace_id, str) and self._map.get(trace_id) is not None

    def __len__(self) -> int:
        return len(self._map)


def canary_bucket(trace_id: str) -> float:
    """A stable pseudo-random number in [0, 100) for a trace id (blake2b, not Python's salted hash)."""
    digest = hashlib.blake2b(trace_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 / 100


@dataclass(frozen=True)
class Plan:
    ask_student: bool  # generate a student turn (to serve it, or in shadow)
    canary: bool  # ... with the candidate version
    shadow: bool  # the teacher serves whatever the student says
    reason: Reason | None  # set when the teacher serves without asking the student


@dataclass(frozen=True)
class Verdict:
    serve_student: bool
    reason: Reason


class RoutingPolicy:
    def __init__(self, *, canary_percent: float = 0.0, shadow: bool = False,
                 sticky: StickyTraces | None = None) -> None:
        if not 0 <= canary_percent <= 100:
            raise ValueError("canary_percent must be in [0, 100]")
        self.canary_percent = canary_percent
        self.shadow = shadow
        self.sticky = sticky if sticky is not None else StickyTraces()

    def plan(self, trace_id: str, *, live: bool, candidate: bool) -> Plan:
        """`live` / `candidate`: whether a live / candidate student is loaded."""
        canary = candidate and self.canary_percent > 0 and canary_bucket(trace_id) < self.canary_percent
        if not (live or canary):
            return Plan(False, False, False, "no_student")
        if trace_id in self.sticky:
            return Plan(False, False, False, "sticky")
        if self.shadow:
            return Plan(True, canary, True, "shadow")
        return Plan(True, canary, False, None)

    def judge(self, trace_id: str, *, confidence: float | None, threshold: float,
              failure: Literal["student_error", "invalid_output", "student_busy"] | None = None) -> Verdict:
        """Who serves after the student's turn (not for shadow plans). An escalation makes the trace sticky."""
        if failure is None and confidence is not None and confidence >= threshold:
            return Verdict(True, "confident")
        self.sticky.add(trace_id)
        return Verdict(False, failure or "below_threshold")
