"""The simulated world as an evaluation environment for the trainer (`trainer.environment.EvalEnvironment`).

Exports `SimEvalTask` and `SimEvalEnvironment` — the trainer's default environment
(`STILLFLOW_TRAINER__EVAL__ENVIRONMENT=sim.environment:SimEvalEnvironment`). Structural: this module
imports only `sim` and `stillflow`, and returns objects of the shapes the trainer's protocols name.

- tasks: any task id of the suite (`get_task`), or fresh ones from the suite's held-out split
  (`sample_tasks`; the fleet runs the train split, so these never reach the training data);
- tools: one `ToolBox` per episode (`new_session(task).execute(name, args)` → text/ok/refused);
- answers: `stillflow.answers.answers_match`, as the sim and the stream judge them;
- the teacher baseline: `teacher_trace(task, seed=...)` runs the sim's teacher policy (with its
  injected error modes, as in production) on the same task.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sim.policies import DEFAULT_ERROR_RATES, TeacherPolicy
from sim.runner import run_episode
from sim.tasks import SYSTEM_PROMPT, Task, get_suite
from sim.tools import TOOL_SPECS, ToolBox
from sim.world import stable_int
from stillflow.answers import answers_match
from stillflow.contracts import AgentTrace, ToolSpec

__all__ = ["SimEvalTask", "SimEvalEnvironment"]


@dataclass(frozen=True)
class SimEvalTask:
    task_id: str
    question: str
    ground_truth: str | None
    family: str | None
    expected_steps: int | None
    system_prompt: str
    tools: tuple[ToolSpec, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    task: Task | None = field(default=None, repr=False, compare=False)


class SimEvalEnvironment:
    """The sim's suite and tools. `teacher_error_rates`: the teacher's error modes (default: the sim's)."""

    name = "sim"

    def __init__(self, world_seed: int = 0, teacher_error_rates: Mapping[str, float] | None = None,
                 max_turns: int = 16) -> None:
        self.suite = get_suite(world_seed)
        self.world_seed = world_seed
        self.teacher = TeacherPolicy(dict(DEFAULT_ERROR_RATES if teacher_error_rates is None else teacher_error_rates))
        self.max_turns = max_turns

    def _wrap(self, task: Task) -> SimEvalTask:
        return SimEvalTask(
            task_id=task.task_id, question=task.question, ground_truth=task.ground_truth, family=task.family,
            expected_steps=task.expected_steps, system_prompt=SYSTEM_PROMPT, tools=tuple(TOOL_SPECS),
            metadata={"family": task.family, "subtype": task.subtype, "split": task.split}, task=task,
        )

    def get_task(self, task_id: str) -> SimEvalTask | None:
        try:
            return self._wrap(self.suite.get(task_id))
        except KeyError:
            return None

    def families(self) -> list[str]:
        return list(self.suite.families)

    def sample_tasks(
        self, n: int, *, seed: int = 0, families: Sequence[str] | None = None, exclude: Collection[str] = ()
    ) -> list[SimEvalTask]:
        rng = random.Random(stable_int("eval-tasks", seed))
        excluded = set(exclude)
        out: list[SimEvalTask] = []
        seen: set[str] = set()
        for _ in range(50):
            if len(out) >= n:
                break
            for task in self.suite.sample(rng, max(n, 8), split="heldout", families=families):
                if task.task_id in seen or task.task_id in excluded or task.question in excluded:
                    continue
                seen.add(task.task_id)
                out.append(self._wrap(task))
                if len(out) >= n:
                    break
        return out

    def new_session(self, task: Any) -> ToolBox:
        return ToolBox(self.suite.world)

    def check_answer(self, task: Any, answer: str) -> bool:
        return answers_match(answer, task.ground_truth)

    def teacher_trace(self, task: Any, *, seed: int = 0) -> AgentTrace:
        sim_task = getattr(task, "task", None) or self.suite.get(task.task_id)
        return run_episode(sim_task, self.teacher, seed=seed, trace_id=f"teacher-{sim_task.task_id}-{seed}"[:128],
                           max_turns=self.max_turns)
