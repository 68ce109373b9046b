"""Outcomes join OTel trajectories: success and ground truth never come in the spans.

Exports `joined_event(trace, outcome, evaluation)` (the `TraceOutcomeEvent`, steps attached, that enters
the SDK assembler and so the same score → gate → format → window path), `UNKNOWN`, and the task-keyed
stage: `TaskState`, `task_add_trajectory`, `task_add_outcome`, `task_due`.

An outcome names its trace by the hex OTel trace id (joined where the spans are assembled, same key) or
by `stillflow.task_id` (joined here, under the task id: the trajectory and the outcome each travel to the
partition of the task). Under a task id, trajectories and outcomes pair first come, first served (a task
run three times reports three outcomes); an outcome that names the hex trace id of a trajectory waiting
here takes that one. A trajectory nobody reports on within the wait is published with success unknown
(success False, metadata `outcome=unknown`), so it never passes the `success` gate; a
`gen_ai.evaluation.result` event on the trace is an outcome too.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from stillflow.contracts import AgentTrace, TraceOutcomeEvent, utcnow
from streams.tables import TableModel

__all__ = ["UNKNOWN", "joined_event", "TaskState", "Waiting", "Reported", "task_add_trajectory", "task_add_outcome",
           "task_due", "outcome_is_task_keyed"]

UNKNOWN = "unknown"
JOIN_META = "stillflow_join"  # outcome metadata: "task" when the outcome names a task id, not a trace


def outcome_is_task_keyed(outcome: TraceOutcomeEvent) -> bool:
    return outcome.metadata.get(JOIN_META) == "task"


def joined_event(trace: AgentTrace, outcome: TraceOutcomeEvent | None, evaluation: bool | None) -> TraceOutcomeEvent:
    data = trace.model_dump(exclude={"steps", "timestamp"})
    meta = dict(trace.metadata)
    if outcome is not None:
        data["success"] = outcome.success
        data["error"] = outcome.error if outcome.error is not None else trace.error
        for name in ("ground_truth", "expected_steps", "quality_score"):
            if getattr(outcome, name) is not None:
                data[name] = getattr(outcome, name)
        if outcome.workload:
            data["workload"] = outcome.workload
        if outcome.cost_usd:
            data["cost_usd"] = outcome.cost_usd
        if outcome.final_output and not trace.final_output:
            data["final_output"] = outcome.final_output
        meta.update({k: v for k, v in outcome.metadata.items() if k != JOIN_META})
        meta["outcome"] = "reported"
    elif evaluation is not None:
        data["success"] = evaluation
        meta["outcome"] = "evaluation"
    else:
        data["success"] = False
        meta["outcome"] = UNKNOWN
    data["metadata"] = meta
    return TraceOutcomeEvent(**data, n_steps=len(trace.steps), steps=list(trace.steps), timestamp=trace.timestamp)


class Waiting(TableModel):
    trace: AgentTrace
    evaluation: bool | None = None
    since: datetime


class Reported(TableModel):
    outcome: TraceOutcomeEvent
    at: datetime
    # set once joined: the trace it joined. Kept until the wait has passed so that a redelivered copy of
    # the outcome (same event id) or of that trajectory is recognised and never paired again.
    joined: str | None = None


class TaskState(TableModel):
    task_id: str
    waiting: list[Waiting] = Field(default_factory=list)
    outcomes: list[Reported] = Field(default_factory=list)  # oldest first; `joined` ones are paired already
    updated_at: datetime


def _state(state: TaskState | None, task_id: str, now: datetime) -> TaskState:
    return state or TaskState(task_id=task_id, updated_at=now)


def task_add_trajectory(state: TaskState | None, task_id: str, trace: AgentTrace, evaluation: bool | None, *,
                        now: datetime | None = None) -> tuple[TaskState, list[TraceOutcomeEvent]]:
    now = now or utcnow()
    st = _state(state, task_id, now)
    if any(w.trace.trace_id == trace.trace_id for w in st.waiting) or any(
            r.joined == trace.trace_id for r in st.outcomes):  # a redelivered forward
        return st, []
    outcomes = list(st.outcomes)
    pick = next((i for i, r in enumerate(outcomes) if r.joined is None and r.outcome.trace_id == trace.trace_id), None)
    if pick is None:
        pick = next((i for i, r in enumerate(outcomes) if r.joined is None and outcome_is_task_keyed(r.outcome)),
                    None)
    if pick is not None:
        rep = outcomes.pop(pick)
        outcomes.append(rep.model_copy(update={"at": now, "joined": trace.trace_id}))
        return st.model_copy(update={"outcomes": outcomes, "updated_at": now}), [
            joined_event(trace, rep.outcome, evaluation)]
    waiting = [*st.waiting, Waiting(trace=trace, evaluation=evaluation, since=now)]
    return st.model_copy(update={"waiting": waiting, "updated_at": now}), []


def task_add_outcome(state: TaskState | None, task_id: str, outcome: TraceOutcomeEvent, *,
                     now: datetime | None = None, max_kept: int = 256) -> tuple[TaskState, list[TraceOutcomeEvent]]:
    now = now or utcnow()
    st = _state(state, task_id, now)
    if any(r.outcome.event_id == outcome.event_id for r in st.outcomes):
        return st, []
    waiting = list(st.waiting)
    pick = next((i for i, w in enumerate(waiting) if w.trace.trace_id == outcome.trace_id), None)
    if pick is None and outcome_is_task_keyed(outcome) and waiting:
        pick = 0
    if pick is not None:
        w = waiting.pop(pick)
        outcomes = [*st.outcomes, Reported(outcome=outcome, at=now, joined=w.trace.trace_id)][-max_kept:]
        return st.model_copy(update={"waiting": waiting, "outcomes": outcomes, "updated_at": now}), [
            joined_event(w.trace, outcome, w.evaluation)]
    outcomes = [*st.outcomes, Reported(outcome=outcome, at=now)][-max_kept:]
    return st.model_copy(update={"outcomes": outcomes, "updated_at": now}), []


def task_due(state: TaskState, now: datetime, wait_s: float) -> tuple[TaskState | None, list[TraceOutcomeEvent]]:
    """Trajectories that waited `wait_s` go out with success unknown; outcomes older than `wait_s` (and the
    marks of joined ones, `wait_s` after the join) are dropped (returned state None: nothing left, delete it)."""
    out, waiting = [], []
    for w in state.waiting:
        if (now - w.since).total_seconds() >= wait_s:
            out.append(joined_event(w.trace, None, w.evaluation))
        else:
            waiting.append(w)
    outcomes = [r for r in state.outcomes if (now - r.at).total_seconds() < wait_s]
    if not waiting and not outcomes:
        return None, out
    if len(waiting) == len(state.waiting) and len(outcomes) == len(state.outcomes):
        return state, out
    return state.model_copy(update={"waiting": waiting, "outcomes": outcomes}), out
