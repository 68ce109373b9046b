"""What `stillflow demo` saw on the topics, and the phases it reads from it (pure: no Kafka, no clock).

Exports `Ledger` (events in, deduplicated compact records out), `CostModel`, `Phase`, `segment_phases`,
`PhaseStats`, `phase_stats`, `timeline` and `parse_served_by` (`CostModel` and `parse_served_by` live in
`stillflow.costs`, which `stillflow advise` shares, and are re-exported here).

Sources, one topic each:
- `RouteDecision` (`stillflow.router.decisions`): who served each request (a student version, `teacher`
  or `none`), with the student version the router consulted; one per request;
- `TraceOutcomeEvent` (`stillflow.trace.outcomes`, published by the router from the fleet's report):
  one per episode: success, tokens of both models, the teacher's reported cost, turns per server;
- `ScoredTrace` (`stillflow.traces.scored`): the gate verdict of each trace (which gates rejected it);
- `ModelVersionEvent`, `TrainingRunEvent`, `DatasetWindowClosed`: promotions, retrains, data.

Phases are read from the decisions, not from the version events: a phase starts where the router
actually served with a new live version (the first decision that consulted it), so the time between
a `promoted` event and the live switch is measured, not assumed. Requests that were in flight across
a switch finish on the model they started with and their decisions can land just after the switch:
a decision that names the previous phase's version within `settle_s` of the switch is such a
straggler and does not switch back (a real rollback, later, does).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stillflow.contracts import (
    DatasetWindowClosed,
    ModelVersionEvent,
    RouteDecision,
    ScoredTrace,
    TraceOutcomeEvent,
    TrainingRunEvent,
)
from stillflow.costs import NOBODY, TEACHER, CostModel, parse_served_by
from stillflow.costs import student_turns as _student_turns  # noqa: F401 (the name it had here)

__all__ = [
    "TEACHER",
    "NOBODY",
    "Decision",
    "Outcome",
    "Scored",
    "VersionChange",
    "RunChange",
    "Ledger",
    "CostModel",
    "Phase",
    "segment_phases",
    "PhaseStats",
    "phase_stats",
    "timeline",
    "parse_served_by",
]

@dataclass(frozen=True)
class Decision:
    ts: float
    trace_id: str
    served_by: str
    student_version: str | None
    canary: bool
    reason: str
    workload: str = "default"

    @property
    def by_student(self) -> bool:
        return self.served_by not in (TEACHER, NOBODY)


@dataclass(frozen=True)
class Outcome:
    ts: float
    trace_id: str
    success: bool
    total_tokens: int
    cost_usd: float  # what the teacher reported for its turns (the student reports none)
    served_by: dict[str, int]
    workload: str = "default"


@dataclass(frozen=True)
class Scored:
    ts: float
    trace_id: str
    passed: bool
    rejected_by: tuple[str, ...]
    served_by: dict[str, int]


@dataclass(frozen=True)
class VersionChange:
    ts: float
    version: str
    status: str
    reasons: tuple[str, ...]
    metrics: dict[str, float]
    threshold: float | None
    workloads: dict[str, float] = field(default_factory=dict)  # promoted: the workloads it serves
    verdicts: dict[str, str] = field(default_factory=dict)  # the gate's verdict per workload


@dataclass(frozen=True)
class RunChange:
    ts: float
    run_id: str
    status: str
    n_new_examples: int
    version: str | None
    error: str | None
    metrics: dict[str, float]


class Ledger:
    """The demo's record of events at or after `since` (epoch seconds), each counted once."""

    def __init__(self, since: float = 0.0) -> None:
        self.since = since
        self.decisions: list[Decision] = []
        self.outcomes: dict[str, Outcome] = {}
        self.scored: dict[str, Scored] = {}
        self.versions: list[VersionChange] = []
        self.runs: list[RunChange] = []
        self.windows: dict[str, DatasetWindowClosed] = {}
        self._event_ids: set[str] = set()
        self._first_decision: dict[str, float] = {}
        self.requests = 0
        self.student_requests = 0
        self.last_ts = since

    def add(self, event: Any) -> bool:
        """Take one decoded event; False when it is older than `since`, a duplicate or of no interest."""
        ts = event.timestamp.timestamp()
        if ts < self.since or event.event_id in self._event_ids:
            return False
        if isinstance(event, RouteDecision):
            d = Decision(ts, event.trace_id, event.served_by, event.student_version, event.canary, event.reason,
                         event.workload or "default")
            self.decisions.append(d)
            self.requests += 1
            self.student_requests += d.by_student
            first = self._first_decision.get(d.trace_id)
            if first is None or ts < first:
                self._first_decision[d.trace_id] = ts
        elif isinstance(event, TraceOutcomeEvent):
            if event.trace_id in self.outcomes:
                return False
            self.outcomes[event.trace_id] = Outcome(ts, event.trace_id, event.success, event.total_tokens,
                                                    event.cost_usd, parse_served_by(event.metadata.get("served_by")),
                                                    event.workload or "default")
        elif isinstance(event, ScoredTrace):
            t = event.trace
            if t.trace_id in self.scored:
                return False
            self.scored[t.trace_id] = Scored(ts, t.trace_id, event.passed, tuple(event.rejected_by),
                                             parse_served_by(t.metadata.get("served_by")))
        elif isinstance(event, ModelVersionEvent):
            self.versions.append(VersionChange(ts, event.version, event.status, tuple(event.reasons),
                                               dict(event.metrics), event.confidence_threshold,
                                               dict(event.workloads), dict(event.workload_verdicts)))
        elif isinstance(event, TrainingRunEvent):
            self.runs.append(RunChange(ts, event.run_id, event.status, event.n_new_examples, event.version,
                                       event.error, dict(event.metrics)))
        elif isinstance(event, DatasetWindowClosed):
            self.windows[event.window_id] = event
        else:
            return False
        self._event_ids.add(event.event_id)
        self.last_ts = max(self.last_ts, ts)
        return True

    def first_decision(self, trace_id: str) -> float | None:
        return self._first_decision.get(trace_id)

    @property
    def sft_examples(self) -> int:
        return sum(w.n_sft for w in self.windows.values())

    def promotions(self) -> list[VersionChange]:
        return sorted((v for v in self.versions if v.status == "promoted"), key=lambda v: v.ts)

    def run_states(self) -> dict[str, RunChange]:
        """The latest event of each run."""
        out: dict[str, RunChange] = {}
        for r in sorted(self.runs, key=lambda r: r.ts):
            out[r.run_id] = r
        return out

    def runs_in_progress(self) -> list[RunChange]:
        return [r for r in self.run_states().values() if r.status in ("requested", "started")]


