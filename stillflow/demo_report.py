"""The report of `stillflow demo`: figures per phase, the issue's acceptance checks, the threshold sweep,
`report.md` / `report.json` and the PNG plots.

Exports `build_report(...)`, `acceptance_checks(...)`, `milestones(...)`, `threshold_sweep(...)`,
`EPISODE_FIELDS`, `render_markdown(report)` and `write_plots(report, out_dir)`. Everything but
`write_plots` is pure (dicts in, dicts and text out); `write_plots` uses matplotlib's Agg backend.

Nothing here is asserted: every figure and every PASS/FAIL is computed from the events the demo
recorded (`stillflow.demo_ledger.Ledger`) and the registry's evaluation reports; a check that cannot
be computed (no student phase, too few requests) is a FAIL that says why.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from stillflow.demo_ledger import CostModel, Ledger, phase_stats, segment_phases, timeline

__all__ = [
    "SHARE_MIN",
    "SUCCESS_RATIO_MIN",
    "EPISODE_FIELDS",
    "acceptance_checks",
    "milestones",
    "threshold_sweep",
    "build_report",
    "render_markdown",
    "write_plots",
]

SHARE_MIN = 0.60  # (versions gated before workloads) student share of requests in the last phase
SHARE_SLACK = 0.10  # the student's share may fall this far below the share its promoted workloads carry
SUCCESS_RATIO_MIN = 0.95  # task success of served answers vs the teacher-only phase
MIN_REQUESTS = 20  # fewer requests in a phase: too few to judge it
MIN_EPISODES = 10

# Per held-out task, what a threshold sweep needs from `eval_report.json`'s `episodes` rows (written by
# `trainer.evaluate.episode_rows`).
EPISODE_FIELDS = (
    "task_id",
    "confidence",  # the student's episode confidence (min over its turns), as the router judges it
    "student_correct",
    "student_quality",  # overall trajectory score
    "student_failed",  # a catastrophic failure
    "student_tokens",
    "teacher_correct",
    "teacher_quality",
    "teacher_failed",
    "teacher_tokens",
)


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _fmt_usd(x: float | None) -> str:
    return "n/a" if x is None else f"${x:.5f}"


# --------------------------------------------------------------------------- acceptance


def _check(name: str, description: str, target: str, value: Any, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "description": description, "target": target, "value": value, "passed": bool(passed),
            "result": "PASS" if passed else "FAIL", "detail": detail}


def _served_workloads(v: dict[str, Any] | None) -> set[str] | None:
    """The workloads a promoted version serves (None: a version gated before workloads serves them all)."""
    if v is None:
        return set()
    w = v.get("workloads")
    return set(w) if w else None


def acceptance_checks(phases: list[dict[str, Any]], promoted: list[dict[str, Any]], *,
                      runs: list[dict[str, Any]] | None = None, versions: list[dict[str, Any]] | None = None,
                      min_requests: int = MIN_REQUESTS, min_episodes: int = MIN_EPISODES) -> list[dict[str, Any]]:
    """The issue's checks: a workload promoted; the student's share of requests in the last phase against
    the share its promoted workloads carry; each promoted workload's task success against its teacher-only
    success; cost per task down; the flywheel turns again (a retrain fed by the first student's fallbacks
    evaluated before the end, with its verdict per workload)."""
    checks = []
    served_by_any: set[str] = set()
    serves_all = False
    for v in promoted:
        w = _served_workloads(v)
        if w is None:
            serves_all = True
        else:
            served_by_any |= w
    n_promoted = len(served_by_any) if not serves_all else max(1, len(served_by_any))
    names = "; ".join(f"{v['version']} at {v['t_s']:.0f} s for "
                      f"{', '.join(sorted(v.get('workloads') or {})) or 'every workload'}" for v in promoted)
    checks.append(_check("promoted_workload", "at least one workload promoted", ">= 1", n_promoted,
                         bool(promoted) and n_promoted >= 1, f"promoted: {names}" if promoted else
                         "no version was promoted for any workload"))
    teacher = next((p for p in phases if p["version"] is None), None)
    last = phases[-1] if phases else None
    cut_short = ""
    if last is not None and last["version"] is not None and not _judgeable(last, min_requests, min_episodes):
        # A version that went live just before the demo's hard stop has a phase too short to judge: the
        # student phase before it (with enough traffic) is judged instead, and the details say so.
        earlier = [p for p in phases[:-1] if p["version"] is not None and _judgeable(p, min_requests, min_episodes)]
        if earlier:
            cut_short = (f" [{last['label']}'s phase had only {last['requests']} requests and {last['episodes']} "
                         f"episodes before the demo stopped: {earlier[-1]['label']} is judged]")
            last = earlier[-1]
    no_student = last is None or last["version"] is None
    why_none = "the last phase is teacher-only: no student went live"
    live = None if no_student else next((v for v in reversed(promoted) if v["version"] == last["version"]), None)
    live_set = _served_workloads(live) if live is not None else set()
    per_last = (last or {}).get("workloads") or {}

    # the share the student can take: the requests of the workloads its live version serves
    share = None if no_student else last["student_share"]
    if no_student:
        ok, detail, target = False, why_none, f"the promoted workloads' share - {SHARE_SLACK:.0%}"
    elif last["requests"] < min_requests:
        ok, detail = False, f"only {last['requests']} requests in the last phase (< {min_requests}): too few to judge"
        target = f"the promoted workloads' share - {SHARE_SLACK:.0%}"
    else:
        carried = last["requests"] if live_set is None else sum(
            d["requests"] for w, d in per_last.items() if w in live_set)
        carried_share = carried / last["requests"] if last["requests"] else 0.0
        if live_set is None:  # a version gated before workloads: the fixed bar of that time
            want, target = SHARE_MIN, f">= {SHARE_MIN:.0%}"
        else:
            want = max(0.0, carried_share - SHARE_SLACK)
            target = f">= {want:.0%} ({carried_share:.0%} carried by its workloads - {SHARE_SLACK:.0%})"
        ok = share is not None and share >= want
        served = "every workload" if live_set is None else ", ".join(sorted(live_set))
        detail = (f"{last['student_requests']} of {last['requests']} requests in {last['label']} served by the "
                  f"student; its workloads ({served}) carried {carried}")
    checks.append(_check("student_share_last_phase", "student share of requests in the last phase", target, share,
                         ok, detail))

    base_ok = teacher is not None and teacher["episodes"] >= min_episodes
    base_why = (f"the teacher-only phase has {teacher['episodes'] if teacher else 0} episodes (< {min_episodes}): "
                "no baseline")

    def compare() -> tuple[bool, str] | None:
        if no_student:
            return False, why_none
        if not base_ok:
            return False, base_why
        if last["episodes"] < min_episodes:
            return False, f"only {last['episodes']} episodes in the last phase (< {min_episodes}): too few to judge"
        if not last["student_requests"]:
            # every answer came from the teacher: a difference would be the task mix, not the student
            return False, f"the student served none of the {last['requests']} requests of {last['label']}"
        return None

    early = compare()
    # each promoted workload against its own teacher-only success
    ratio = None
    if early:
        ok, detail = early
    else:
        per_teacher = teacher.get("workloads") or {}
        judged, parts, too_few = [], [], []
        # a version gated before workloads (or phases without per-workload figures): the phase as a whole
        whole = live_set is None or not per_last
        names_ = ["all workloads"] if whole else sorted(live_set)
        for w in names_:
            a, b = (last, teacher) if whole else (per_last.get(w) or {}, per_teacher.get(w) or {})
            if (a.get("episodes") or 0) < min_episodes or (b.get("episodes") or 0) < min_episodes:
                too_few.append(f"{w} ({a.get('episodes') or 0} / {b.get('episodes') or 0} episodes)")
                continue
            if not b.get("success_rate"):
                too_few.append(f"{w} (no teacher-only success)")
                continue
            r_ = round((a.get("success_rate") or 0.0) / b["success_rate"], 4)
            judged.append(r_)
            parts.append(f"{w} {_fmt_pct(a.get('success_rate'))} of {a['episodes']} vs {_fmt_pct(b['success_rate'])} "
                         f"of {b['episodes']} ({r_:.0%})")
        ratio = min(judged) if judged else None
        ok = bool(judged) and ratio is not None and ratio >= SUCCESS_RATIO_MIN
        detail = "; ".join(parts) or "no promoted workload has enough episodes in both phases"
        if too_few:
            detail += f" [too few to judge: {', '.join(too_few)}]"
    checks.append(_check("task_success_vs_teacher", "task success per promoted workload, last phase / teacher-only "
                         "(the lowest)", f">= {SUCCESS_RATIO_MIN:.0%} each", ratio, ok, detail))

    value = None
    cost_figures = ""
    if not no_student and teacher:
        cost_figures = (f"{last['label']}: {_fmt_usd(last['cost_per_task_usd'])} per task; teacher-only: "
                        f"{_fmt_usd(teacher['cost_per_task_usd'])}")
    if early:
        ok, detail = early[0], early[1] + (f" ({cost_figures})" if cost_figures else "")
    else:
        cost_last, cost_teacher = last["cost_per_task_usd"], teacher["cost_per_task_usd"]
        if cost_last is not None and cost_teacher:
            value = round(cost_last / cost_teacher, 4)
        ok, detail = value is not None and value < 1.0, cost_figures
    checks.append(_check("cost_per_task_down", "cost per task, last phase / teacher-only", "< 100%", value, ok,
                         detail))

    # the flywheel turns again: a retrain requested after the first student went live, evaluated before the end
    later = [r for r in (runs or []) if r.get("after_first_live")]
    verdict_of = {v["version"]: v for v in (versions or []) if v["status"] in ("promoted", "rejected")}
    evaluated = [r for r in later if r.get("version") in verdict_of]
    if evaluated:
        r0 = evaluated[0]
        v = verdict_of[r0["version"]]
        verdicts = v.get("verdicts") or {}
        shown = ", ".join(f"{w} {s}" for w, s in sorted(verdicts.items())) or v["status"]
        ok, detail = True, (f"{r0['run_id']} (requested at {r0['requested_s']:.0f} s on {r0['n_new_examples']} new "
                            f"examples) -> {v['version']} {v['status']} at {v['t_s']:.0f} s: {shown}")
    elif later:
        ok, detail = False, (f"{later[0]['run_id']} was requested at {later[0]['requested_s']:.0f} s but not evaluated "
                             f"before the end ({later[0]['status']})")
    else:
        ok, detail = False, ("no retrain was requested after the first student went live" if not no_student
                             else why_none)
    checks.append(_check("flywheel_turns_again", "a retrain fed by the first student's fallbacks, evaluated",
                         "evaluated before the end", len(evaluated), ok, detail))
    if cut_short:
        for check in checks[1:4]:
            check["detail"] += cut_short
    return checks


def _judgeable(p: dict[str, Any], min_requests: int, min_episodes: int) -> bool:
    return p["requests"] >= min_requests and p["episodes"] >= min_episodes


# --------------------------------------------------------------------------- what happened


def milestones(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The flywheel's steps, each done or not, with when and what (from the report's own figures)."""
    totals, phases, runs, versions = report["totals"], report["phases"], report["runs"], report["versions"]
    out: list[dict[str, Any]] = []

    def add(name: str, done: bool, detail: str) -> None:
        out.append({"step": name, "done": bool(done), "detail": detail})

    add("traffic through the router", totals["requests"] > 0,
        f"{totals['requests']} requests, {totals['episodes']} episodes reported")
    add("traces scored and gated", totals["scored"] > 0,
        f"{totals['scored']} scored, {totals['passed']} passed every gate; {totals['sft_examples']} SFT examples "
        f"in {totals['windows']} closed windows")
    first = runs[0] if runs else None
    add("first retrain triggered", first is not None,
        f"{first['run_id']} at {first['requested_s']:.0f} s on {first['n_new_examples']} new examples, "
        f"{first['status']}" if first else "no training run was requested (not enough new examples before the end)")
    evaluated: dict[str, list[dict[str, Any]]] = {}
    for v in versions:
        if v["status"] in ("promoted", "rejected", "rolled_back"):
            evaluated.setdefault(v["version"], []).append(v)
    add("student evaluated against the teacher", bool(evaluated),
        "; ".join(f"{name} {' then '.join(x['status'] for x in vs)} (quality ratio {vs[0].get('quality_ratio')}, "
                  f"failure rate {vs[0].get('failure_rate')})" for name, vs in evaluated.items())
        or "no version was evaluated")
    promoted = [v for v in versions if v["status"] == "promoted"]
    rejected = [v for v in versions if v["status"] == "rejected"]
    detail = ", ".join(f"{v['version']} at {v['t_s']:.0f} s" for v in promoted)
    if not promoted:
        detail = "no student promoted" + (
            ": " + " / ".join(f"{v['version']}: {'; '.join(v['reasons'][:2]) or 'rejected'}" for v in rejected)
            if rejected else "")
    add("student promoted", bool(promoted), detail)
    live = [p for p in phases if p["version"] is not None]
    switch = [v for v in promoted if v.get("live_s") is not None]
    add("router switched live to the student", bool(live),
        ", ".join(f"{v['version']} live at {v['live_s']:.0f} s ({v['switch_seconds']:.1f} s after promotion)"
                  for v in switch) or "the router never served with a student version")
    if live:
        shares = ", ".join(f"{p['label']}: {_fmt_pct(p['student_share'])}" for p in phases)
        add("student share of requests rising", any((p["student_share"] or 0) > 0 for p in live), shares)
    else:
        add("student share of requests rising", False, "no student phase")
    later = [r for r in runs if r.get("after_first_live")]
    fallback = sum(p["passed_from_teacher"] for p in live)
    add("teacher fallbacks feed a second retrain", bool(later),
        (f"{later[0]['run_id']} at {later[0]['requested_s']:.0f} s on {later[0]['n_new_examples']} new examples "
         f"({fallback} gate-passed traces served by the teacher after the switch), {later[0]['status']}")
        if later else (f"no retrain after the switch ({fallback} gate-passed fallback traces collected)"
                       if live else "no student phase, so no fallbacks"))
    return out


