"""An agent that talks to any OpenAI-compatible chat-completions endpoint and runs the tools locally.

Exports `run_openai_episode(client, task, ...)` (one episode → `AgentTrace`, steps emitted live when
an emitter is given) and `make_client(settings)` (an `openai.AsyncOpenAI` for `sim.base_url`).

This is the loop a real agent runs: send the conversation and the tool schemas, execute the returned
tool calls against the `ToolBox`, append the results, repeat until the model answers. The trace id
and task id travel in the `X-Stillflow-Trace-Id` / `X-Stillflow-Task-Id` request headers; the teacher
server (and the router) use them to continue the same episode.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from sim.conversation import HEADER_TASK_ID, HEADER_TRACE_ID, HEADER_WORKLOAD, split_final
from sim.tasks import SYSTEM_PROMPT, Task
from sim.tools import ERROR_PREFIX, TOOL_SPECS, ToolBox
from sim.world import World, get_world, stable_hex
from stillflow.answers import answers_match
from stillflow.contracts import TOOL_NAME_PATTERN, AgentTrace, TraceOutcomeEvent, TraceStep, is_valid_id, utcnow

__all__ = ["run_openai_episode", "make_client"]

_TOOL = re.compile(TOOL_NAME_PATTERN)


def make_client(settings: Any) -> Any:
    """`openai.AsyncOpenAI` for `settings.sim` (base_url, api_key, timeout, retries)."""
    import openai

    sim = settings.sim
    if not sim.base_url:
        raise ValueError("no endpoint: set STILLFLOW_SIM__BASE_URL or pass --base-url")
    return openai.AsyncOpenAI(
        base_url=sim.base_url,
        api_key=sim.api_key.get_secret_value(),
        timeout=sim.request_timeout_s,
        max_retries=sim.max_retries,
    )


def _safe_id(raw: str, trace_id: str, n: int) -> str:
    return raw if raw and is_valid_id(raw) else f"call_{stable_hex('callid', trace_id, n, raw, n=20)}"


def _safe_tool_name(raw: str) -> str:
    if _TOOL.match(raw or ""):
        return raw
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", raw or "")[:64] or "unnamed"
    return cleaned if _TOOL.match(cleaned) else f"_{cleaned}"[:64]


def _extra(obj: Any) -> dict[str, Any]:
    extra = getattr(obj, "model_extra", None) or {}
    return extra if isinstance(extra, dict) else {}


async def run_openai_episode(
    client: Any,
    task: Task,
    *,
    model: str = "teacher",
    trace_id: str,
    agent_id: str = "agent-0",
    emitter: Any = None,
    world: World | None = None,
    max_turns: int = 16,
    price_per_1k_tokens: float | None = 0.01,
    extra_headers: dict[str, str] | None = None,
) -> AgentTrace:
    """Run `task` against the endpoint behind `client` (an `openai.AsyncOpenAI`) and return the trace.

    A request that fails (the server's 5xx, a timeout, a connection error) ends the episode like a
    crash: success False, the error text kept, the steps so far kept. Token counts and cost come from
    the responses' `usage` (its `cost_usd` when the server reports one, else tokens × the price).
    """
    import openai

    toolbox = ToolBox(world or get_world(task.world_seed))
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": task.question},
    ]
    tools = [t.to_openai() for t in TOOL_SPECS]
    # the sim's agents do one job per task family: the router routes (and the trainer gates) by it
    headers = {HEADER_TRACE_ID: trace_id, HEADER_TASK_ID: task.task_id, HEADER_WORKLOAD: task.family,
               **(extra_headers or {})}
    steps: list[TraceStep] = []
    started, t0 = utcnow(), time.perf_counter()
    tokens, cost, reported_cost = 0, 0.0, False
    final, error = "", None
    meta = {"family": task.family, "split": task.split, "error_mode": "unknown", "policy": "openai",
            "subtype": task.subtype}
    model_id = model

    async def record(step: TraceStep) -> None:
        steps.append(step)
        if emitter is not None:
            await emitter.emit_step(trace_id=trace_id, task_id=task.task_id, seq=len(steps) - 1, step=step,
                                    agent_id=agent_id)

    try:
        for _turn in range(max_turns):
            resp = await client.chat.completions.create(
                model=model, messages=messages, tools=tools, extra_headers=headers,
            )
            model_id = resp.model or model_id
            ext = _extra(resp).get("stillflow") or {}
            if isinstance(ext, dict):
                meta["error_mode"] = str(ext.get("error_mode", meta["error_mode"]))
                meta["policy"] = str(ext.get("policy", meta["policy"]))
            if resp.usage is not None:
                tokens += int(resp.usage.total_tokens or 0)
                usage_cost = _extra(resp.usage).get("cost_usd")
                if usage_cost is not None:
                    cost += float(usage_cost)
                    reported_cost = True
            if not resp.choices:
                raise RuntimeError("the response has no choices")
            msg = resp.choices[0].message
            now = utcnow()
            if msg.tool_calls:
                if msg.content:
                    await record(TraceStep(step_type="reasoning", content=msg.content, timestamp=now))
                assistant: dict[str, Any] = {"role": "assistant", "content": msg.content, "tool_calls": []}
                pending = []
                for tc in msg.tool_calls:
                    fn = tc.function
                    call_id = _safe_id(tc.id, trace_id, len(steps))
                    assistant["tool_calls"].append({"id": tc.id, "type": "function",
                                                    "function": {"name": fn.name, "arguments": fn.arguments}})
                    try:
                        args = json.loads(fn.arguments or "{}")
                        bad_json = None
                    except json.JSONDecodeError as exc:
                        args, bad_json = {"_raw": fn.arguments}, f"{ERROR_PREFIX}arguments are not valid JSON ({exc.msg})"
                    if not isinstance(args, dict):
                        args, bad_json = {"_value": args}, f"{ERROR_PREFIX}arguments must be a JSON object"
                    pending.append((tc.id, call_id, fn.name, args, bad_json))
                messages.append(assistant)
                for raw_id, call_id, name, args, bad_json in pending:
                    tool_name = _safe_tool_name(name)
                    await record(TraceStep(step_type="tool_call", tool_name=tool_name, tool_args=args,
                                           tool_call_id=call_id, timestamp=utcnow()))
                    result = bad_json or toolbox.execute(name, args).text
                    await record(TraceStep(step_type="observation", tool_name=tool_name, tool_call_id=call_id,
                                           tool_result=result, timestamp=utcnow()))
                    messages.append({"role": "tool", "tool_call_id": raw_id, "content": result})
            else:
                reasoning, answer = split_final(msg.content or "")
                if reasoning:
                    await record(TraceStep(step_type="reasoning", content=reasoning, timestamp=now))
                await record(TraceStep(step_type="output", content=answer, timestamp=now))
                final = answer
                break
        else:
            error = f"no final answer after {max_turns} turns"
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        ext = body.get("stillflow") if isinstance(body.get("stillflow"), dict) else {}
        if ext:
            meta["error_mode"] = str(ext.get("error_mode", meta["error_mode"]))
        detail = body.get("message") if isinstance(body.get("message"), str) else exc.message
        error = f"{type(exc).__name__}: HTTP {exc.status_code}: {detail}"
    except openai.APIError as exc:
        error = f"{type(exc).__name__}: {exc}"
    if not reported_cost and price_per_1k_tokens is not None:
        cost = tokens / 1000 * price_per_1k_tokens
    trace = AgentTrace(
        trace_id=trace_id,
        task_id=task.task_id,
        agent_id=agent_id,
        input_text=task.question,
        system_prompt=SYSTEM_PROMPT,
        tools=list(TOOL_SPECS),
        steps=steps,
        final_output=final,
        success=error is None and answers_match(final, task.ground_truth),
        error=error,
        model_id=model_id,
        total_tokens=tokens,
        wall_time_seconds=time.perf_counter() - t0,
        ground_truth=task.ground_truth,
        expected_steps=task.expected_steps,
        cost_usd=round(cost, 6),
        workload=task.family,
        metadata=meta,
        timestamp=started,
    )
    if emitter is not None:
        await emitter.emit_outcome(TraceOutcomeEvent.from_trace(trace))
    return trace
