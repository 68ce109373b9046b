"""The teacher server: OpenAI-compatible responses, the official client in the loop, and (integration)
traces emitted to the broker arriving whole."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

import httpx
import openai
import pytest

from sim.conversation import HEADER_TASK_ID, HEADER_TRACE_ID
from sim.openai_agent import run_openai_episode
from sim.policies import make_policy
from sim.runner import iter_offline, run_fleet
from sim.server import create_app, running_server
from sim.settings import ErrorRates, SimSettings, with_sim
from sim.tasks import SYSTEM_PROMPT, get_suite
from sim.tools import TOOL_SPECS
from stillflow.contracts import StepType, TraceOutcomeEvent, TraceStepEvent, decode

FAST = dict(latency_ms=0.0, latency_jitter_ms=0.0)


def fast_settings(**kw: Any) -> SimSettings:
    return with_sim(SimSettings(), **{**FAST, **kw})


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://teacher")


def opening(question: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


def body(messages: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {"model": "teacher", "messages": messages, "tools": [t.to_openai() for t in TOOL_SPECS], **kw}


async def test_a_tool_call_turn_has_the_openai_shape() -> None:
    task = get_suite(0).instance("lookup", 10)
    app = create_app(fast_settings(policy="perfect"))
    async with client_for(app) as http:
        r = await http.post("/v1/chat/completions", json=body(opening(task.question)),
                            headers={HEADER_TASK_ID: task.task_id, HEADER_TRACE_ID: "tr-1"})
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion" and data["model"] == "sim-perfect-v1"
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["role"] == "assistant" and msg["content"]  # the reasoning
    (call,) = msg["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "query_db"
    assert json.loads(call["function"]["arguments"]) == task.stages[0].call.args
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert usage["price_per_1k_tokens"] == 0.01
    assert usage["cost_usd"] == pytest.approx(usage["total_tokens"] / 1000 * 0.01)
    assert data["stillflow"]["error_mode"] == "none" and data["stillflow"]["task_id"] == task.task_id
    assert r.headers[HEADER_TRACE_ID] == "tr-1"


async def test_the_final_turn_answers_after_the_tool_result() -> None:
    task = get_suite(0).instance("lookup", 10)
    app = create_app(fast_settings(policy="perfect"))
    headers = {HEADER_TASK_ID: task.task_id, HEADER_TRACE_ID: "tr-2"}
    async with client_for(app) as http:
        first = (await http.post("/v1/chat/completions", json=body(opening(task.question)), headers=headers)).json()
        msg = first["choices"][0]["message"]
        messages = opening(task.question) + [
            msg, {"role": "tool", "tool_call_id": msg["tool_calls"][0]["id"], "content": "(the row)"},
        ]
        second = (await http.post("/v1/chat/completions", json=body(messages), headers=headers)).json()
    assert second["choices"][0]["finish_reason"] == "stop"
    final = second["choices"][0]["message"]
    assert "tool_calls" not in final
    from stillflow.answers import answers_match

    assert answers_match(final["content"], task.ground_truth)
    # a longer conversation costs more prompt tokens
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]


async def test_bad_requests_get_openai_style_errors() -> None:
    app = create_app(fast_settings())
    async with client_for(app) as http:
        r = await http.post("/v1/chat/completions", json=body(opening("hi"), stream=True))
        assert r.status_code == 400 and r.json()["error"]["code"] == "stream_unsupported"
        r = await http.post("/v1/chat/completions", json={"model": "teacher"})
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
        r = await http.post("/v1/chat/completions", json=body([{"role": "system", "content": "x"}]))
        assert r.status_code == 400 and "no user message" in r.json()["error"]["message"]
        r = await http.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


async def test_unknown_tasks_get_a_plain_answer() -> None:
    app = create_app(fast_settings())
    async with client_for(app) as http:
        r = await http.post("/v1/chat/completions", json=body(opening("What is the meaning of life?")),
                            headers={HEADER_TASK_ID: "lookup-999999"})
    data = r.json()
    assert r.status_code == 200 and data["stillflow"]["error_mode"] == "unknown_task"
    assert data["choices"][0]["finish_reason"] == "stop"
    assert "enough information" in data["choices"][0]["message"]["content"]


async def test_tasks_are_found_by_their_question_without_the_header() -> None:
    task = get_suite(0).instance("search_read", 4321)
    app = create_app(fast_settings(policy="perfect"))
    async with client_for(app) as http:
        r = await http.post("/v1/chat/completions", json=body(opening(task.question)))
    data = r.json()
    assert data["stillflow"]["task_id"] == task.task_id
    assert data["stillflow"]["trace_id"].startswith("conv-")
    call = data["choices"][0]["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == task.stages[0].call.args


async def test_a_crash_is_an_http_500() -> None:
    app = create_app(fast_settings(error_rates=ErrorRates.none().model_copy(update={"crash": 1.0})))
    task = get_suite(0).instance("no_tools", 3)  # one-turn script: it crashes at once
    async with client_for(app) as http:
        r = await http.post("/v1/chat/completions", json=body(opening(task.question)),
                            headers={HEADER_TASK_ID: task.task_id, HEADER_TRACE_ID: "tr-c"})
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "server_error" and "crashed" in err["message"]
    assert err["stillflow"]["error_mode"] == "crash"


async def test_latency_is_settable() -> None:
    task = get_suite(0).instance("lookup", 1)
    app = create_app(with_sim(SimSettings(), latency_ms=200.0, latency_jitter_ms=0.0))
    async with client_for(app) as http:
        t0 = time.perf_counter()
        await http.post("/v1/chat/completions", json=body(opening(task.question)),
                        headers={HEADER_TASK_ID: task.task_id})
        assert time.perf_counter() - t0 >= 0.19


async def test_models_and_health() -> None:
    app = create_app(fast_settings())
    async with client_for(app) as http:
        models = (await http.get("/v1/models")).json()
        health = (await http.get("/healthz")).json()
    assert models["data"][0]["id"] == "sim-teacher-v1"
    assert health["status"] == "ok" and health["policy"] == "teacher"


# --- the official openai client in the loop -----------------------------------------------------


async def test_openai_mode_reproduces_the_offline_traces() -> None:
    """Same seed, same trace ids: the agent talking to the server records the offline run's steps."""
    seed = 4
    offline = list(iter_offline(40, make_policy("teacher"), seed=seed, split="all"))
    suite = get_suite(0)
    async with running_server(fast_settings(seed=seed)) as url:
        client = openai.AsyncOpenAI(base_url=url, api_key="sim", max_retries=0)
        for off in offline:
            on = await run_openai_episode(client, suite.get(off.task_id), trace_id=off.trace_id,
                                          agent_id=off.agent_id)
            key = [(s.step_type, s.content, s.tool_name, s.tool_args, s.tool_result, s.tool_call_id) for s in off.steps]
            assert [(s.step_type, s.content, s.tool_name, s.tool_args, s.tool_result, s.tool_call_id)
                    for s in on.steps] == key, off.trace_id
            assert (on.final_output, on.success, on.total_tokens) == (off.final_output, off.success, off.total_tokens)
            assert on.metadata["error_mode"] == off.metadata["error_mode"]
            assert on.cost_usd == pytest.approx(off.cost_usd, abs=1e-6)
            assert (on.error is None) == (off.error is None)
            if on.error:
                assert "HTTP 500" in on.error