# --------------------------------------------------------------------------- threshold sweep


def _missing_episode_fields(eval_report: dict[str, Any]) -> list[str]:
    eps = eval_report.get("episodes")
    if not isinstance(eps, list) or not eps:
        return [f"episodes[].{f}" for f in EPISODE_FIELDS]
    missing = {f for e in eps for f in EPISODE_FIELDS if not isinstance(e, dict) or e.get(f) is None}
    return [f"episodes[].{f}" for f in EPISODE_FIELDS if f in missing]


def _side(d: dict[str, Any], price: float, cost: CostModel) -> dict[str, Any] | None:
    tokens = d.get("tokens_per_task")
    if not isinstance(d.get("success_rate"), (int, float)) or not isinstance(tokens, (int, float)):
        return None
    return {"success_rate": d["success_rate"], "quality": d.get("quality"),
            "cost_per_task_usd": round(tokens / 1000 * price, 6), "tokens_per_task": tokens}


def threshold_sweep(eval_report: dict[str, Any], cost: CostModel, *,
                    operating_threshold: float | None = None) -> dict[str, Any]:
    """Quality and cost on the held-out tasks as the routing threshold moves.

    At threshold t the router lets the student serve an episode when the episode's confidence >= t,
    else the teacher serves it. Success and quality are the served side's; cost is the student's tokens
    at the student's price for every episode (it is always asked first: an upper bound for escalated
    ones, which stop at the first unconfident turn) plus the teacher's tokens at the teacher's price
    for the escalated ones. Needs the per-task rows in `EPISODE_FIELDS` (an evaluation report from
    before they were kept has none): without them only the two ends (all teacher, all student) are
    known, from the report's aggregates."""
    out: dict[str, Any] = {"operating_threshold": operating_threshold, "points": [], "missing": []}
    out["teacher_only"] = _side(eval_report.get("teacher") or {}, cost.teacher_price_per_1k, cost)
    out["student_only"] = _side(eval_report.get("student") or {}, cost.student_price_per_1k, cost)
    missing = _missing_episode_fields(eval_report)
    if missing:
        out["missing"] = missing
        return out
    eps = eval_report["episodes"]
    n = len(eps)
    confs = sorted({float(e["confidence"]) for e in eps})
    above = (confs[-1] + 1.0) if confs else 1.0  # no episode reaches it: all teacher
    thresholds = sorted({0.0, *confs, above} | ({operating_threshold} if operating_threshold is not None else set()))
    for t in thresholds:
        succ = qual = usd = 0.0
        covered = failed = 0
        for e in eps:
            usd += cost.cost(0, float(e["student_tokens"]))
            side = "student" if float(e["confidence"]) >= t else "teacher"
            covered += side == "student"
            succ += bool(e[f"{side}_correct"])
            qual += float(e[f"{side}_quality"])
            failed += bool(e[f"{side}_failed"])
            if side == "teacher":
                usd += cost.cost(float(e["teacher_tokens"]), 0)
        out["points"].append({"threshold": round(t, 6), "all_teacher": t == above and t not in confs,
                              "coverage": round(covered / n, 4), "success_rate": round(succ / n, 4),
                              "quality": round(qual / n, 4), "failure_rate": round(failed / n, 4),
                              "cost_per_task_usd": round(usd / n, 6)})
    return out


