"""The teacher server: an OpenAI-compatible `/v1/chat/completions` whose answer is a sim policy's turn.

Exports `create_app(settings, *, policy=None)` (the FastAPI app), `serve(settings)` (blocking, uvicorn)
and `running_server(settings)` (an async context manager that serves on a free port in this event
loop and yields the base URL — for tests and the demo).

Per request: the task comes from the `X-Stillflow-Task-Id` header (else from the first user message,
looked up in the suite); the episode from `X-Stillflow-Trace-Id` (else a hash of the conversation's
opening). The policy plans the episode from (seed, trace id) — exactly as the offline runner does —
and answers the next assistant turn given the conversation so far. So an agent that sends the same
trace id as an offline run, with the same seed, gets the same turns.

Responses carry `usage` (prompt/completion/total tokens, plus `cost_usd` and `price_per_1k_tokens`)
and a `stillflow` object (error_mode, policy, task_id, family) that OpenAI clients ignore. The
`crash` error mode answers HTTP 500. Latency: `sim.latency_ms` ± `sim.latency_jitter_ms`.
Streaming is not supported (400).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sim.conversation import (
    HEADER_TASK_ID,
    HEADER_TRACE_ID,
    ConversationError,
    action_message,
    exchanges_from_messages,
    message_tokens,
)
from sim.policies import Action, AgentCrash, Policy, episode_seed
from sim.settings import SimSettings
from sim.tasks import Suite, Task, get_suite
from sim.world import stable_hex

__all__ = ["create_app", "serve", "running_server", "TeacherService"]


def _error(status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
           extra: dict[str, Any] | None = None) -> JSONResponse:
    error: dict[str, Any] = {"message": message, "type": type_, "param": None, "code": code}
    body: dict[str, Any] = {"error": error}
    if extra:  # in the error object too: openai clients keep only that as `APIStatusError.body`
        body["stillflow"] = error["stillflow"] = extra
    return JSONResponse(body, status_code=status)


class TeacherService:
    """The logic behind the endpoint, without HTTP (unit-testable)."""

    def __init__(self, settings: SimSettings, policy: Policy | None = None, suite: Suite | None = None) -> None:
        self.settings = settings
        self.sim = settings.sim
        self.policy = policy or self.sim.make_policy()
        self.suite = suite or get_suite(self.sim.world_seed)
        self._by_question: dict[str, str] | None = None
        self._index_lock = asyncio.Lock()
        self.stats: Counter[str] = Counter()
        self._jitter = random.Random()

    async def resolve_task(self, task_id: str | None, question: str) -> Task | None:
        if task_id:
            try:
                return self.suite.get(task_id)
            except KeyError:
                return None
        index = await self.index_ready()
        tid = index.get(question.strip())
        return self.suite.get(tid) if tid else None

    @property
    def indexed(self) -> bool:
        return self._by_question is not None

    async def index_ready(self) -> dict[str, str]:
        """The question → task id index, built once (in a thread: it visits every task of the suite)."""
        async with self._index_lock:
            if self._by_question is None:
                self._by_question = await asyncio.to_thread(self._build_index)
        return self._by_question

    def _build_index(self) -> dict[str, str]:
        index: dict[str, str] = {}
        for fam in self.suite.families.values():
            for i in range(fam.size):
                t = fam.instance(i)
                index.setdefault(t.question, t.task_id)
        return index

    def latency_s(self) -> float:
        ms = self.sim.latency_ms + self._jitter.uniform(-self.sim.latency_jitter_ms, self.sim.latency_jitter_ms)
        return max(0.0, ms / 1000)

    async def complete(self, body: dict[str, Any], headers: dict[str, str]) -> JSONResponse:
        if body.get("stream"):
            return _error(400, "streaming is not supported by the sim teacher server", code="stream_unsupported")
        if body.get("n", 1) not in (1, None):
            return _error(400, "n must be 1", code="n_unsupported")
        try:
            system, question, history = exchanges_from_messages(body.get("messages"))
        except ConversationError as exc:
            return _error(400, f"messages: {exc}", code="invalid_messages")
        task_id = headers.get(HEADER_TASK_ID.lower())
        trace_id = headers.get(HEADER_TRACE_ID.lower()) or f"conv-{stable_hex(system, question, n=24)}"
        self.stats["requests"] += 1
        delay = self.latency_s()
        if delay:
            await asyncio.sleep(delay)
        task = await self.resolve_task(task_id, question)
        info: dict[str, Any] = {"policy": self.policy.name, "task_id": task.task_id if task else None,
                                "family": task.family if task else None, "trace_id": trace_id}
        if task is None:
            self.stats["unknown_task"] += 1
            action = Action(final="I don't have enough information to answer that.")
            info["error_mode"] = "unknown_task"
        else:
            plan = self.policy.plan(task, episode_seed(self.sim.seed, trace_id))
            info["error_mode"] = plan.error_mode
            try:
                action = self.policy.act(task, plan, history)
            except AgentCrash as exc:
                self.stats["crash"] += 1
                return _error(500, f"the teacher crashed: {exc}", type_="server_error", code="sim_crash", extra=info)
        message = action_message(action)
        prompt = sum(message_tokens(m) for m in body["messages"] if isinstance(m, dict))
        completion = message_tokens(message)
        total = prompt + completion
        price = self.sim.price_per_1k_tokens
        self.stats["completions"] += 1
        return JSONResponse(
            {
                "id": f"chatcmpl-{stable_hex(trace_id, len(history), n=24)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.policy.model_id,
                "system_fingerprint": f"sim-{self.policy.name}-seed{self.sim.seed}",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "stop" if action.final is not None else "tool_calls",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": total,
                    "cost_usd": round(total / 1000 * price, 8),
                    "price_per_1k_tokens": price,
                },
                "stillflow": info,
            },
            headers={HEADER_TRACE_ID: trace_id},
        )


def create_app(settings: SimSettings | None = None, *, policy: Policy | None = None,
               eager_index: bool = False) -> FastAPI:
    """The teacher server app (`uvicorn` runs it; tests may drive it through httpx's ASGI transport).

    `eager_index`: build the question index (every task of the suite: seconds of CPU) at startup, so that the
    first request that names no task id does not wait for it; `/readyz` answers 503 until it is built."""
    settings = settings or SimSettings()
    service = TeacherService(settings, policy)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(service.index_ready()) if eager_index else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(title="stillflow sim teacher", version="1", lifespan=lifespan)
    app.state.service = service

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not valid JSON", code="invalid_json")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", code="invalid_body")
        return await service.complete(body, {k.lower(): v for k, v in request.headers.items()})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": service.policy.model_id, "object": "model", "created": 0, "owned_by": "stillflow-sim"}
        ]}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "policy": service.policy.name, "model": service.policy.model_id}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = not eager_index or service.indexed
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return dict(service.stats)

    return app


def serve(settings: SimSettings | None = None, *, log_level: str = "warning") -> None:
    """Serve the teacher on `sim.host:sim.port` until interrupted."""
    import uvicorn

    settings = settings or SimSettings()
    uvicorn.run(create_app(settings, eager_index=True), host=settings.sim.host, port=settings.sim.port, log_level=log_level)


@contextlib.asynccontextmanager
async def running_server(
    settings: SimSettings | None = None, *, host: str = "127.0.0.1", port: int = 0, policy: Policy | None = None,
) -> AsyncIterator[str]:
    """Serve the teacher inside the running event loop; yields its base URL (``http://host:port/v1``)."""
    from stillflow.serving import serving

    settings = settings or SimSettings()
    async with serving(create_app(settings, policy=policy), host=host, port=port) as (h, bound):
        yield f"http://{h}:{bound}/v1"