# --- integration: through the teacher server to the broker ------------------------------------


@pytest.mark.integration
async def test_fleet_through_the_teacher_server_emits_whole_traces(settings: Any) -> None:
    from stillflow.sdk import TraceEmitter
    from tests.helpers import read_topics

    sim_settings = with_sim(settings, **FAST, seed=1)
    n = 24
    async with running_server(sim_settings) as url:
        client = openai.AsyncOpenAI(base_url=url, api_key="sim", max_retries=0)
        async with TraceEmitter(sim_settings) as em:
            report = await run_fleet(openai_client=client, emitter=em, agents=4, rate=50.0, duration_s=30.0,
                                     max_traces=n, seed=1, run_id="it", keep_traces=True)
    assert report.n == n and report.agent_errors == 0
    traces = {t.trace_id: t for t in report.traces}
    n_steps = sum(len(t.steps) for t in traces.values())
    topics = [settings.topics.trace_steps, settings.topics.trace_outcomes]
    records = await read_topics(settings, topics, expected=n_steps + n, timeout=60)
    steps: dict[str, dict[int, TraceStepEvent]] = defaultdict(dict)
    outcomes: dict[str, TraceOutcomeEvent] = {}
    for rec in records:
        assert rec.key is not None
        if rec.topic == settings.topics.trace_steps:
            ev = decode(rec.value, TraceStepEvent)
            assert rec.key.decode() == ev.trace_id
            steps[ev.trace_id][ev.seq] = ev
        else:
            out = decode(rec.value, TraceOutcomeEvent)
            assert rec.key.decode() == out.trace_id
            outcomes[out.trace_id] = out
    assert set(outcomes) == set(traces)
    for trace_id, trace in traces.items():
        out = outcomes[trace_id]
        assert out.n_steps == len(trace.steps)
        assert sorted(steps[trace_id]) == list(range(out.n_steps)), trace_id
        rebuilt = out.to_trace([steps[trace_id][i].step for i in range(out.n_steps)])
        assert rebuilt == trace
        assert rebuilt.tools == TOOL_SPECS and rebuilt.ground_truth and rebuilt.expected_steps
        if trace.error is None:
            assert rebuilt.steps[-1].step_type is StepType.output
    assert {t.metadata["family"] for t in traces.values()} >= {"lookup", "multi_hop", "no_tools"}
