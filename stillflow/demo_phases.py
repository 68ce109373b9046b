"""When `stillflow demo` moves on and when it stops (pure: the caller passes the clock and what it saw).

Exports `Budgets` (seconds per stage, the `--quick` and full profiles), `Progress` (what the demo has
seen so far) and `decide(progress, budgets) -> Step`.

Stages of the flywheel, each with a time budget:
1. `teacher-only` — traffic through the router, served by the teacher, until a student goes live
   (the router served with a promoted version). Over `teacher_phase_s` from the start of traffic
   without one: stop (nothing was promoted in time; the report says what happened instead), unless a
   training run is going: then it is waited for up to `retrain_wait_s` more.
2. `student` — the first student is live; watch it serve for `student_phase_s`. Teacher fallbacks
   keep streaming in as data: if the retrain they trigger is running when that time is up, wait for
   it up to `retrain_wait_s` more.
3. `final` — a later version went live (the retrain was promoted): watch it for `final_phase_s`.
And over all of it `max_s` from the demo's start (startup included): a hard stop, so that the demo
ends cleanly on time whatever happened.
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
        """Within 5 minutes on 2 cores: 4 min 30 s of demo, the rest for stopping and the report."""
        return cls(teacher_phase_s=210, student_phase_s=45, retrain_wait_s=60, final_phase_s=30, max_s=270)

    @classmethod
    def full(cls) -> Budgets:
        """Within 15 minutes on 2 cores from a fresh clone: 11 min of demo, ~2 min 30 s for `make demo` to
        install what it needs, the rest for starting, stopping and the report."""
        return cls(teacher_phase_s=420, student_phase_s=150, retrain_wait_s=180, final_phase_s=100, max_s=660)

    def with_overrides(self, **values: float | None) -> Budgets:
        given = {k: float(v) for k, v in values.items() if v is not None}
        return Budgets(**{**self.__dict__, **given})


@dataclass(frozen=True)
class Progress:
    """Seconds since the demo started (`now`), since traffic started, and the live switches seen."""

    now: float
    traffic_start: float
    first_live: float | None = None  # when the first student went live
    latest_live: float | None = None  # when the latest later version went live (None: no later one)
    run_in_progress: bool = False  # a training run requested or started, not yet finished or failed
    fleet_done: bool = False


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
        if p.run_in_progress and in_teacher < b.teacher_phase_s + b.retrain_wait_s:
            return Step("waiting-for-retrain")
        why = (f"a training run was still going after {b.retrain_wait_s:.0f} s of waiting" if p.run_in_progress
               else "none was promoted")
        return Step(stage, True, f"no student went live within the teacher-only budget "
                                 f"({b.teacher_phase_s:.0f} s of traffic; {why})")
    if p.latest_live is not None:
        if p.now - p.latest_live >= b.final_phase_s:
            return Step(stage, True, f"the final phase ran its {b.final_phase_s:.0f} s")
        return Step(stage)
    in_student = p.now - p.first_live
    if in_student < b.student_phase_s:
        return Step(stage)
    if p.run_in_progress and in_student < b.student_phase_s + b.retrain_wait_s:
        return Step("waiting-for-retrain")
    if p.run_in_progress:
        return Step(stage, True, f"the retrain was still running after {b.retrain_wait_s:.0f} s of waiting")
    return Step(stage, True, f"the student phase ran its {b.student_phase_s:.0f} s and no later version went live")
