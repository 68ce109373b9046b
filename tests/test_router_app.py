"""The router over HTTP with the official openai client: a student that answers (tool call, final answer,
streaming), the sim teacher when the student is unsure, sticky escalation, shadow and canary, auth and
size limits, a teacher that is down, versions that must not be served. No broker: events go to a
recording sink (the broker path is in test_router_live.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from router.app import running_router
from router.emit import NullSink
from router.service import RouterService
from router.settings import RouterSettings, with_router
from sim.server import running_server
from sim.settings import SimSettings, with_sim
from sim.tasks import SYSTEM_PROMPT, get_suite
from sim.tools import TOOL_SPECS
from stillflow.contracts import ModelVersionEvent
from tests.router_student import AFTER_CALL, ANSWER, OPENING, TOOLS, memorised_student, registry_with

pytestmark = pytest.mark.slow


class RecordingSink(NullSink):
    def __init__(self) -> None:
        self.turns: list[dict[str, Any]] = []
        self.decisions: list[Any] = []
        self.outcomes: list[Any] = []

    def turn(self, **kw: Any) -> None:
        self.turns.append(kw)
        self.decisions.append(kw["decision"])

    def decision(self, decision: Any) -> None:
        self.decisions.append(decision)

    async def outcome(self, event: Any) -> None:
        self.outcomes.append(event)


@pytest.fixture(scope="module")
def student_src() -> Path:
    return memorised_student()


def router_settings(tmp_path: Path, teacher_url: str = "http://127.0.0.1:9/v1", **router: Any) -> RouterSettings:
    teacher = {"base_url": teacher_url, "retries": 0, "timeout_s": 5.0, "connect_timeout_s": 1.0,
               **router.pop("teacher", {})}
    return with_router(RouterSettings(), registry_dir=tmp_path / "registry", kafka=False, teacher=teacher, **router)


def client(url: str, key: str = "none") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)


async def test_a_confident_student_serves_tool_calls_and_answers(tmp_path: Path, student_src: Path) -> None:
    registry_with(tmp_path / "registry", student_src, 1)
    settings = router_settings(tmp_path, threshold_override=0.5)
    sink = RecordingSink()
    svc = RouterService(settings, sink=sink)
    async with running_router(settings, service=svc) as url:
        ai = client(url)
        headers = {"X-Stillflow-Trace-Id": "tr-student-1"}
        raw = await ai.chat.completions.with_raw_response.create(model="any", messages=OPENING, tools=TOOLS,
                                                                 extra_headers=headers)
        assert raw.headers["x-stillflow-served-by"] == "v0001"
        first = raw.parse()
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"key": "alpha"}
        assert first.usage.completion_tokens > 0 and first.usage.total_tokens > first.usage.prompt_tokens
        assert first.model == "student-v0001"

        second = await ai.chat.completions.create(model="any", messages=AFTER_CALL, tools=TOOLS, extra_headers=headers)
        assert second.choices[0].message.content == ANSWER and second.choices[0].finish_reason == "stop"

        # streaming: the same turn, in chunks
        stream = await ai.chat.completions.create(model="any", messages=OPENING, tools=TOOLS, stream=True,
                                                  stream_options={"include_usage": True})
        name, args, finish, usage = "", "", None, None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                for tc in c.delta.tool_calls or []:
                    name += tc.function.name or ""
                    args += tc.function.arguments or ""
                finish = c.finish_reason or finish
        assert (name, json.loads(args), finish) == ("lookup", {"key": "alpha"}, "tool_calls") and usage.total_tokens

        # the outcome closes the trace: steps counted by the router (tool_call, observation, output)
        async with httpx.AsyncClient(base_url=url) as http:
            r = await http.post("/stillflow/outcome", json={"trace_id": "tr-student-1", "success": True})
            assert r.status_code == 202 and r.json()["n_steps"] == 3
            r = await http.post("/stillflow/outcome", json={"trace_id": "tr-student-1", "success": True})
            assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_trace"
    reasons = [d.reason for d in sink.decisions]
    assert reasons == ["confident"] * 3 and all(d.served_by == "v0001" and d.confidence > 0.9 for d in sink.decisions)
    (outcome,) = sink.outcomes
    assert outcome.trace_id == "tr-student-1" and outcome.n_steps == 3 and outcome.final_output == ANSWER
    steps = [(t["first_seq"], [s.step_type.value for s in t["steps"]]) for t in sink.turns[:2]]
    assert steps == [(0, ["tool_call"]), (1, ["observation", "output"])]


def sim_opening(task: Any) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task.question}]


async def test_an_unsure_student_escalates_to_the_teacher_and_the_trace_sticks(tmp_path: Path,
                                                                               student_src: Path) -> None:
    registry_with(tmp_path / "registry", student_src, 1)
    task = get_suite(0).instance("lookup", 10)
    sim = with_sim(SimSettings(), policy="perfect", latency_ms=0.0, latency_jitter_ms=0.0)
    sink = RecordingSink()
    async with running_server(sim) as teacher_url:
        settings = router_settings(tmp_path, teacher_url, threshold_override=1.0)
        async with running_router(settings, service=RouterService(settings, sink=sink)) as url:
            ai = client(url)
            headers = {"X-Stillflow-Trace-Id": "tr-teach-1", "X-Stillflow-Task-Id": task.task_id}
            tools = [t.to_openai() for t in TOOL_SPECS]
            raw = await ai.chat.completions.with_raw_response.create(
                model="teacher", messages=sim_opening(task), tools=tools, extra_headers=headers)
            assert raw.headers["x-stillflow-served-by"] == "teacher"
            msg = raw.parse().choices[0].message
            assert msg.tool_calls[0].function.name == "query_db"
            assert json.loads(msg.tool_calls[0].function.arguments) == task.stages[0].call.args

            stream = await ai.chat.completions.create(model="teacher", messages=sim_opening(task), tools=tools,
                                                      stream=True, extra_headers=headers)
            names = [tc.function.name async for chunk in stream for c in chunk.choices
                     for tc in (c.delta.tool_calls or []) if tc.function.name]
            assert names == ["query_db"]
    # the memorised student has never seen this task: its turn is no valid answer (cut off, or a tool the
    # request does not offer), so the teacher answers, and keeps the trace
    assert [d.reason for d in sink.decisions] == ["invalid_output", "sticky"]
    first = sink.decisions[0]
    assert first.served_by == "teacher" and first.student_version == "v0001" and first.error
    # the teacher's turn is recorded as steps: it becomes training data
    assert [s.step_type.value for s in sink.turns[0]["steps"]][-1] == "tool_call"


async def test_teacher_down_is_a_prompt_503_unless_the_student_is_confident(tmp_path: Path,
                                                                              student_src: Path) -> None:
    import asyncio

    registry_with(tmp_path / "registry", student_src, 1)
    # a teacher that accepts connections and never answers
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    hanging = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        settings = router_settings(tmp_path, hanging, threshold_override=1.0,
                                   teacher={"timeout_s": 0.5, "retries": 1, "retry_backoff_s": 0.05})
        sink = RecordingSink()
        async with running_router(settings, service=RouterService(settings, sink=sink)) as url:
            ai = client(url)
            t0 = time.perf_counter()
            with pytest.raises(openai.APIStatusError) as err:
                await ai.chat.completions.create(model="m", messages=OPENING, tools=TOOLS)
            took = time.perf_counter() - t0
            assert err.value.status_code == 503 and took < 3.0
            body = err.value.body
            assert body["code"] == "teacher_unavailable" and "teacher is unavailable" in body["message"]
            assert err.value.response.headers["x-stillflow-served-by"] == "none"
            assert int(err.value.response.headers["retry-after"]) >= 1
        (decision,) = sink.decisions
        assert decision.reason == "below_threshold" and decision.served_by == "none"
        assert decision.error == "teacher_unavailable: timeout" and 0.9 < decision.confidence < 1.0
        # a confident student does not need the teacher
        settings = router_settings(tmp_path, hanging, threshold_override=0.5)
        async with running_router(settings) as url:
            reply = await client(url).chat.completions.create(model="m", messages=OPENING, tools=TOOLS)
            assert reply.choices[0].message.tool_calls[0].function.name == "lookup"
    finally:
        server.close()


async def test_shadow_and_canary(tmp_path: Path, student_src: Path) -> None:
    registry_with(tmp_path / "registry", student_src, 2)
    task = get_suite(0).instance("lookup", 3)
    sim = with_sim(SimSettings(), policy="perfect", latency_ms=0.0, latency_jitter_ms=0.0)
    async with running_server(sim) as teacher_url:
        sink = RecordingSink()
        settings = router_settings(tmp_path, teacher_url, threshold_override=0.5, shadow=True)
        svc = RouterService(settings, sink=sink)
        async with running_router(settings, service=svc) as url:
            raw = await client(url).chat.completions.with_raw_response.create(
                model="m", messages=sim_opening(task), tools=[t.to_openai() for t in TOOL_SPECS],
                extra_headers={"X-Stillflow-Task-Id": task.task_id})
            assert raw.headers["x-stillflow-served-by"] == "teacher"
        (decision,) = sink.decisions
        assert decision.shadow and decision.reason == "shadow" and decision.student_version == "v0001"
        # it has never seen this task: no valid turn, so it disagrees and would not have served
        assert decision.confidence is not None and decision.agrees is False and decision.would_serve == "teacher"

        sink = RecordingSink()
        settings = router_settings(tmp_path, teacher_url, threshold_override=0.5, canary_percent=100,
                                   canary_version="v0002")
        async with running_router(settings, service=RouterService(settings, sink=sink)) as url:
            raw = await client(url).chat.completions.with_raw_response.create(model="m", messages=OPENING,
                                                                              tools=TOOLS)
            assert raw.headers["x-stillflow-served-by"] == "v0002"
        assert sink.decisions[0].canary and sink.decisions[0].served_by == "v0002"


async def test_api_keys_size_limit_and_the_plain_endpoints(tmp_path: Path, student_src: Path) -> None:
    registry_with(tmp_path / "registry", student_src, 1)
    settings = router_settings(tmp_path, threshold_override=0.5, api_keys=("secret-1", "secret-2"),
                               max_request_bytes=4000)
    async with running_router(settings) as url:
        with pytest.raises(openai.AuthenticationError):
            await client(url, "wrong").chat.completions.create(model="m", messages=OPENING, tools=TOOLS)
        ok = await client(url, "secret-2").chat.completions.create(model="m", messages=OPENING, tools=TOOLS)
        assert ok.choices[0].message.tool_calls
        with pytest.raises(openai.APIStatusError) as err:
            await client(url, "secret-1").chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x" * 5000}])
        assert err.value.status_code == 413 and "over the limit of 4000 bytes" in err.value.body["message"]
        models = await client(url, "secret-1").models.list()
        assert {m.id for m in models.data} == {"teacher", "student-v0001"}
        root = url.removesuffix("/v1")
        async with httpx.AsyncClient(base_url=root) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            ready = (await http.get("/readyz")).json()
            assert ready["ready"] and ready["live_version"] == "v0001" and ready["threshold"] == 0.5
            metrics = (await http.get("/metrics")).text
            assert 'stillflow_router_requests_total{served_by="v0001",status="200"} 1.0' in metrics
            assert 'stillflow_router_requests_total{served_by="none",status="401"} 1.0' in metrics
            assert 'stillflow_router_model_version_info{slot="live",version="v0001"} 1.0' in metrics
            for name in ("stillflow_router_request_duration_seconds_bucket", "stillflow_router_student_confidence",
                         "stillflow_router_teacher_errors_total"):
                assert name in metrics
            assert (await http.get("/v1/stillflow/status")).status_code == 401


async def test_versions_that_must_not_be_served_are_refused(tmp_path: Path, student_src: Path) -> None:
    reg = registry_with(tmp_path / "registry", student_src, 3)
    good = reg.promote("v0002")
    # v0003 is damaged after registration
    (reg.path("v0003") / "model.safetensors").write_bytes(b"not the weights")
    settings = router_settings(tmp_path, threshold_override=0.5, ready_without_student=False)
    svc = RouterService(settings)
    async with running_router(settings, service=svc) as url:
        assert svc.slots.live.version == "v0002" and good.status == "promoted"
        sha = reg.manifest_sha256("v0003")
        bad = ModelVersionEvent(model_name="student", version="v0003", status="promoted",
                                path=str(reg.path("v0003")), manifest_sha256=sha)
        await svc.follower.handle(bad)
        elsewhere = ModelVersionEvent(model_name="student", version="v0001", status="promoted", path="/tmp/evil")
        await svc.follower.handle(elsewhere)
        wrong_sha = ModelVersionEvent(model_name="student", version="v0001", status="promoted",
                                      path=str(reg.path("v0001")), manifest_sha256="0" * 64)
        await svc.follower.handle(wrong_sha)
        raw = await client(url).chat.completions.with_raw_response.create(model="m", messages=OPENING, tools=TOOLS)
        assert raw.headers["x-stillflow-served-by"] == "v0002"
        kinds = [(d["version"], d["kind"]) for d in svc.follower.loads if not d["ok"]]
        assert kinds == [("v0003", "integrity"), ("v0001", "outside_registry"), ("v0001", "manifest_mismatch")]
        status = svc.status()
        assert status["live_version"] == "v0002" and "not the announced" in status["last_load_error"]["error"]
        assert "model.safetensors: sha256" in status["loads"][-3]["error"]
        metrics = svc.metrics.render().decode()
        assert 'stillflow_router_model_load_failures_total{kind="integrity"} 1.0' in metrics

    # a damaged live version at start: nothing is loaded, the router is not ready (and says why)
    state = json.loads((reg.dir / "state.json").read_text())
    state["live"] = "v0003"
    (reg.dir / "state.json").write_text(json.dumps(state))
    svc = RouterService(settings)
    async with running_router(settings, service=svc) as url:
        async with httpx.AsyncClient(base_url=url.removesuffix("/v1")) as http:
            r = await http.get("/readyz")
        assert r.status_code == 503 and r.json()["live_version"] is None and "no student" in r.json()["why"]
        assert r.json()["last_load_error"]["kind"] == "integrity"
