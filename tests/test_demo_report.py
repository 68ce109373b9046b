"""The demo's report (pure, plus the PNGs): acceptance checks, threshold sweep, report.md / report.json."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from stillflow.contracts import ModelVersionEvent, TrainingRunEvent
from stillflow.demo_ledger import CostModel, Ledger
from stillflow.demo_report import (
    EPISODE_FIELDS,
    acceptance_checks,
    build_report,
    render_markdown,
    threshold_sweep,
    write_plots,
)
from tests.test_demo_ledger import T0, _flywheel_ledger, at, decision, outcome


def phase(index: int, version: str | None, requests: int, student: int, episodes: int, ok: int,
          cost: float | None) -> dict[str, Any]:
    return {"index": index, "label": "teacher-only" if version is None else f"student {version}", "version": version,
            "requests": requests, "student_requests": student, "student_share": student / requests if requests else None,
            "episodes": episodes, "successes": ok, "success_rate": ok / episodes if episodes else None,
            "cost_per_task_usd": cost}


PROMOTED = [{"version": "v0001", "t_s": 58.0}]
# a retrain after the first switch, evaluated before the end (the flywheel turned again)
TURNED: dict[str, Any] = {
    "runs": [{"run_id": "r2", "after_first_live": True, "version": "v0009", "requested_s": 90.0,
              "n_new_examples": 300, "status": "finished"}],
    "versions": [{"version": "v0009", "status": "rejected", "t_s": 300.0, "verdicts": {"lookup": "rejected"}}],
}


def by_name(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in checks}


def test_checks_pass_when_the_student_serves_well_and_cheaply() -> None:
    phases = [phase(0, None, 400, 0, 100, 90, 0.01), phase(1, "v0001", 400, 300, 100, 88, 0.004)]
    c = by_name(acceptance_checks(phases, PROMOTED, **TURNED))
    assert all(x["result"] == "PASS" for x in c.values()), c
    assert c["student_share_last_phase"]["value"] == 0.75
    assert c["task_success_vs_teacher"]["value"] == pytest.approx(0.88 / 0.9, abs=1e-4)
    assert c["cost_per_task_down"]["value"] == pytest.approx(0.4)


def test_checks_fail_on_their_figures() -> None:
    phases = [phase(0, None, 400, 0, 100, 90, 0.01), phase(1, "v0001", 400, 200, 100, 80, 0.012)]
    c = by_name(acceptance_checks(phases, PROMOTED, **TURNED))
    assert c["promoted_workload"]["passed"]
    assert not c["student_share_last_phase"]["passed"]  # 50% < 60%
    assert not c["task_success_vs_teacher"]["passed"]  # 0.80 / 0.90 < 95%
    assert not c["cost_per_task_down"]["passed"]  # dearer
    # the last phase is what counts, not the first student phase
    phases.append(phase(2, "v0002", 300, 240, 80, 78, 0.003))
    c = by_name(acceptance_checks(phases, PROMOTED + [{"version": "v0002", "t_s": 200.0}], **TURNED))
    assert all(x["passed"] for x in c.values())


def test_without_a_student_phase_every_check_fails_and_says_why() -> None:
    c = by_name(acceptance_checks([phase(0, None, 900, 0, 300, 280, 0.01)], []))
    assert [x["result"] for x in c.values()] == ["FAIL"] * 5
    assert c["promoted_workload"]["detail"] == "no version was promoted for any workload"
    assert "no student went live" in c["task_success_vs_teacher"]["detail"]
    assert "no student went live" in c["cost_per_task_down"]["detail"]


def test_too_few_requests_or_episodes_are_not_judged() -> None:
    phases = [phase(0, None, 400, 0, 100, 90, 0.01), phase(1, "v0001", 5, 5, 2, 2, 0.001)]
    c = by_name(acceptance_checks(phases, PROMOTED, **TURNED))
    assert not c["student_share_last_phase"]["passed"] and "too few" in c["student_share_last_phase"]["detail"]
    assert not c["cost_per_task_down"]["passed"] and "too few" in c["cost_per_task_down"]["detail"]
    phases = [phase(0, None, 10, 0, 3, 3, 0.01), phase(1, "v0001", 400, 300, 100, 90, 0.001)]
    c = by_name(acceptance_checks(phases, PROMOTED, **TURNED))
    assert "no baseline" in c["task_success_vs_teacher"]["detail"]


def test_a_last_version_live_just_before_the_stop_leaves_the_student_phase_before_it_to_judge() -> None:
    phases = [phase(0, None, 400, 0, 100, 90, 0.01), phase(1, "v0001", 400, 300, 100, 88, 0.004),
              phase(2, "v0002", 6, 6, 1, 1, 0.001)]
    c = by_name(acceptance_checks(phases, PROMOTED + [{"version": "v0002", "t_s": 200.0}], **TURNED))
    assert all(x["passed"] for x in c.values()), c
    assert c["student_share_last_phase"]["value"] == 0.75  # v0001's phase
    assert "student v0002's phase had only 6 requests and 1 episodes before the demo stopped: student v0001 is judged" in (
        c["cost_per_task_down"]["detail"])
    # with no student phase before it, the short one is judged, and fails as too short
    c = by_name(acceptance_checks([phases[0], phases[2]], PROMOTED))
    assert not c["student_share_last_phase"]["passed"] and "too few" in c["student_share_last_phase"]["detail"]


def test_a_student_phase_the_student_served_nothing_of_proves_nothing_about_success_or_cost() -> None:
    # cheaper and as good, but only because the task mix differed: every answer was the teacher's
    phases = [phase(0, None, 400, 0, 100, 90, 0.01), phase(1, "v0001", 400, 0, 100, 92, 0.009)]
    c = by_name(acceptance_checks(phases, PROMOTED, **TURNED))
    for name in ("student_share_last_phase", "task_success_vs_teacher", "cost_per_task_down"):
        assert c[name]["result"] == "FAIL", c[name]
    assert "served none of the 400 requests" in c["cost_per_task_down"]["detail"]
    assert "$0.00900 per task" in c["cost_per_task_down"]["detail"]  # the figures, though not judged
    assert c["cost_per_task_down"]["value"] is None and c["task_success_vs_teacher"]["value"] is None


def eval_report(with_episodes: bool = True) -> dict[str, Any]:
    rep: dict[str, Any] = {
        "quality_ratio": 0.8, "confidence": {"threshold": 0.7, "coverage": 0.5},
        "student": {"episodes": 4, "success_rate": 0.5, "quality": 0.6, "tokens_per_task": 500.0},
        "teacher": {"episodes": 4, "success_rate": 1.0, "quality": 0.9, "tokens_per_task": 1000.0},
    }
    if with_episodes:
        # confident episodes succeed; unconfident ones fail: a higher threshold buys success with cost
        rep["episodes"] = [
            {"task_id": f"k{i}", "family": "lookup", "confidence": c, "student_correct": c >= 0.7,
             "student_quality": 0.9 if c >= 0.7 else 0.3, "student_failed": c < 0.7, "student_tokens": 500,
             "teacher_correct": True, "teacher_quality": 0.9, "teacher_failed": False, "teacher_tokens": 1000}
            for i, c in enumerate((0.9, 0.8, 0.5, 0.2))
        ]
        rep["routed"] = {"threshold": 0.7, "coverage": 0.5, "quality_ratio": 1.0, "failure_rate": 0.0,
                         "system_quality_ratio": 1.0}
    return rep


def test_threshold_sweep_trades_quality_for_cost() -> None:
    cm = CostModel(teacher_price_per_1k=0.01, student_price_per_1k=0.001)
    sw = threshold_sweep(eval_report(), cm, operating_threshold=0.7)
    assert sw["missing"] == []
    pts = {p["threshold"]: p for p in sw["points"]}
    assert pts[0.0]["coverage"] == 1.0 and pts[0.0]["success_rate"] == 0.5 and pts[0.0]["failure_rate"] == 0.5
    assert pts[0.0]["cost_per_task_usd"] == pytest.approx(0.0005)  # 500 student tokens each
    assert pts[0.7]["coverage"] == 0.5 and pts[0.7]["success_rate"] == 1.0 and pts[0.7]["failure_rate"] == 0
    # 4 x 500 student tokens + 2 escalations x 1000 teacher tokens, over 4 tasks
    assert pts[0.7]["cost_per_task_usd"] == pytest.approx((4 * 0.0005 + 2 * 0.01) / 4)
    top = sw["points"][-1]
    assert top["all_teacher"] and top["coverage"] == 0 and top["success_rate"] == 1.0
    costs = [p["cost_per_task_usd"] for p in sw["points"]]
    assert costs == sorted(costs)  # a higher threshold never costs less
    assert sw["teacher_only"]["cost_per_task_usd"] == pytest.approx(0.01)
    assert sw["student_only"]["cost_per_task_usd"] == pytest.approx(0.0005)


def test_threshold_sweep_without_per_episode_data_names_what_it_needs() -> None:
    sw = threshold_sweep(eval_report(with_episodes=False), CostModel())
    assert sw["points"] == [] and sw["missing"] == [f"episodes[].{f}" for f in EPISODE_FIELDS]
    assert sw["teacher_only"]["success_rate"] == 1.0 and sw["student_only"]["success_rate"] == 0.5
    rep = eval_report()
    del rep["episodes"][1]["teacher_tokens"]  # a student-only evaluation: no teacher to compare with
    assert threshold_sweep(rep, CostModel())["missing"] == ["episodes[].teacher_tokens"]


def _with_versions(ledger: Ledger) -> Ledger:
    ledger.add(TrainingRunEvent(timestamp=at(30), run_id="run-1", status="requested", model_name="student",
                                n_new_examples=150))
    ledger.add(TrainingRunEvent(timestamp=at(55), run_id="run-1", status="finished", model_name="student",
                                version="v0001"))
    ledger.add(ModelVersionEvent(timestamp=at(56), model_name="student", version="v0001", status="promoted",
                                 metrics={"quality_ratio": 0.93, "failure_rate": 0.02}, confidence_threshold=0.7))
    ledger.add(TrainingRunEvent(timestamp=at(85), run_id="run-2", status="started", model_name="student",
                                n_new_examples=150))
    return ledger


def test_report_from_a_flywheel_run(tmp_path: Path) -> None:
    ledger = _with_versions(_flywheel_ledger())
    report = build_report(ledger, t0=T0, end=T0 + 100, cost=CostModel(0.01, 0.0005),
                          eval_reports={"v0001": eval_report()}, stop_reason="the demo's time budget is used up",
                          config={"mode": "test"})
    assert [p["label"] for p in report["phases"]] == ["teacher-only", "student v0001"]
    v = report["versions"][0]
    assert v["live_s"] == 60 and v["switch_seconds"] == 4  # promoted at 56 s, served at 60 s
    assert [r["after_first_live"] for r in report["runs"]] == [False, True]
    assert report["totals"]["requests"] == 80 and report["totals"]["episodes"] == 40
    assert report["sweep"]["version"] == "v0001" and report["sweep"]["operating_threshold"] == 0.7
    checks = by_name(report["checks"])
    assert checks["promoted_workload"]["passed"] and checks["student_share_last_phase"]["passed"]
    steps = {m["step"]: m["done"] for m in report["milestones"]}
    assert steps["router switched live to the student"] and steps["teacher fallbacks feed a second retrain"]
    report["plots"] = write_plots(report, tmp_path)
    md = render_markdown(report)
    assert "| student share of requests in the last phase |" in md and "**PASS**" in md
    assert "after the first promotion, last" in md  # one student phase plays both roles
    assert "| 0.7 | 50.0% | 100.0% | 0.9 | 0.0% |" in md  # the sweep at the calibrated threshold
    assert "system quality ratio 1.0" in md
    for name in report["plots"]:
        assert f"![{name}]({name})" in md
    json.dumps(report)  # report.json


def test_report_of_a_run_where_nothing_was_promoted(tmp_path: Path) -> None:
    ledger = Ledger(since=T0)
    for i in range(30):
        ledger.add(decision(i, f"t{i}", "teacher"))
        ledger.add(outcome(i + 0.5, f"t{i}", True, 1000, 0.01, "teacher:1"))
    ledger.add(ModelVersionEvent(timestamp=at(25), model_name="student", version="v0001", status="rejected",
                                 metrics={"quality_ratio": 0.66}, reasons=["quality_ratio 0.660 < 0.90"]))
    report = build_report(ledger, t0=T0, end=T0 + 40, cost=CostModel(), eval_reports={"v0001": eval_report(False)},
                          stop_reason="no student went live", config={})
    assert [c["result"] for c in report["checks"]] == ["FAIL"] * 5
    promoted = next(m for m in report["milestones"] if m["step"] == "student promoted")
    assert not promoted["done"] and "quality_ratio 0.660 < 0.90" in promoted["detail"]
    assert report["sweep"]["status"] == "rejected" and report["sweep"]["missing"]
    report["plots"] = write_plots(report, tmp_path)
    md = render_markdown(report)
    assert "0 of 5 PASS" in md and "did not happen" in md and "per-task rows" in md


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_are_valid_pngs_even_with_no_data(tmp_path: Path) -> None:
    report = build_report(Ledger(since=T0), t0=T0, end=T0 + 10, cost=CostModel(), eval_reports={},
                          stop_reason="a service failed", config={})
    names = write_plots(report, tmp_path)
    assert names == ["share_quality.png", "quality_cost.png", "gate_rejections.png"]
    for name in names:
        w, h = _png_size(tmp_path / name)
        assert w > 300 and h > 300
    assert report["sweep"] is None and "no version was evaluated" in render_markdown({**report, "plots": names})


def wphase(index: int, version: str | None, per: dict[str, tuple[int, int, int, int]], cost: float) -> dict[str, Any]:
    """A phase with per-workload figures: workload -> (requests, student requests, episodes, successes)."""
    req = sum(v[0] for v in per.values())
    stu = sum(v[1] for v in per.values())
    eps = sum(v[2] for v in per.values())
    ok = sum(v[3] for v in per.values())
    p = phase(index, version, req, stu, eps, ok, cost)
    p["workloads"] = {w: {"requests": r, "student_requests": s, "student_share": s / r if r else None,
                          "episodes": e, "successes": k, "success_rate": k / e if e else None}
                      for w, (r, s, e, k) in per.items()}
    return p


LOOKUP_ONLY = [{"version": "v0001", "t_s": 58.0, "workloads": {"lookup": 0.8}}]


def test_per_workload_checks_judge_the_promoted_workloads_against_their_own_teacher_baseline() -> None:
    teacher = wphase(0, None, {"lookup": (200, 0, 50, 48), "billing": (200, 0, 50, 40)}, 0.01)
    # lookup carries half the requests; the student serves 45% of all (lookup's 90%): within 10 points
    student = wphase(1, "v0001", {"lookup": (200, 180, 50, 47), "billing": (200, 0, 50, 30)}, 0.006)
    c = by_name(acceptance_checks([teacher, student], LOOKUP_ONLY, **TURNED))
    assert c["promoted_workload"]["passed"] and "v0001 at 58 s for lookup" in c["promoted_workload"]["detail"]
    share = c["student_share_last_phase"]
    assert share["passed"] and share["value"] == 0.45 and share["target"].startswith(">= 40% (50% carried")
    # billing fell (30 vs 40 of 50) but the teacher serves it: only lookup is judged, 47/50 vs 48/50
    succ = c["task_success_vs_teacher"]
    assert succ["passed"] and succ["value"] == pytest.approx(0.94 / 0.96, abs=1e-4), succ
    assert "lookup 94.0% of 50 vs 96.0% of 50" in succ["detail"] and "billing" not in succ["detail"]
    assert c["flywheel_turns_again"]["passed"] and "lookup rejected" in c["flywheel_turns_again"]["detail"]
    # a student that serves less than its workloads carry, minus 10 points, fails
    student = wphase(1, "v0001", {"lookup": (200, 70, 50, 47), "billing": (200, 0, 50, 30)}, 0.006)
    assert not by_name(acceptance_checks([teacher, student], LOOKUP_ONLY))["student_share_last_phase"]["passed"]
    # a promoted workload that does worse than 95% of its teacher-only success fails
    student = wphase(1, "v0001", {"lookup": (200, 180, 50, 40), "billing": (200, 0, 50, 40)}, 0.006)
    assert not by_name(acceptance_checks([teacher, student], LOOKUP_ONLY))["task_success_vs_teacher"]["passed"]


def test_the_flywheel_check_needs_a_retrain_after_the_switch_evaluated_before_the_end() -> None:
    teacher = wphase(0, None, {"lookup": (200, 0, 50, 48)}, 0.01)
    student = wphase(1, "v0001", {"lookup": (200, 180, 50, 47)}, 0.006)
    c = by_name(acceptance_checks([teacher, student], LOOKUP_ONLY))
    assert not c["flywheel_turns_again"]["passed"]
    assert c["flywheel_turns_again"]["detail"] == "no retrain was requested after the first student went live"
    running = {"runs": [{**TURNED["runs"][0], "version": None, "status": "started"}], "versions": []}
    c = by_name(acceptance_checks([teacher, student], LOOKUP_ONLY, **running))
    assert not c["flywheel_turns_again"]["passed"] and "not evaluated before the end" in c["flywheel_turns_again"]["detail"]
