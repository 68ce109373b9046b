"""TraceCollector on agents that follow the seed's protocol, through the real broker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from stillflow.contracts import TraceOutcomeEvent, TraceStepEvent, decode
from stillflow.sdk import TraceCollector, TraceEmitter
from tests.helpers import read_topics

pytestmark = pytest.mark.integration


@dataclass
class StepResult:
    type: str
    content: str = ""
    tool_name: str | None = None
    tool_args: dict[str, Any] | None = None
    tool_result: Any = None
    tokens: int = 3


@dataclass
class Task:
    task_id: str
    input_text: str
    ground_truth: str


@dataclass
class ScriptedAgent:
    script: list[StepResult]
    fail_at: int | None = None
    model_id: str = "teacher-x"
    seen: list[int] = field(default_factory=list)

    async def step(self, state: int) -> StepResult:
        if self.fail_at is not None and state == self.fail_at:
            raise RuntimeError(f"tool server unreachable at step {state}")
        self.seen.append(state)
        return self.script[state]

    async def run(self, task: Task) -> str:
        out = ""
        for i in range(len(self.script)):
            res = await self.step(i)
            if res.type == "output":
                out = res.content
        return out


SCRIPT = [
    StepResult("reasoning", "I should look it up."),
    StepResult("tool_call", tool_name="search", tool_args={"query": "capital of France"}),
    StepResult("observation", tool_name="search", tool_result={"hits": ["Paris is the capital"]}),
    StepResult("output", "Paris"),
]


async def _read(settings, n):
    recs = await read_topics(settings, [settings.topics.trace_steps, settings.topics.trace_outcomes], expected=n)
    steps = [decode(r.value, TraceStepEvent) for r in recs if r.topic == settings.topics.trace_steps]
    outs = [decode(r.value, TraceOutcomeEvent) for r in recs if r.topic == settings.topics.trace_outcomes]
    return sorted(steps, key=lambda e: e.seq), outs


async def test_successful_run_is_recorded(settings) -> None:
    agent = ScriptedAgent(SCRIPT)
    original = agent.step
    async with TraceEmitter(settings) as em:
        trace = await TraceCollector(em).collect(agent, Task("geo-1", "Capital of France?", "Paris"))
    assert agent.step == original and "step" not in agent.__dict__
    assert trace.success and trace.final_output == "Paris" and trace.total_tokens == 12
    assert trace.model_id == "teacher-x" and trace.task_id == "geo-1" and trace.ground_truth == "Paris"
    steps, outs = await _read(settings, 5)
    assert [s.step.step_type.value for s in steps] == ["reasoning", "tool_call", "observation", "output"]
    assert steps[2].step.tool_result == {"hits": ["Paris is the capital"]}  # kept as JSON, not repr'd
    assert len(outs) == 1 and outs[0].success and outs[0].n_steps == 4


async def test_agent_raising_mid_run_emits_steps_and_failed_outcome(settings) -> None:
    agent = ScriptedAgent(SCRIPT, fail_at=2)
    original = agent.step
    async with TraceEmitter(settings) as em:
        with pytest.raises(RuntimeError, match="unreachable"):
            await TraceCollector(em).collect(agent, Task("geo-2", "Capital of Spain?", "Madrid"), trace_id="tr-fail")
    assert agent.step == original and "step" not in agent.__dict__  # restored even though run raised
    steps, outs = await _read(settings, 3)
    assert [s.seq for s in steps] == [0, 1] and all(s.trace_id == "tr-fail" for s in steps)
    assert len(outs) == 1
    out = outs[0]
    assert out.trace_id == "tr-fail" and not out.success and out.n_steps == 2
    assert out.error == "RuntimeError: tool server unreachable at step 2"


async def test_instance_level_step_is_restored(settings) -> None:
    agent = ScriptedAgent(SCRIPT)

    async def own_step(state: int) -> StepResult:
        return SCRIPT[state]

    agent.step = own_step  # an agent whose step is an instance attribute
    async with TraceEmitter(settings) as em:
        trace = await TraceCollector(em).collect(agent, "What is the capital of France?", reraise=False)
    assert agent.step is own_step
    assert trace.input_text == "What is the capital of France?" and trace.final_output == "Paris"


async def test_invalid_step_fails_the_run_with_a_named_field(settings) -> None:
    agent = ScriptedAgent([StepResult("dance", "?")])
    async with TraceEmitter(settings) as em:
        trace = await TraceCollector(em).collect(agent, "q", reraise=False)
    assert not trace.success and "step_type" in (trace.error or "")