# --------------------------------------------------------------------------- the report


def _rel(ts: float | None, t0: float) -> float | None:
    return None if ts is None else round(ts - t0, 1)


def build_report(ledger: Ledger, *, t0: float, end: float, cost: CostModel, eval_reports: dict[str, dict[str, Any]],
                 stop_reason: str, config: dict[str, Any], bin_s: float | None = None,
                 settle_s: float = 5.0) -> dict[str, Any]:
    """Everything `report.json` holds, computed from the ledger (`t0`: the demo's start, epoch seconds)
    and the registry's evaluation reports by version."""
    phases = segment_phases(ledger.decisions, t0, settle_s=settle_s)
    stats = phase_stats(ledger, phases, cost)
    phase_dicts = [s.to_dict(t0, end) for s in stats]
    live_at = {p.version: p.start for p in phases if p.version is not None}
    first_live = min(live_at.values()) if live_at else None

    versions = []
    for v in sorted(ledger.versions, key=lambda v: v.ts):
        entry: dict[str, Any] = {"version": v.version, "status": v.status, "t_s": round(v.ts - t0, 1),
                                 "quality_ratio": v.metrics.get("quality_ratio"),
                                 "failure_rate": v.metrics.get("failure_rate"),
                                 "confidence_threshold": v.threshold, "reasons": list(v.reasons),
                                 "workloads": dict(v.workloads), "verdicts": dict(v.verdicts)}
        if v.status == "promoted" and v.version in live_at:
            entry["live_s"] = round(live_at[v.version] - t0, 1)
            entry["switch_seconds"] = round(live_at[v.version] - v.ts, 1)
        versions.append(entry)
    promoted = [v for v in versions if v["status"] == "promoted"]

    runs = []
    by_run: dict[str, dict[str, Any]] = {}
    for r in sorted(ledger.runs, key=lambda r: r.ts):
        e = by_run.get(r.run_id)
        if e is None:
            e = by_run[r.run_id] = {"run_id": r.run_id, "requested_s": round(r.ts - t0, 1), "started_s": None,
                                    "ended_s": None, "status": r.status, "n_new_examples": r.n_new_examples,
                                    "version": None, "error": None,
                                    "after_first_live": first_live is not None and r.ts >= first_live}
            runs.append(e)
        e["status"] = r.status
        if r.status == "started":
            e["started_s"] = round(r.ts - t0, 1)
        if r.status in ("finished", "failed"):
            e["ended_s"] = round(r.ts - t0, 1)
            e["version"], e["error"] = r.version, r.error
        e["n_new_examples"] = max(e["n_new_examples"], r.n_new_examples)

    gates: Counter[str] = Counter()
    for sc in ledger.scored.values():
        gates.update(sc.rejected_by)
    totals = {
        "requests": ledger.requests, "student_requests": ledger.student_requests,
        "episodes": len(ledger.outcomes), "successes": sum(o.success for o in ledger.outcomes.values()),
        "scored": len(ledger.scored), "passed": sum(s.passed for s in ledger.scored.values()),
        "sft_examples": ledger.sft_examples, "windows": len(ledger.windows),
        "pairs": sum(w.n_pairs for w in ledger.windows.values()),
    }

    # the sweep: the latest promoted version's evaluation, else the latest evaluated one (labelled)
    sweep: dict[str, Any] | None = None
    evaluated = [v for v in versions if v["status"] in ("promoted", "rejected") and v["version"] in eval_reports]
    chosen = ([v for v in evaluated if v["status"] == "promoted"] or evaluated)
    if chosen:
        v = chosen[-1]
        rep = eval_reports[v["version"]]
        op = v.get("confidence_threshold")
        if op is None:
            op = (rep.get("confidence") or {}).get("threshold")
        sweep = threshold_sweep(rep, cost, operating_threshold=op)
        sweep.update(version=v["version"], status=v["status"], eval_tasks=(rep.get("student") or {}).get("episodes"),
                     quality_ratio=rep.get("quality_ratio"), calibration=rep.get("confidence") or {},
                     routed=rep.get("routed") or {})

    width = bin_s or max(5.0, round((end - t0) / 60))
    report: dict[str, Any] = {
        "wall_seconds": round(end - t0, 1),
        "stop_reason": stop_reason,
        "config": config,
        "cost_model": {
            "teacher_price_per_1k_tokens": cost.teacher_price_per_1k,
            "student_price_per_1k_tokens": cost.student_price_per_1k,
            "description": cost.describe(),
        },
        "totals": totals,
        "phases": phase_dicts,
        "versions": versions,
        "runs": runs,
        "gate_rejections": dict(gates.most_common()),
        "timeline": {"bin_s": width, "bins": timeline(ledger, t0, end, width)},
        "events": {
            "promoted_s": [v["t_s"] for v in promoted],
            "promoted_versions": [v["version"] for v in promoted],
            "live_s": [round(ts - t0, 1) for ts in sorted(live_at.values())],
            "runs": [(r["requested_s"], r["ended_s"]) for r in runs],
        },
        "sweep": sweep,
    }
    report["time_to_first_student_s"] = _rel(first_live, t0)
    report["checks"] = acceptance_checks(phase_dicts, promoted, runs=runs, versions=versions)
    report["milestones"] = milestones(report)
    return report


