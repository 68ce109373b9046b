"""The evaluation environment: where a student is run as an agent. A plugin, loaded by import path.

Exports `EvalTask`, `ToolOutcome`, the protocols `EvalSession` and `EvalEnvironment`, and
`load_environment(spec, **options)` (`"package.module:factory"`, e.g. the default
`"sim.environment:SimEvalEnvironment"`).

Everything here is structural (protocols): an environment package need not import `trainer` (the
sim's adapter cannot: `sim` depends on `stillflow` only), it returns objects of the right shape.
`SimpleTask` and `ToolOutcome` are ready-made shapes for plugins that may import this module.

An environment knows its tasks (id, family, question, ground truth, expected step count, system prompt
and tool specs), runs tool calls for one episode at a time (`new_session(task).execute(name, args)`,
never raising), and checks answers. Optionally it can run the teacher on a task
(`teacher_trace(task, seed=...)` → `AgentTrace`), which gives the baseline the student is compared
with; without it the baseline is the teacher's held-out data.

The trainer never imports an environment statically: `trainer/` depends on `stillflow` only.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from stillflow.contracts import AgentTrace, ToolSpec

__all__ = [
    "EvalTask",
    "SimpleTask",
    "ToolOutcome",
    "ToolResultLike",
    "EvalSession",
    "EvalEnvironment",
    "load_environment",
    "task_opening",
    "task_tools",
    "teacher_trace",
    "EnvironmentError_",
]


@runtime_checkable
class EvalTask(Protocol):
    """A task as an environment describes it (attributes only)."""

    task_id: str
    question: str
    ground_truth: str | None
    family: str | None
    expected_steps: int | None
    system_prompt: str
    tools: Sequence[ToolSpec]


@dataclass(frozen=True)
class SimpleTask:
    """A ready-made `EvalTask`."""

    task_id: str
    question: str
    ground_truth: str | None
    family: str | None = None
    expected_steps: int | None = None
    system_prompt: str = ""
    tools: tuple[ToolSpec, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


def task_tools(task: EvalTask) -> list[dict[str, Any]]:
    """The task's tools as OpenAI function specs."""
    return [t.to_openai() for t in task.tools]


def task_opening(task: EvalTask) -> list[dict[str, Any]]:
    """The conversation's first messages: system (when there is one) and the question."""
    msgs: list[dict[str, Any]] = []
    if task.system_prompt:
        msgs.append({"role": "system", "content": task.system_prompt})
    msgs.append({"role": "user", "content": task.question})
    return msgs


class ToolResultLike(Protocol):
    text: str
    ok: bool
    refused: bool


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call returned: the observation text; `ok` False for errors; `refused` for calls the
    environment refused as destructive."""

    text: str
    ok: bool = True
    refused: bool = False


@runtime_checkable
class EvalSession(Protocol):
    """One episode's tools (an episode's state, e.g. retried reads, lives here)."""

    def execute(self, name: str, arguments: Any) -> ToolResultLike: ...


@runtime_checkable
class EvalEnvironment(Protocol):
    name: str

    def get_task(self, task_id: str) -> EvalTask | None:
        """The task with this id, or None when the environment does not know it."""
        ...

    def sample_tasks(
        self, n: int, *, seed: int = 0, families: Sequence[str] | None = None, exclude: Collection[str] = ()
    ) -> list[EvalTask]:
        """`n` held-out tasks (never training material), none whose id or question is in `exclude`."""
        ...

    def families(self) -> list[str]: ...

    def new_session(self, task: EvalTask) -> EvalSession: ...

    def check_answer(self, task: EvalTask, answer: str) -> bool: ...


class EnvironmentError_(RuntimeError):
    """The environment named in the settings cannot be loaded."""


def load_environment(spec: str, **options: Any) -> EvalEnvironment:
    """Import `module:attribute` and call it with `options` (a class or a factory)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise EnvironmentError_(
            f"environment {spec!r} is not 'module:attribute' (e.g. sim.environment:SimEvalEnvironment)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EnvironmentError_(f"cannot import the evaluation environment {spec!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise EnvironmentError_(f"{module_name} has no attribute {attr!r}")
    env = factory(**options)
    required = ("get_task", "sample_tasks", "families", "new_session", "check_answer")
    missing = [m for m in required if not hasattr(env, m)]
    if missing:
        raise EnvironmentError_(f"{spec} is not an EvalEnvironment: it lacks {', '.join(missing)}")
    return env


def teacher_trace(env: EvalEnvironment, task: EvalTask, *, seed: int = 0) -> AgentTrace | None:
    fn = getattr(env, "teacher_trace", None)
    return fn(task, seed=seed) if fn is not None else None
