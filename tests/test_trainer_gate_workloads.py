"""The gate per workload (pure): promoted for the workloads that pass, each at its own threshold; rejected
when none passes; a workload the live version served and the new one fails is named; the per-workload
figures come with Wilson intervals."""

from __future__ import annotations

from typing import Any

from stillflow.contracts import AgentTrace
from stillflow.quality import DIMENSIONS
from trainer.evaluate import ScoredEpisode, workload_report
from trainer.gate import decide_workloads
from trainer.settings import GateSection


def _episode(i: int, *, overall: float, failed: bool, confidence: float, workload: str) -> ScoredEpisode:
    trace = AgentTrace(task_id=f"{workload}-{i}", input_text="q", final_output="a", ground_truth="a",
                       success=not failed, workload=workload)
    dims = dict.fromkeys(DIMENSIONS, overall)
    ep = ScoredEpisode(trace, overall, dims, not failed, not failed, [], ["wrong_answer"] if failed else [])
    ep.confidence = confidence
    return ep


def _workload(name: str, n: int, failures: int, quality: float = 0.9) -> tuple[list[ScoredEpisode], list[ScoredEpisode]]:
    students = [_episode(i, overall=quality if i >= failures else 0.2, failed=i < failures,
                         confidence=0.5 if i < failures else 0.9, workload=name) for i in range(n)]
    teachers = [_episode(i, overall=0.9, failed=False, confidence=1.0, workload=name) for i in range(n)]
    return students, teachers


def _report(**per: tuple[int, int]) -> dict[str, Any]:
    gate = GateSection()
    return {"workloads": {w: workload_report(*_workload(w, n, f), gate) for w, (n, f) in per.items()}}


def test_workload_report_has_the_gate_figures_and_wilson_intervals() -> None:
    sub = _report(lookup=(40, 0))["workloads"]["lookup"]
    assert sub["quality_ratio"] == 1.0 and sub["failure_rate"] == 0.0 and sub["student"]["episodes"] == 40
    assert sub["student_success"]["count"] == 40 and sub["student_success"]["ci95"] == [0.9124, 1.0]
    assert sub["student_failures"]["ci95"][0] == 0.0 and 0.08 < sub["student_failures"]["ci95"][1] < 0.09
    # its own threshold: the lowest confidence at which it is as good as the teacher
    assert sub["confidence"]["qualified"] and sub["confidence"]["threshold"] == 0.9


def test_promoted_for_the_workloads_that_pass_each_at_its_threshold() -> None:
    # lookup: 40 of 40; compare: 10 failures of 40 (at low confidence); billing: 25 of 40 fail
    report = _report(lookup=(40, 0), compare=(40, 10), billing=(40, 25))
    d = decide_workloads(report, GateSection())
    assert d.status == "promoted" and d.thresholds == {"lookup": 0.9}
    assert d.verdicts == {"billing": "rejected", "compare": "rejected", "lookup": "promoted"}
    assert any(r.startswith("compare: ") and "catastrophic-failure rate 25.0%" in r for r in d.reasons), d.reasons
    # behind the router (scope routed) compare's failures sit below its threshold: it passes too
    routed = decide_workloads(report, GateSection(scope="routed"))
    assert routed.thresholds == {"compare": 0.9, "lookup": 0.9}
    # billing: at its threshold the router would send the student 15 of 40 (< the 50% coverage it needs)
    assert routed.verdicts["billing"] == "rejected"
    assert any(r.startswith("billing: the router would send the student 38%") for r in routed.reasons), routed.reasons
    out = d.to_dict()
    assert out["promoted_workloads"] == {"lookup": 0.9} and out["workloads"]["billing"]["status"] == "rejected"


def test_rejected_when_no_workload_passes() -> None:
    d = decide_workloads(_report(compare=(40, 10), billing=(40, 20)), GateSection())
    assert d.status == "rejected" and d.thresholds == {}
    assert d.reasons[0] == "no workload passed the gate (2 evaluated)"


def test_a_workload_the_live_version_served_and_the_new_one_fails_is_named() -> None:
    report = _report(lookup=(40, 0), compare=(40, 10))
    d = decide_workloads(report, GateSection(), previous={"compare": 0.8}, previous_version="v0001")
    assert d.status == "promoted" and d.regressions == ["compare"]
    assert d.reasons[0].startswith("regression: compare was served by v0001 and fails now")
    # a version gated before workloads served them all
    d = decide_workloads(report, GateSection(), previous_serves_all=True, previous_version="v0001")
    assert d.regressions == ["compare"]


def test_too_few_tasks_of_a_workload_rejects_it() -> None:
    d = decide_workloads(_report(lookup=(40, 0), rare=(4, 0)), GateSection())
    assert d.verdicts == {"lookup": "promoted", "rare": "rejected"}
    assert any("rare: only 4 held-out tasks evaluated (< 10)" in r for r in d.reasons), d.reasons


def test_a_report_without_workloads_is_decided_as_a_whole() -> None:
    report = {"quality_ratio": 0.95, "failure_rate": 0.0, "student": {"episodes": 30}, "teacher": {}}
    d = decide_workloads(report, GateSection())
    assert d.promoted and d.workloads == {} and "workloads" not in d.to_dict()