# --------------------------------------------------------------------------- markdown


def _phase_roles(phases: list[dict[str, Any]]) -> dict[int, str]:
    roles: dict[int, list[str]] = {}
    teacher = next((p for p in phases if p["version"] is None), None)
    if teacher:
        roles.setdefault(teacher["index"], []).append("teacher-only")
    first = next((p for p in phases if p["version"] is not None), None)
    if first:
        roles.setdefault(first["index"], []).append("after the first promotion")
    if phases:
        roles.setdefault(phases[-1]["index"], []).append("last")
    return {k: ", ".join(v) for k, v in roles.items()}


def workload_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per workload: its share, success and cost per phase, and each evaluated version's verdict."""
    names = sorted({w for p in r["phases"] for w in (p.get("workloads") or {})}
                   | {w for v in r["versions"] for w in (v.get("verdicts") or {})})
    rows = []
    for w in names:
        per_phase = {p["label"]: (p.get("workloads") or {}).get(w) for p in r["phases"]}
        verdicts = {v["version"]: (v.get("verdicts") or {}).get(w) for v in r["versions"]
                    if v["status"] in ("promoted", "rejected") and (v.get("verdicts") or {}).get(w)}
        rows.append({"workload": w, "phases": per_phase, "verdicts": verdicts})
    return rows


