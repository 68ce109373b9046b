"""The promotion gate: is the student good enough to serve?

Exports `GateDecision` and `decide(report, gate)`. Pure: a report (an `EvalReport` or its dict) and
the `GateSection` thresholds in, a decision with every reason out.

Promoted when all hold (thresholds are settings):
- `quality_ratio >= quality_ratio_min` (default 0.90): the student's mean trajectory score over the
  teacher's on the same held-out tasks;
- `failure_rate < failure_rate_max` (default 5%): the share of held-out episodes with a catastrophic
  failure (wrong tool, unsafe action, crash, wrong answer);
- at least `min_eval_tasks` tasks were evaluated.
Otherwise rejected, with a reason per failed check and the worst failing examples named.

Per workload (`decide_workloads`): the same checks on each workload's own held-out tasks (the report's
`workloads` section), at that workload's own calibrated threshold. The version is promoted for the
workloads that pass (the router serves only those with it) and rejected when none passes. A workload
the previous live version served that the new one fails is named in the verdict (a regression: with the
new version live, that workload goes back to the teacher).

`scope="routed"` judges the student as it will serve: behind the router, which sends it only the turns
at or above the version's calibrated confidence threshold and the rest to the teacher. The two figures
are then taken over the held-out tasks at or above the threshold (the report's `routed` section), and
those must be at least `routed_min_coverage` of all tasks. The threshold is chosen on the same held-out
tasks, so these figures lean optimistic; the all-task figures stay in the report beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.settings import GateSection

__all__ = ["GateDecision", "decide", "decide_workloads"]


@dataclass(frozen=True)
class GateDecision:
    status: Literal["promoted", "rejected"]
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    # per workload (`decide_workloads`): each one's decision; `thresholds`: the promoted ones' thresholds
    workloads: dict[str, GateDecision] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    regressions: list[str] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"

    @property
    def verdicts(self) -> dict[str, str]:
        return {w: d.status for w, d in self.workloads.items()}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "reasons": list(self.reasons), "checks": dict(self.checks)}
        if self.workloads:
            out["workloads"] = {w: d.to_dict() for w, d in self.workloads.items()}
            out["promoted_workloads"] = dict(self.thresholds)
            out["regressions"] = list(self.regressions)
        return out


def _get(report: Any, key: str) -> Any:
    return report.get(key) if isinstance(report, dict) else getattr(report, key, None)


def decide(report: Any, gate: GateSection) -> GateDecision:
    """The gate's decision for an evaluation report (see the module docstring)."""
    ratio = _get(report, "quality_ratio")
    failure = _get(report, "failure_rate")
    student = _get(report, "student") or {}
    episodes = student.get("episodes") if student else None
    if episodes is None and (_get(report, "basis") == "offline"):
        episodes = (_get(report, "offline") or {}).get("conversations")
    reasons: list[str] = []
    checks: dict[str, Any] = {"scope": gate.scope}
    if gate.scope == "routed":
        routed = _get(report, "routed") or {}
        ratio, failure = routed.get("quality_ratio"), routed.get("failure_rate")
        coverage = routed.get("coverage") or 0.0
        checks["coverage"] = {"value": coverage, "min": gate.routed_min_coverage,
                              "passed": coverage >= gate.routed_min_coverage}
        if not checks["coverage"]["passed"]:
            reasons.append(f"the router would send the student {coverage:.0%} of held-out tasks "
                           f"(< {gate.routed_min_coverage:.0%}) at threshold {routed.get('threshold')}")
    checks.update({
        "quality_ratio": {"value": ratio, "min": gate.quality_ratio_min},
        "failure_rate": {"value": failure, "max_exclusive": gate.failure_rate_max},
        "eval_tasks": {"value": episodes, "min": gate.min_eval_tasks},
    })
    if ratio is None:
        reasons.append("no quality ratio: the student could not be compared with the teacher")
        checks["quality_ratio"]["passed"] = False
    else:
        ok = ratio >= gate.quality_ratio_min
        checks["quality_ratio"]["passed"] = ok
        if not ok:
            teacher_q = (_get(report, "teacher") or {}).get("quality")
            reasons.append(f"quality_ratio {ratio:.3f} < {gate.quality_ratio_min:.2f} "
                           f"(student {student.get('quality')} vs teacher {teacher_q})")
    if failure is None:
        reasons.append("no catastrophic-failure rate: nothing was evaluated")
        checks["failure_rate"]["passed"] = False
    else:
        ok = failure < gate.failure_rate_max
        checks["failure_rate"]["passed"] = ok
        if not ok:
            kinds = student.get("failures") or (_get(report, "offline") or {}).get("failures") or {}
            parts = ", ".join(f"{k} {v:.1%}" for k, v in kinds.items() if isinstance(v, (int, float)) and v > 0)
            reasons.append(f"catastrophic-failure rate {failure:.1%} >= {gate.failure_rate_max:.1%}"
                           + (f" ({parts})" if parts else ""))
    if episodes is None or episodes < gate.min_eval_tasks:
        checks["eval_tasks"]["passed"] = False
        reasons.append(f"only {episodes or 0} held-out tasks evaluated (< {gate.min_eval_tasks})")
    else:
        checks["eval_tasks"]["passed"] = True
    if reasons:
        worst = _get(report, "worst_failures") or []
        if worst:
            named = "; ".join(
                f"{w.get('task_id')} [{'/'.join(w.get('kinds') or [])}]: answered {str(w.get('answer'))[:60]!r}, "
                f"expected {str(w.get('ground_truth'))[:40]!r}"
                for w in worst[:3]
            )
            reasons.append(f"worst failures: {named}")
        return GateDecision("rejected", reasons, checks)
    return GateDecision("promoted", [], checks)


def decide_workloads(report: Any, gate: GateSection, *, previous: dict[str, float] | None = None,
                     previous_version: str | None = None, previous_serves_all: bool = False) -> GateDecision:
    """The gate per workload (see the module docstring). `previous`: the workloads the live version serves
    (`previous_serves_all`: a version gated before workloads, which serves them all). A report without a
    `workloads` section is decided as a whole (`decide`)."""
    per = _get(report, "workloads") or {}
    if not per:
        return decide(report, gate)
    decisions = {w: decide(sub, gate) for w, sub in sorted(per.items())}
    thresholds: dict[str, float] = {}
    for w, d in decisions.items():
        if d.promoted:
            thr = (per[w].get("confidence") or {}).get("threshold")
            thresholds[w] = float(thr) if thr is not None else 1.0
    served_before = set(per) if previous_serves_all else set(previous or {})
    regressions = sorted(w for w in served_before if w in decisions and not decisions[w].promoted)
    reasons: list[str] = []
    for w in regressions:
        reasons.append(f"regression: {w} was served by {previous_version or 'the live version'} and fails now "
                       f"(it goes back to the teacher): {'; '.join(decisions[w].reasons[:2])}")
    for w, d in decisions.items():
        if not d.promoted and w not in regressions:
            reasons.append(f"{w}: " + "; ".join(d.reasons[:2]))
    status = "promoted" if thresholds else "rejected"
    if status == "rejected":
        reasons.insert(0, f"no workload passed the gate ({len(decisions)} evaluated)")
    checks = {"scope": gate.scope, "workloads": {w: d.checks for w, d in decisions.items()}}
    return GateDecision(status, reasons, checks, decisions, thresholds, regressions)  # type: ignore[arg-type]
