"""When `stillflow demo` moves on and when it stops (pure: the caller passes the clock and what it saw).

Exports `Budgets` (seconds per stage, the `--quick` and full profiles), `Progress` (what the demo has
seen so far) and `decide(progress, budgets) -> Step`.

Stages follow what happens, each with a generous hard cap (a slower machine takes longer, it does not
miss a fixed clock):
1. `teacher-only` — traffic through the router, served by the teacher, until a student goes live
   (the router served with a promoted version). Capped at `teacher_phase_s` of traffic without one
   (plus up to `retrain_wait_s` while a training run is going): then it stops, and the report says
   what happened instead.
2. `student` — the first student is live, its teacher fallbacks stream in as data and feed the next
   retrain. It is watched for at least `student_phase_s`, and until that retrain (one requested after
   the switch) has been evaluated, at most `retrain_wait_s` more. A retrain that was rejected ends the
   demo there (its verdicts per workload are in the report); a promoted one is waited for to go live.
3. `final` — a later version went live: watch it for `final_phase_s`.
And over all of it `max_s` from the demo's start (startup included): a hard stop, so that the demo
ends cleanly whatever happened.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Budgets", "Progress", "Step", "decide"]


@dataclass(frozen=True)
class Budgets:
    teacher_phase_s: float
    student_phase_s: float
    retrain_wait_s: float
    final_phase_s: float
    max_s: float

    def __post_init__(self) -> None:
        for name in ("teacher_phase_s", "student_phase_s", "final_phase_s", "max_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.retrain_wait_s < 0:
            raise ValueError(f"retrain_wait_s must be >= 0, got {self.retrain_wait_s}")

    @classmethod
    def quick(cls) -> Budgets:
        """Within 5 minutes on 2 cores: 4 min 30 s of demo, the rest for stopping and the report (the quick run
        shows the first student; a retrain rarely fits)."""
        return cls(teacher_phase_s=210, student_phase_s=45, retrain_wait_s=15, final_phase_s=30, max_s=270)

    @classmethod
    def full(cls) -> Budgets:
        """Caps for the whole flywheel on the six-workload mix, 2 cores (measured): the first run starts at
        ~110 s and takes ~7 minutes; a first student is live at 9-11 minutes (the first run promoted, or its
        warm retrain), and the retrain its fallbacks feed is evaluated ~2.5 minutes later. Stages end on what
        happens; these are caps, and `max_s` (15 min) is the hard stop of the demo itself (a fresh clone's
        install adds ~2.5 minutes before it)."""
        return cls(teacher_phase_s=600, student_phase_s=30, retrain_wait_s=270, final_phase_s=30, max_s=900)

    def with_overrides(self, **values: float | None) -> Budgets:
        given = {k: float(v) for k, v in values.items() if v is not None}
        return Budgets(**{**self.__dict__, **given})


@dataclass(frozen=True)
class Progress:
    """Seconds since the demo started (`now`), since traffic started, and what the flywheel did."""

    now: float
    traffic_start: float
    first_live: float | None = None  # when the first student went live
    latest_live: float | None = None  # when the latest later version went live (None: no later one)
    run_in_progress: bool = False  # a training run requested or started, not yet finished or failed
    promotion_pending: bool = False  # a version was promoted and the router does not serve with it yet
    fleet_done: bool = False
    # the retrain requested after the first switch: None (not evaluated yet), "promoted", "rejected" or "failed"
    retrain_verdict: str | None = None


@dataclass(frozen=True)
class Step:
    stage: str  # teacher-only | student | waiting-for-retrain | final | stopped
    stop: bool = False
    reason: str = ""


def decide(p: Progress, b: Budgets) -> Step:
    stage = "teacher-only" if p.first_live is None else ("final" if p.latest_live is not None else "student")
    if p.now >= b.max_s:
        return Step(stage, True, f"the demo's time budget ({b.max_s:.0f} s) is used up")
    if p.fleet_done:
        return Step(stage, True, "the fleet finished its traffic")
    if p.first_live is None:
        in_teacher = p.now - p.traffic_start
        if in_teacher < b.teacher_phase_s:
            return Step(stage)
        busy = p.run_in_progress or p.promotion_pending  # a student may be on its way: wait for it
        if busy and in_teacher < b.teacher_phase_s + b.retrain_wait_s:
            return Step("waiting-for-retrain")
        why = (f"a training run was still going after {b.retrain_wait_s:.0f} s of waiting" if p.run_in_progress
               else f"a promoted version was not live after {b.retrain_wait_s:.0f} s of waiting"
               if p.promotion_pending else "none was promoted")
        return Step(stage, True, f"no student went live within the teacher-only cap "
                                 f"({b.teacher_phase_s:.0f} s of traffic; {why})")
    if p.latest_live is not None:
        if p.now - p.latest_live >= b.final_phase_s:
            return Step(stage, True, f"the final phase ran its {b.final_phase_s:.0f} s")
        return Step(stage)
    in_student = p.now - p.first_live
    if in_student < b.student_phase_s:
        return Step(stage)
    if p.retrain_verdict == "rejected":
        return Step(stage, True, "the retrain fed by the first student's fallbacks was evaluated and rejected "
                                 "(its verdicts per workload are in the report)")
    if p.retrain_verdict == "failed":
        return Step(stage, True, "the retrain fed by the first student's fallbacks failed (see the report)")
    if in_student < b.student_phase_s + b.retrain_wait_s:
        return Step("waiting-for-retrain")
    what = ("was promoted but did not go live" if p.retrain_verdict == "promoted" else
            "was still running" if p.run_in_progress else "was not evaluated")
    return Step(stage, True, f"the retrain after the switch {what} within {b.retrain_wait_s:.0f} s of waiting "
                             "after the student phase")
