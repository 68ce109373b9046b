"""Router pieces without a model, a server or a broker: policy, sticky memory, canary buckets, the circuit
breaker, the teacher client (httpx MockTransport), settings, the wire format and trace steps."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from router.policy import ExpiringLRU, RoutingPolicy, StickyTraces, canary_bucket
from router.settings import RouterSettings, TeacherSection, with_router
from router.teacher import CircuitBreaker, TeacherClient, TeacherRejected, TeacherUnavailable
from router.traces import TraceBook, trace_identity, turn_steps
from router.wire import RequestError, parse_request, same_action, sse_chunks
from stillflow.chatformat import turn_confidence
from stillflow.contracts import TraceOutcomeEvent


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# --- policy ------------------------------------------------------------------------------------


def test_sticky_traces_expire_and_stay_bounded() -> None:
    clock = Clock()
    sticky = StickyTraces(max_size=2, ttl_s=10, clock=clock)
    sticky.add("a")
    sticky.add("b")
    assert "a" in sticky and "b" in sticky
    sticky.add("c")  # the oldest is dropped
    assert "a" not in sticky and len(sticky) == 2
    clock.t = 11
    assert "b" not in sticky and "c" not in sticky
    lru: ExpiringLRU[int] = ExpiringLRU(3, 5, clock)
    lru.put("x", 1)
    assert lru.pop("x") == 1 and lru.get("x") is None


def test_canary_buckets_are_stable_and_spread() -> None:
    assert canary_bucket("trace-1") == canary_bucket("trace-1")
    buckets = [canary_bucket(f"t{i}") for i in range(4000)]
    assert all(0 <= b < 100 for b in buckets)
    share = sum(b < 10 for b in buckets) / len(buckets)
    assert 0.08 < share < 0.12


def test_plan_and_judge() -> None:
    policy = RoutingPolicy()
    assert policy.plan("t", live=False, candidate=False).reason == "no_student"
    plan = policy.plan("t", live=True, candidate=False)
    assert plan.ask_student and not plan.shadow and plan.reason is None
    assert policy.judge("t", confidence=0.9, threshold=0.8).serve_student
    verdict = policy.judge("t", confidence=0.5, threshold=0.8)
    assert not verdict.serve_student and verdict.reason == "below_threshold"
    # escalated once: the teacher from now on, without asking the student
    assert policy.plan("t", live=True, candidate=False).reason == "sticky"
    assert policy.judge("u", confidence=0.99, threshold=0.5, failure="invalid_output").reason == "invalid_output"
    assert policy.plan("u", live=True, candidate=False).reason == "sticky"


def test_canary_and_shadow_plans() -> None:
    policy = RoutingPolicy(canary_percent=50)
    plans = [policy.plan(f"t{i}", live=True, candidate=True) for i in range(400)]
    assert 150 < sum(p.canary for p in plans) < 250
    assert not any(policy.plan(f"t{i}", live=True, candidate=False).canary for i in range(50))
    # only a candidate loaded: canary traces still reach it, the others get the teacher
    only = [policy.plan(f"t{i}", live=False, candidate=True) for i in range(100)]
    assert {p.reason for p in only if not p.canary} == {"no_student"}
    shadow = RoutingPolicy(shadow=True).plan("t", live=True, candidate=False)
    assert shadow.ask_student and shadow.shadow and shadow.reason == "shadow"
    with pytest.raises(ValueError):
        RoutingPolicy(canary_percent=101)


def test_confidence_is_the_geometric_mean_token_probability() -> None:
    assert turn_confidence([]) == 0.0
    assert turn_confidence([0.0]) == 1.0
    assert turn_confidence([-0.1, -0.3]) == pytest.approx(2.718281828 ** -0.2)


# --- circuit breaker and teacher client --------------------------------------------------------


def test_breaker_opens_half_opens_and_closes() -> None:
    clock = Clock()
    br = CircuitBreaker(failures=2, reset_s=5, clock=clock)
    assert br.allow()
    br.failure()
    assert br.state == "closed"
    br.failure()
    assert br.state == "open" and not br.allow() and br.retry_after_s() == 5
    clock.t = 5
    assert br.state == "half_open" and br.allow() and not br.allow()  # one probe at a time
    br.failure()
    assert br.state == "open"
    clock.t = 10
    assert br.allow()
    br.success()
    assert br.state == "closed" and br.allow()


COMPLETION = {"id": "x", "object": "chat.completion", "model": "t",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}


def _client(handler, **section) -> TeacherClient:
    sec = TeacherSection(base_url="http://teacher/v1", retry_backoff_s=0.0, **section)
    return TeacherClient(sec, transport=httpx.MockTransport(handler))


async def test_teacher_client_retries_then_succeeds_and_forwards_headers() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(503, text="busy")
        return httpx.Response(200, json=COMPLETION)

    client = _client(handler, retries=1, model="big-model", api_key="sk-test")
    reply = await client.complete({"model": "x", "messages": [], "stream": True},
                                  {"x-stillflow-trace-id": "tr", "cookie": "no"})
    assert reply.body == COMPLETION and reply.attempts == 2
    sent = json.loads(calls[-1].content)
    assert sent["stream"] is False and sent["model"] == "big-model"
    assert calls[-1].url.path == "/v1/chat/completions"
    assert calls[-1].headers["authorization"] == "Bearer sk-test"
    assert calls[-1].headers["x-stillflow-trace-id"] == "tr" and "cookie" not in calls[-1].headers
    await client.aclose()


async def test_teacher_client_passes_4xx_back_and_opens_the_breaker_on_failures() -> None:
    client = _client(lambda r: httpx.Response(400, json={"error": {"message": "bad"}}), retries=2)
    with pytest.raises(TeacherRejected) as rejected:
        await client.complete({"messages": []})
    assert rejected.value.status == 400 and client.breaker.state == "closed"

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = _client(down, retries=1, breaker_failures=2)
    for _ in range(2):
        with pytest.raises(TeacherUnavailable) as err:
            await client.complete({"messages": []})
        assert err.value.kind == "connect"
    with pytest.raises(TeacherUnavailable) as err:
        await client.complete({"messages": []})
    assert err.value.kind == "circuit_open"


async def test_a_hanging_teacher_is_bounded_by_the_timeouts() -> None:
    # a server that accepts and never answers (MockTransport would not apply httpx's timeouts)
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = TeacherClient(TeacherSection(base_url=f"http://127.0.0.1:{port}/v1", timeout_s=0.3, retries=1,
                                          retry_backoff_s=0.05))
    t0 = time.perf_counter()
    with pytest.raises(TeacherUnavailable) as err:
        await client.complete({"messages": []})
    took = time.perf_counter() - t0
    assert err.value.kind == "timeout" and took < client.worst_case_s + 0.5 and took >= 0.6
    await client.aclose()
    server.close()


# --- settings ----------------------------------------------------------------------------------


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLFLOW_ROUTER__PORT", "9001")
    monkeypatch.setenv("STILLFLOW_ROUTER__API_KEYS", '["k1", "k2"]')
    monkeypatch.setenv("STILLFLOW_ROUTER__TEACHER__BASE_URL", "http://t:1/v1")
    monkeypatch.setenv("STILLFLOW_ROUTER__TEACHER__API_KEY", "sk-x")
    monkeypatch.setenv("STILLFLOW_ROUTER__THRESHOLD_OVERRIDE", "0.75")
    s = RouterSettings().router
    assert s.port == 9001 and [k.get_secret_value() for k in s.api_keys] == ["k1", "k2"]
    assert s.teacher.base_url == "http://t:1/v1" and s.teacher.api_key.get_secret_value() == "sk-x"
    assert s.threshold_override == 0.75 and "sk-x" not in repr(s)
    updated = with_router(RouterSettings(), canary_percent=5, teacher={"retries": 0}).router
    assert updated.canary_percent == 5 and updated.teacher.retries == 0
    assert updated.teacher.base_url == "http://t:1/v1"
    with pytest.raises(ValueError):
        with_router(RouterSettings(), threshold_override=1.5)


# --- wire format -------------------------------------------------------------------------------


def test_requests_are_validated() -> None:
    ok = parse_request({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 7, "stream": True,
                        "stream_options": {"include_usage": True}}, 100)
    assert ok.max_new_tokens == 7 and ok.stream and ok.include_usage
    for body, code in (([], "invalid_body"), ({"messages": []}, "invalid_messages"),
                       ({"messages": [{"role": "system", "content": "x"}]}, "invalid_messages"),
                       ({"messages": [{"role": "user"}], "n": 2}, "n_unsupported"),
                       ({"messages": [{"role": "user"}], "max_tokens": 0}, "invalid_max_tokens")):
        with pytest.raises(RequestError) as err:
            parse_request(body, 100)
        assert err.value.code == code and err.value.status == 400


def test_a_completion_streams_as_openai_chunks() -> None:
    completion = {"id": "c1", "created": 1, "model": "m", "usage": {"total_tokens": 3},
                  "choices": [{"message": {"role": "assistant", "content": "thinking",
                                           "tool_calls": [{"id": "call_1", "type": "function",
                                                           "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
                               "finish_reason": "tool_calls"}]}
    raw = b"".join(sse_chunks(completion, include_usage=True)).decode()
    events = [e[len("data: "):] for e in raw.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "c1" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    args = "".join(c["choices"][0]["delta"].get("tool_calls", [{}])[0].get("function", {}).get("arguments", "")
                   for c in chunks if c["choices"])
    assert json.loads(args) == {"a": 1}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"total_tokens": 3}


def test_same_action() -> None:
    a = {"tool_calls": [{"function": {"name": "f", "arguments": '{"x": 1}'}}]}
    b = {"tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]}
    assert same_action(a, b) and same_action({"content": "x"}, {"content": "y"})
    assert not same_action(a, {"content": "final"})


# --- trace steps -------------------------------------------------------------------------------


OPEN = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q?"}]
CALL = {"role": "assistant", "content": "let me look",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"k": 1}'}}]}
TOOL = {"role": "tool", "tool_call_id": "call_1", "content": "k=1"}
FINAL = {"role": "assistant", "content": "done"}


def test_each_request_adds_the_next_steps_with_consistent_seqs() -> None:
    first = turn_steps(OPEN, CALL)
    assert first.first_seq == 0 and [s.step_type for s in first.steps] == ["reasoning", "tool_call"]
    assert first.steps[1].tool_args == {"k": 1} and first.steps[1].tool_call_id == "call_1"
    second = turn_steps([*OPEN, CALL, TOOL], FINAL)
    assert second.first_seq == 2 and [s.step_type for s in second.steps] == ["observation", "output"]
    assert second.steps[0].tool_name == "lookup" and second.steps[0].tool_result == "k=1"
    assert second.n_steps == 4 and (second.system_prompt, second.input_text) == ("sys", "q?")
    # the whole conversation, numbered the same way in one go
    whole = turn_steps([*OPEN, CALL, TOOL], FINAL)
    assert [s.step_type for s in whole.steps] == ["observation", "output"]


def test_trace_identity_and_the_outcome() -> None:
    assert trace_identity(OPEN, {"x-stillflow-trace-id": "tr-1", "x-stillflow-task-id": "task-9"}) == ("tr-1", "task-9")
    derived = trace_identity(OPEN, {})
    assert derived == trace_identity([*OPEN, CALL], {}) and derived[0].startswith("conv-")
    # any printable id is kept (UTF-8 sent as header bytes, which servers decode as Latin-1, is read back)
    assert trace_identity(OPEN, {"x-stillflow-trace-id": "suite/area/user_task_0 #2"})[0] == "suite/area/user_task_0 #2"
    raw = "tâche/été".encode().decode("latin-1")
    assert trace_identity(OPEN, {"x-stillflow-task-id": raw})[1] == "tâche/été"
    assert trace_identity(OPEN, {"x-stillflow-trace-id": "tab\there"})[0].startswith("tr-")
    assert trace_identity(OPEN, {"x-stillflow-trace-id": "x" * 300})[0].startswith("tr-")
    book = TraceBook()
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    book.record(trace_id="tr-1", task_id="task-9", agent_id="a", tools=tools, turn=turn_steps(OPEN, CALL),
                served_by="v0001", usage={"total_tokens": 10}, teacher_model=None)
    rec = book.record(trace_id="tr-1", task_id="task-9", agent_id="a", tools=tools,
                      turn=turn_steps([*OPEN, CALL, TOOL], FINAL), served_by="teacher",
                      usage={"total_tokens": 5, "cost_usd": 0.01}, teacher_model="big")
    event = TraceBook.outcome(rec, {"success": True, "ground_truth": "done"})
    assert isinstance(event, TraceOutcomeEvent)
    assert (event.n_steps, event.final_output, event.total_tokens, event.model_id) == (4, "done", 15, "big")
    assert event.tools[0].name == "lookup" and event.metadata["served_by"] == "teacher:1,v0001:1"


# --- slots and the follower (a fake loader: no torch) ------------------------------------------


class FakeModel:
    def __init__(self, version: str) -> None:
        self.version = version
        self.in_flight = 0
        self.threshold = 0.5


async def test_requests_in_flight_finish_on_their_model_and_rollback_reuses_the_previous(tmp_path) -> None:
    from router.metrics import RouterMetrics
    from router.runtime import LoadRefused
    from router.switching import ModelSlots, VersionFollower
    from stillflow.contracts import ModelVersionEvent

    loaded: list[str] = []

    def loader(registry, version, **kw):
        loaded.append(version)
        if version == "v0009":
            raise LoadRefused("integrity", "damaged")
        return FakeModel(version)

    metrics = RouterMetrics()
    slots = ModelSlots(metrics)
    follower = VersionFollower(with_router(RouterSettings(), registry_dir=tmp_path), slots, metrics, loader=loader)
    assert await follower.activate("v0001")
    held = slots.acquire()
    assert held.version == "v0001" and held.in_flight == 1
    await follower.handle(ModelVersionEvent(model_name="student", version="v0002", status="promoted"))
    assert slots.live.version == "v0002" and held.version == "v0001"  # the request in flight keeps v0001
    slots.release(held)
    assert held.in_flight == 0 and slots.previous is held
    await follower.handle(ModelVersionEvent(model_name="other", version="v0005", status="promoted"))
    await follower.handle(ModelVersionEvent(model_name="student", version="v0009", status="promoted"))
    assert slots.live.version == "v0002" and follower.last_error["kind"] == "integrity"
    await follower.handle(ModelVersionEvent(model_name="student", version="v0002", status="rolled_back",
                                            previous_version="v0001"))
    assert slots.live is held and loaded == ["v0001", "v0002", "v0009"]  # from memory, not reloaded
    assert 'stillflow_router_model_version_info{slot="live",version="v0001"} 1.0' in metrics.render().decode()


def test_the_router_command_is_registered_and_reads_its_flags() -> None:
    from router.cli import _settings
    from stillflow.cli import build_parser

    args = build_parser().parse_args(["router", "--port", "8299", "--teacher-url", "http://t:1/v1", "--threshold",
                                      "0.7", "--teacher-only", "--no-kafka"])
    assert args.func.__name__ == "cmd_router"
    s = _settings(args).router
    assert (s.port, s.teacher.base_url, s.threshold_override, s.teacher_only, s.kafka) == (
        8299, "http://t:1/v1", 0.7, True, False)