# --------------------------------------------------------------------------- phases


@dataclass
class Phase:
    index: int
    version: str | None  # the live student version; None: teacher only
    start: float
    end: float | None = None  # None: open (until the end of the run)

    @property
    def label(self) -> str:
        return "teacher-only" if self.version is None else f"student {self.version}"


_UNCHANGED = object()


def _live_state(d: Decision) -> Any:
    if d.student_version and not d.canary:
        return d.student_version
    if d.reason == "no_student":
        return None
    return _UNCHANGED  # sticky traces, canary skips: say nothing about what is live


def segment_phases(decisions: list[Decision], start: float, *, settle_s: float = 5.0) -> list[Phase]:
    """Phases by the router's live version (see the module docstring); the first is teacher-only from `start`."""
    phases = [Phase(0, None, start)]
    for d in sorted(decisions, key=lambda d: d.ts):
        state = _live_state(d)
        cur = phases[-1]
        if state is _UNCHANGED or state == cur.version:
            continue
        if len(phases) >= 2 and state == phases[-2].version and d.ts - cur.start < settle_s:
            continue  # a request that started before the switch, finished after it
        cur.end = d.ts
        phases.append(Phase(len(phases), state, d.ts))
    return phases


def _phase_index(starts: list[float], ts: float) -> int:
    return max(0, bisect.bisect_right(starts, ts) - 1)


