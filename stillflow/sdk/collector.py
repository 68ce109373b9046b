"""`TraceCollector`: record an agent's run by wrapping its `step` coroutine (the seed's collector).

The agent protocol (the seed's): `agent.step(state)` is a coroutine returning an object (or dict) with
`type`/`step_type`, `content`, `tool_name`, `tool_args`, `tool_result` (optionally `tool_call_id`,
`tokens`); `agent.run(task)` drives the steps and returns the final answer (a string, or an object /
dict with `output`/`final_output`); `agent.model_id` names the model.

Each step is emitted live; the outcome is emitted when `run` returns or raises (then success is False
and the error text is kept), and the original `step` is restored in every case.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from stillflow.contracts import AgentTrace, StepType, ToolSpec, TraceOutcomeEvent, TraceStep, new_id, utcnow
from stillflow.sdk.emitter import TraceEmitter

__all__ = ["TraceCollector", "step_from_result"]

_TYPE_ALIASES = {"action": "tool_call", "tool": "tool_call", "thought": "reasoning", "final": "output",
                 "answer": "output", "result": "observation"}


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        if isinstance(obj, Mapping):
            if name in obj:
                return obj[name]
        elif hasattr(obj, name):
            return getattr(obj, name)
    return default


def _json_value(value: Any) -> Any:
    """A tool's return value as JSON: JSON types as they are (dict keys as text), tuples as lists, anything
    else (a dataclass, a datetime, ...) as its `str()` — what the agent would have shown the model."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return str(value)


def step_from_result(result: Any) -> TraceStep:
    """Convert whatever `agent.step` returned into a validated TraceStep."""
    kind = _get(result, "step_type", "type")
    if isinstance(kind, StepType):
        kind = kind.value
    if isinstance(kind, str):
        kind = _TYPE_ALIASES.get(kind.lower(), kind.lower())
    tool_result = _get(result, "tool_result")
    return TraceStep(
        step_type=kind,
        content=_get(result, "content", default="") or "",
        tool_name=_get(result, "tool_name"),
        tool_args=_get(result, "tool_args"),
        tool_result=_json_value(tool_result),
        tool_call_id=_get(result, "tool_call_id"),
    )


class TraceCollector:
    """Wraps an agent for one run at a time and publishes what it does.

    >>> async with TraceEmitter() as em:
    ...     trace = await TraceCollector(em).collect(agent, task)
    """

    def __init__(self, emitter: TraceEmitter, *, tools: list[ToolSpec] | None = None, system_prompt: str = "",
                 workload: str | None = None) -> None:
        self.emitter = emitter
        self.workload = workload  # the job of the agents this collector records (else the emitter's)
        self.tools = tools or []
        self.system_prompt = system_prompt

    async def collect(
        self,
        agent: Any,
        task: Any,
        *,
        trace_id: str | None = None,
        task_id: str | None = None,
        input_text: str | None = None,
        ground_truth: str | None = None,
        expected_steps: int | None = None,
        metadata: dict[str, str] | None = None,
        workload: str | None = None,
        reraise: bool = True,
    ) -> AgentTrace:
        """Run `agent.run(task)` with its steps recorded; return the trace (also when it failed, if
        `reraise` is False)."""
        trace_id = trace_id or new_id()
        task_id = task_id or _get(task, "task_id", "id") or trace_id
        input_text = input_text if input_text is not None else _task_text(task)
        ground_truth = ground_truth if ground_truth is not None else _get(task, "ground_truth")
        expected_steps = expected_steps if expected_steps is not None else _get(task, "expected_steps")
        agent_id = str(_get(agent, "agent_id", default=self.emitter.agent_id))
        workload = workload or _get(agent, "workload") or self.workload or self.emitter.workload
        steps: list[TraceStep] = []
        tokens = 0
        original = agent.step
        had_own_step = "step" in getattr(agent, "__dict__", {})
        started, t0 = utcnow(), time.perf_counter()

        async def recorded_step(*args: Any, **kwargs: Any) -> Any:
            nonlocal tokens
            result = await original(*args, **kwargs)
            step = step_from_result(result)
            tokens += int(_get(result, "tokens", default=0) or 0)
            seq = len(steps)
            steps.append(step)
            await self.emitter.emit_step(trace_id=trace_id, task_id=task_id, seq=seq, step=step, agent_id=agent_id,
                                         workload=workload)
            return result

        agent.step = recorded_step
        error: BaseException | None = None
        final_output = ""
        success = False
        try:
            result = await agent.run(task)
            final_output = _output_text(result, steps)
            success = bool(_get(result, "success", default=True))
        except Exception as exc:  # the agent's failure is data: record it, then re-raise
            error = exc
        finally:
            # Restore exactly what was there: drop our instance attribute if `step` was a class method.
            if had_own_step:
                agent.step = original
            else:
                del agent.step

        trace = AgentTrace(
            trace_id=trace_id,
            task_id=task_id,
            agent_id=agent_id,
            input_text=input_text,
            system_prompt=self.system_prompt,
            tools=self.tools,
            steps=steps,
            final_output=final_output,
            success=success and error is None,
            error=None if error is None else f"{type(error).__name__}: {error}",
            model_id=str(_get(agent, "model_id", default="unknown")),
            total_tokens=tokens,
            wall_time_seconds=time.perf_counter() - t0,
            ground_truth=None if ground_truth is None else str(ground_truth),
            expected_steps=expected_steps,
            workload=workload,
            metadata=metadata or {},
            timestamp=started,
        )
        await self.emitter.emit_outcome(TraceOutcomeEvent.from_trace(trace))
        if error is not None and reraise:
            raise error
        return trace


def _task_text(task: Any) -> str:
    if isinstance(task, str):
        return task
    text = _get(task, "input_text", "prompt", "question", "description", "input")
    return str(text) if text is not None else str(task)


def _output_text(result: Any, steps: list[TraceStep]) -> str:
    if isinstance(result, str):
        return result
    out = _get(result, "final_output", "output", "answer")
    if out is not None:
        return str(out)
    for step in reversed(steps):
        if step.step_type is StepType.output:
            return step.content
    return "" if result is None else str(result)