def _workload_table(r: dict[str, Any]) -> list[str]:
    rows = workload_rows(r)
    if not rows:
        return []
    labels = [p["label"] for p in r["phases"]]
    versions = sorted({v for row in rows for v in row["verdicts"]})
    head = ["workload", *(f"{lab}: share / success / cost per task" for lab in labels),
            *(f"{v} verdict" for v in versions)]
    L = ["## Per workload", "", "Student share of requests, task success and cost per task of each workload in "
         "each phase; the gate's verdict on it for each evaluated version (a version serves only the workloads "
         "it was promoted for).", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [row["workload"]]
        for lab in labels:
            d = row["phases"].get(lab)
            cells.append("-" if not d else f"{_fmt_pct(d['student_share'])} / {_fmt_pct(d['success_rate'])} "
                                           f"of {d['episodes']} / {_fmt_usd(d.get('cost_per_task_usd'))}")
        cells += [row["verdicts"].get(v, "-") for v in versions]
        L.append("| " + " | ".join(cells) + " |")
    return [*L, ""]


def render_markdown(r: dict[str, Any]) -> str:
    checks = r["checks"]
    passed = sum(c["passed"] for c in checks)
    L = ["# stillflow demo report", "",
         f"Ran {r['wall_seconds']:.0f} s; stopped because {r['stop_reason']}. "
         f"Acceptance checks: **{passed} of {len(checks)} PASS**.", "",
         "## Acceptance checks", "", "| check | figures | target | value | result |", "| --- | --- | --- | --- | --- |"]
    for c in checks:
        v = c["value"]
        shown = "n/a" if v is None else (f"{v:.1%}" if isinstance(v, float) else str(v))
        L.append(f"| {c['description']} | {c['detail']} | {c['target']} | {shown} | **{c['result']}** |")
    if r.get("time_to_first_student_s") is not None:
        L += ["", f"Time to first student (the router's first answer from a promoted version): "
                  f"**{r['time_to_first_student_s']:.0f} s** after the demo started."]
    L += ["", "## What happened", ""]
    for m in r["milestones"]:
        L.append(f"- {'[x]' if m['done'] else '[ ] **did not happen**:'} {m['step']} — {m['detail']}")
    roles = _phase_roles(r["phases"])
    L += ["", "## Phases", "",
          "A phase starts when the router first serves with a new live version (from the route decisions); "
          "episodes count in the phase their first request fell in.", "",
          "| phase | role | span (s) | requests | student share | episodes | task success | cost per task | "
          "teacher / student tokens | gate-passed traces (from teacher fallbacks) |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in r["phases"]:
        L.append(f"| {p['label']} | {roles.get(p['index'], '')} | {p['start_s']:.0f}–{p['end_s']:.0f} | "
                 f"{p['requests']} | {_fmt_pct(p['student_share'])} | {p['episodes']} | "
                 f"{_fmt_pct(p['success_rate'])} | "
                 f"{_fmt_usd(p['cost_per_task_usd'])} | {p['teacher_tokens']:,} / {p['student_tokens']:,} | "
                 f"{p['passed']} ({p['passed_from_teacher']}) |")
    L += ["", "Routing reasons per phase: " + "; ".join(
        f"{p['label']}: " + ", ".join(f"{k} {v}" for k, v in p["reasons"].items())
        + (f" ({p['failed_requests']} requests failed: nobody could serve them)" if p["failed_requests"] else "")
        for p in r["phases"] if p["reasons"]), ""]
    L += _workload_table(r)
    L += ["## Versions and retrains", "", "| run | requested (s) | new examples | status | version |",
          "| --- | --- | --- | --- | --- |"]
    for run in r["runs"]:
        L.append(f"| {run['run_id']} | {run['requested_s']:.0f} | {run['n_new_examples']} | {run['status']} | "
                 f"{run['version'] or ''}{' — ' + run['error'] if run['error'] else ''} |")
    if not r["runs"]:
        L.append("| (none) | | | | |")
    L += ["", "| version | status | at (s) | quality ratio | failure rate | threshold | live at (s) | reasons |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in r["versions"]:
        L.append(f"| {v['version']} | {v['status']} | {v['t_s']:.0f} | {v['quality_ratio']} | {v['failure_rate']} | "
                 f"{v['confidence_threshold']} | {v.get('live_s', '')} | {'; '.join(v['reasons'])[:300]} |")
    if not r["versions"]:
        L.append("| (none) | | | | | | | |")
    L += ["", "## Quality vs cost as the routing threshold moves (held-out tasks)", ""]
    sw = r["sweep"]
    if sw is None:
        L.append("Not available: no version was evaluated during the demo.")
    else:
        L.append(f"From the evaluation of {sw['version']} ({sw['status']}; {sw.get('eval_tasks')} held-out tasks, "
                 f"calibrated threshold {sw.get('operating_threshold')}).")
        for name in ("teacher_only", "student_only"):
            side = sw.get(name)
            if side:
                L.append(f"- {name.replace('_', ' ')}: success {_fmt_pct(side['success_rate'])}, quality "
                         f"{side['quality']}, cost per task {_fmt_usd(side['cost_per_task_usd'])}")
        routed = sw.get("routed") or {}
        if routed:
            L.append(f"- as the router deploys it (the evaluation's routed figures): "
                     f"{_fmt_pct(routed.get('coverage'))} of tasks to the student, quality ratio "
                     f"{routed.get('quality_ratio')} on those, catastrophic "
                     f"failures {_fmt_pct(routed.get('failure_rate'))}, system quality ratio "
                     f"{routed.get('system_quality_ratio')}")
        if sw["missing"]:
            L += ["", "The sweep between those two ends needs per-task rows that this evaluation report does not "
                  "hold: " + ", ".join(f"`{m}`" for m in sw["missing"]) + ". Only the ends are plotted."]
        else:
            L += ["", "| threshold | student coverage | task success | quality | catastrophic failures | "
                  "cost per task |",
                  "| --- | --- | --- | --- | --- | --- |"]
            pts = sw["points"]
            step = max(1, len(pts) // 12)
            keep = {id(p) for p in pts[::step]} | {id(pts[-1])}
            for p in pts:
                if id(p) in keep or p["threshold"] == sw.get("operating_threshold"):
                    L.append(f"| {'all teacher' if p['all_teacher'] else p['threshold']} | {_fmt_pct(p['coverage'])} | "
                             f"{_fmt_pct(p['success_rate'])} | {p['quality']} | {_fmt_pct(p['failure_rate'])} | "
                             f"{_fmt_usd(p['cost_per_task_usd'])} |")
    advice = r.get("advise")
    if advice:
        if advice.get("markdown"):  # its own "## Which workloads are worth distilling" section
            L += ["", advice["markdown"], "", "(`stillflow advise` on the demo's events.)"]
        else:
            L += ["", "## Which workloads are worth distilling", "", f"Not available: {advice.get('error')}"]
    L += ["", "## Gate rejections (scored traces)", "", "| gate | traces |", "| --- | --- |"]
    L += [f"| {g} | {n} |" for g, n in r["gate_rejections"].items()] or ["| (none) | 0 |"]
    cm = r["cost_model"]
    L += ["", "## Cost model", "",
          f"Teacher ${cm['teacher_price_per_1k_tokens']:g} per 1k tokens (the sim teacher's price, "
          f"`--teacher-price-per-1k`), student ${cm['student_price_per_1k_tokens']:g} per 1k tokens "
          f"(`--student-price-per-1k`). {cm['description']}", "",
          "## Totals", "", ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in r["totals"].items()), "",
          "## Plots", ""]
    L += [f"![{name}]({name})" for name in r.get("plots", [])] or ["(none written)"]
    L += ["", "## Settings", "", "```", *(f"{k}: {v}" for k, v in r["config"].items()), "```", ""]
    return "\n".join(L)


# --------------------------------------------------------------------------- plots


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.4")


def write_plots(r: dict[str, Any], out_dir: Path) -> list[str]:
    """share_quality.png, quality_cost.png, gate_rejections.png in `out_dir`; their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = []

    # (1) student share and task success over time, promotions marked
    fig, ax = plt.subplots(figsize=(10, 4.5))
    bins = r["timeline"]["bins"]
    width = r["timeline"]["bin_s"]
    xs = [b["t_s"] + width / 2 for b in bins]
    share = [b["student_share"] for b in bins]
    succ = [b["success_rate"] for b in bins]
    if any(v is not None for v in share):
        ax.plot(xs, [float("nan") if v is None else v for v in share], "-o", ms=3, lw=2.2, color="black",
                label="student share of requests (all)")
        ax.plot(xs, [float("nan") if v is None else v for v in succ], "-s", ms=3, label="task success (episodes ended)")
        names = sorted({w for b in bins for w in (b.get("workloads") or {})})
        if len(names) > 1:
            for w in names:
                ys = []
                for b in bins:
                    n, k = (b.get("workloads") or {}).get(w, (0, 0))
                    ys.append(k / n if n else float("nan"))
                ax.plot(xs, ys, "-", lw=1, alpha=0.8, label=f"share: {w}")
    else:
        _no_data(ax, "no requests recorded")
    for start, end in r["events"]["runs"]:
        ax.axvspan(start, end if end is not None else r["wall_seconds"], color="0.85", alpha=0.5, lw=0)
    for i, (t, version) in enumerate(zip(r["events"]["promoted_s"], r["events"]["promoted_versions"], strict=True)):
        ax.axvline(t, color="tab:green", lw=1.5, label="promoted" if i == 0 else None)
        ax.annotate(version, (t, 1.05), xytext=(3, -12), textcoords="offset points", fontsize=8, color="tab:green")
    for i, t in enumerate(r["events"]["live_s"]):
        ax.axvline(t, color="tab:green", ls="--", lw=1.2, label="router switched" if i == 0 else None)
    if r["events"]["runs"]:
        ax.axvspan(0, 0, color="0.85", label="training run")
    ax.set_xlim(0, max(r["wall_seconds"], 1))
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("seconds since the demo started")
    ax.set_ylabel("share")
    ax.set_title("Student share of requests and task success over time")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="center left", fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "share_quality.png", dpi=110)
    plt.close(fig)
    names.append("share_quality.png")

    # (2) quality vs cost as the routing threshold moves
    fig, ax = plt.subplots(figsize=(7, 5))
    sw = r["sweep"]
    if sw is None:
        _no_data(ax, "no version evaluated")
        ax.set_title("Quality vs cost by routing threshold")
    else:
        pts = sw["points"]
        if pts:
            ax.plot([p["cost_per_task_usd"] for p in pts], [p["success_rate"] for p in pts], "-o", ms=3,
                    label="threshold sweep")
            op = sw.get("operating_threshold")
            at = [p for p in pts if op is not None and p["threshold"] == round(op, 6)]
            if at:
                ax.plot([at[0]["cost_per_task_usd"]], [at[0]["success_rate"]], "*", ms=14, color="tab:red",
                        label=f"calibrated threshold {op:.3f}")
        for name, marker in (("teacher_only", "s"), ("student_only", "^")):
            side = sw.get(name)
            if side:
                ax.plot([side["cost_per_task_usd"]], [side["success_rate"]], marker, ms=9,
                        label=name.replace("_", " "))
        title = f"Quality vs cost by routing threshold ({sw['version']}, {sw['status']})"
        if sw["missing"]:
            title += "\nends only: the eval report has no per-task rows"
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.02, 1.05)
        ax.legend(fontsize=8)
    ax.set_xlabel("cost per task (USD)")
    ax.set_ylabel("task success on held-out tasks")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "quality_cost.png", dpi=110)
    plt.close(fig)
    names.append("quality_cost.png")

    # (3) gate rejections by gate, stacked by phase
    fig, ax = plt.subplots(figsize=(8, 4.5))
    gates = list(r["gate_rejections"])
    if gates:
        left = [0] * len(gates)
        for p in r["phases"]:
            vals = [p["gate_rejections"].get(g, 0) for g in gates]
            if any(vals):
                ax.barh(gates, vals, left=left, label=p["label"])
                left = [a + b for a, b in zip(left, vals, strict=True)]
        ax.invert_yaxis()
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no rejected traces recorded")
    ax.set_xlabel("traces rejected (a trace can fail several gates)")
    ax.set_title(f"Gate rejections by gate ({r['totals']['scored']} scored, {r['totals']['passed']} passed)")
    fig.tight_layout()
    fig.savefig(out_dir / "gate_rejections.png", dpi=110)
    plt.close(fig)
    names.append("gate_rejections.png")
    return names