@dataclass
class PhaseStats:
    phase: Phase
    requests: int = 0
    student_requests: int = 0
    failed_requests: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    episodes: int = 0
    successes: int = 0
    teacher_tokens: int = 0
    student_tokens: int = 0
    cost_usd: float = 0.0
    scored: int = 0
    passed: int = 0
    passed_from_teacher: int = 0  # training examples from traces the teacher served (fallbacks, once a student is live)
    gate_rejections: Counter[str] = field(default_factory=Counter)
    by_workload: dict[str, PhaseStats] = field(default_factory=dict)  # the same figures per workload

    def of(self, workload: str) -> PhaseStats:
        sub = self.by_workload.get(workload)
        if sub is None:
            sub = self.by_workload[workload] = PhaseStats(self.phase)
        return sub

    @property
    def student_share(self) -> float | None:
        return self.student_requests / self.requests if self.requests else None

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.episodes if self.episodes else None

    @property
    def cost_per_task(self) -> float | None:
        return self.cost_usd / self.episodes if self.episodes else None

    def to_dict(self, t0: float, end: float) -> dict[str, Any]:
        p = self.phase
        stop = p.end if p.end is not None else end
        return {
            "index": p.index,
            "label": p.label,
            "version": p.version,
            "start_s": round(p.start - t0, 1),
            "end_s": round(stop - t0, 1),
            "seconds": round(max(0.0, stop - p.start), 1),
            "requests": self.requests,
            "student_requests": self.student_requests,
            "failed_requests": self.failed_requests,
            "student_share": _r(self.student_share),
            "reasons": dict(self.reasons.most_common()),
            "episodes": self.episodes,
            "successes": self.successes,
            "success_rate": _r(self.success_rate),
            "teacher_tokens": self.teacher_tokens,
            "student_tokens": self.student_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "cost_per_task_usd": _r(self.cost_per_task, 6),
            "scored": self.scored,
            "passed": self.passed,
            "passed_from_teacher": self.passed_from_teacher,
            "gate_rejections": dict(self.gate_rejections.most_common()),
            **({"workloads": {w: sub.workload_dict() for w, sub in sorted(self.by_workload.items())}}
               if self.by_workload else {}),
        }

    def workload_dict(self) -> dict[str, Any]:
        """The per-workload figures of a phase (requests, share, episodes, success, cost)."""
        return {"requests": self.requests, "student_requests": self.student_requests,
                "student_share": _r(self.student_share), "episodes": self.episodes, "successes": self.successes,
                "success_rate": _r(self.success_rate), "cost_usd": round(self.cost_usd, 6),
                "cost_per_task_usd": _r(self.cost_per_task, 6)}


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def phase_stats(ledger: Ledger, phases: list[Phase], cost: CostModel) -> list[PhaseStats]:
    """Per phase: requests by decision time; episodes, cost and gate verdicts by the time of the
    episode's first request (an episode belongs to the phase it started in; when the router's
    decisions for it were not seen, the time of its outcome)."""
    stats = [PhaseStats(p) for p in phases]
    starts = [p.start for p in phases]
    for d in ledger.decisions:
        phase = stats[_phase_index(starts, d.ts)]
        for s in (phase, phase.of(d.workload)):
            s.requests += 1
            s.student_requests += d.by_student
            s.failed_requests += d.served_by == NOBODY
            s.reasons[d.reason] += 1
    for o in ledger.outcomes.values():
        first = ledger.first_decision(o.trace_id)
        phase = stats[_phase_index(starts, first if first is not None else o.ts)]
        t, st = cost.split_tokens(o)
        for s in (phase, phase.of(o.workload)):
            s.episodes += 1
            s.successes += o.success
            s.teacher_tokens += t
            s.student_tokens += st
            s.cost_usd += cost.cost(t, st)
    for sc in ledger.scored.values():
        first = ledger.first_decision(sc.trace_id)
        s = stats[_phase_index(starts, first if first is not None else sc.ts)]
        s.scored += 1
        s.passed += sc.passed
        if sc.passed and s.phase.version is not None and sc.served_by.get(TEACHER, 0) > 0:
            s.passed_from_teacher += 1
        s.gate_rejections.update(sc.rejected_by)
    return stats


def timeline(ledger: Ledger, start: float, end: float, bin_s: float) -> list[dict[str, Any]]:
    """Per time bin from `start`: requests and the student's share of them (by decision time), episodes
    ended and their success rate (by outcome time)."""
    if bin_s <= 0:
        raise ValueError("bin_s must be > 0")
    n = max(1, int((end - start) // bin_s) + 1)
    bins = [{"t_s": round(i * bin_s, 1), "requests": 0, "student_requests": 0, "episodes": 0, "successes": 0}
            for i in range(n)]

    def slot(ts: float) -> dict[str, Any] | None:
        i = int((ts - start) // bin_s)
        return bins[i] if 0 <= i < n else None

    for d in ledger.decisions:
        b = slot(d.ts)
        if b is not None:
            b["requests"] += 1
            b["student_requests"] += d.by_student
            w = b.setdefault("workloads", {}).setdefault(d.workload, [0, 0])  # [requests, student requests]
            w[0] += 1
            w[1] += d.by_student
    for o in ledger.outcomes.values():
        b = slot(o.ts)
        if b is not None:
            b["episodes"] += 1
            b["successes"] += o.success
    for b in bins:
        b["student_share"] = _r(b["student_requests"] / b["requests"]) if b["requests"] else None
        b["success_rate"] = _r(b["successes"] / b["episodes"]) if b["episodes"] else None
    return bins
