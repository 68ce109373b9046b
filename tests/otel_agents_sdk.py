"""One sim task run by the OpenAI Agents SDK (`agents`) against the sim teacher.

`run_agents_episode(client, task, trace_id=...)` builds an `agents.Agent` whose instructions are
`sim.tasks.SYSTEM_PROMPT` and whose function tools wrap the sim `ToolBox` (the four `TOOL_SPECS`),
over an `OpenAIChatCompletionsModel` on `client` (an `openai.AsyncOpenAI` pointed at the teacher),
and runs `task.question`. The episode's trace id / task id travel as `X-Stillflow-*` default headers
of a per-episode copy of the client, so the teacher continues the same planned episode.

Tracing: the Agents SDK's own trace upload to OpenAI is never used. Call `instrument_agents(tp)` once
(it installs `OpenInferenceTracingProcessor` as the *only* trace processor, `exclusive_processor=True`,
which displaces the SDK's default OpenAI backend exporter) — `agents.set_tracing_disabled(True)` must
NOT be used with OpenInference, since it turns off the SDK traces the processor converts to spans.
Without instrumentation, pass `disable_sdk_tracing=True` to `configure_agents_sdk` instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sim.conversation import HEADER_TASK_ID, HEADER_TRACE_ID, HEADER_WORKLOAD, split_final
from sim.tasks import SYSTEM_PROMPT, Task
from sim.tools import ERROR_PREFIX, TOOL_SPECS, ToolBox
from sim.world import get_world
from stillflow.answers import answers_match

__all__ = ["AgentsEpisode", "configure_agents_sdk", "instrument_agents", "make_agent", "run_agents_episode"]


@dataclass
class AgentsEpisode:
    task_id: str
    trace_id: str
    final_output: str
    success: bool
    error: str | None = None
    tool_calls: int = 0


def configure_agents_sdk(*, disable_sdk_tracing: bool = False) -> None:
    """No OpenAI-platform calls: chat completions API, no tracing export key; optionally no SDK tracing."""
    import agents

    agents.set_default_openai_api("chat_completions")
    if disable_sdk_tracing:
        agents.set_tracing_disabled(True)


def instrument_agents(tracer_provider: Any) -> Any:
    """OpenInference over the Agents SDK, as the exclusive trace processor (no upload to OpenAI)."""
    from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor

    configure_agents_sdk(disable_sdk_tracing=False)
    inst = OpenAIAgentsInstrumentor()
    inst.instrument(tracer_provider=tracer_provider, exclusive_processor=True)
    return inst


def _tool(spec: Any, toolbox: ToolBox, counter: list[int]) -> Any:
    from agents import FunctionTool

    async def invoke(_ctx: Any, raw: str, _name: str = spec.name) -> str:
        counter[0] += 1
        try:
            args = json.loads(raw or "{}")
        except json.JSONDecodeError as exc:
            return f"{ERROR_PREFIX}arguments are not valid JSON ({exc.msg})"
        if not isinstance(args, dict):
            return f"{ERROR_PREFIX}arguments must be a JSON object"
        return toolbox.execute(_name, args).text

    # not strict: the sim schemas have optional properties (top_k) that strict mode would force
    return FunctionTool(name=spec.name, description=spec.description, params_json_schema=dict(spec.parameters),
                        on_invoke_tool=invoke, strict_json_schema=False)


def make_agent(client: Any, task: Task, *, trace_id: str, model: str = "teacher",
               toolbox: ToolBox | None = None, counter: list[int] | None = None) -> Any:
    from agents import Agent, OpenAIChatCompletionsModel

    headers = {HEADER_TRACE_ID: trace_id, HEADER_TASK_ID: task.task_id, HEADER_WORKLOAD: task.family}
    episode_client = client.with_options(default_headers=headers)
    box = toolbox or ToolBox(get_world(task.world_seed))
    calls = counter if counter is not None else [0]
    return Agent(
        name="sim-agent",
        instructions=SYSTEM_PROMPT,
        model=OpenAIChatCompletionsModel(model=model, openai_client=episode_client),
        tools=[_tool(spec, box, calls) for spec in TOOL_SPECS],
    )


async def run_agents_episode(client: Any, task: Task, *, trace_id: str, model: str = "teacher",
                             max_turns: int = 16) -> AgentsEpisode:
    """Run `task` with the Agents SDK; final output and success (answers_match vs the ground truth)."""
    from agents import RunConfig, Runner

    counter = [0]
    agent = make_agent(client, task, trace_id=trace_id, model=model, counter=counter)
    final, error = "", None
    try:
        result = await Runner.run(
            agent, task.question, max_turns=max_turns,
            run_config=RunConfig(workflow_name="sim.agents_episode", trace_include_sensitive_data=True,
                                 group_id=trace_id, trace_metadata={"task_id": task.task_id}),
        )
        _reasoning, final = split_final(str(result.final_output or ""))
    except Exception as exc:  # a failed run is an unsuccessful episode
        error = f"{type(exc).__name__}: {exc}"
    return AgentsEpisode(task_id=task.task_id, trace_id=trace_id, final_output=final,
                         success=error is None and answers_match(final, task.ground_truth), error=error,
                         tool_calls=counter[0])
