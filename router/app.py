"""The router's HTTP surface (FastAPI): thin wiring around `RouterService`.

Exports `create_app(settings, service=None)`, `running_router(settings, ...)` (an async context manager
that serves on a free port inside the running event loop and yields the base URL; tests, benches) and
`serve(settings)` (blocking, uvicorn).

Endpoints: `POST /v1/chat/completions` (OpenAI-compatible, tools, `stream`), `GET /v1/models`,
`POST /v1/stillflow/outcome`, `GET /v1/stillflow/status`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
The `/v1/` endpoints want `Authorization: Bearer <key>` when `router.api_keys` is set (compared in
constant time); bodies over `router.max_request_bytes` get 413.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from router.metrics import CONTENT_TYPE
from router.service import RouterService, Served
from router.settings import RouterSettings
from router.wire import RequestError, openai_error, sse_chunks
from stillflow.auth import bearer_key_ok

__all__ = ["create_app", "running_router", "serve"]


class _Auth:
    def __init__(self, keys: tuple[Any, ...]) -> None:
        self._keys = [k.get_secret_value().encode() for k in keys]

    def check(self, request: Request) -> None:
        if not bearer_key_ok(request.headers.get("authorization"), self._keys):
            raise RequestError(401, "missing or invalid API key (Authorization: Bearer <key>)", "invalid_api_key",
                               "authentication_error")


async def _body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    too_big = RequestError(413, f"the request body is over the limit of {limit} bytes "
                                f"(STILLFLOW_ROUTER__MAX_REQUEST_BYTES)", "request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        parts.append(chunk)
    try:
        return json.loads(b"".join(parts))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise RequestError(400, "the body is not valid JSON", "invalid_json") from None


def _error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(openai_error(exc.message, type_=exc.type, code=exc.code), status_code=exc.status)


def _lower(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def create_app(settings: RouterSettings | None = None, service: RouterService | None = None, *,
               freeze_heap: bool = False) -> FastAPI:
    """The FastAPI app. `freeze_heap`: once started, freeze the startup heap out of the GC's full
    collections (`stillflow.gcheap`; `serve` sets it: the process is the router's alone)."""
    settings = settings or RouterSettings()
    svc = service or RouterService(settings)
    auth = _Auth(settings.router.api_keys)
    limit = settings.router.max_request_bytes
    metrics = svc.metrics

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await svc.start()
        if freeze_heap:
            from stillflow.gcheap import freeze_startup_heap

            freeze_startup_heap()
        try:
            yield
        finally:
            await svc.stop()

    app = FastAPI(title="stillflow router", version="1", lifespan=lifespan)
    app.state.service = svc

    @app.exception_handler(RequestError)
    async def refused(_request: Request, exc: RequestError) -> Response:
        return _error_response(exc)

    def timed(path: str) -> Callable[[float], None]:
        hist = metrics.latency.labels(path)
        return lambda t0: hist.observe(time.perf_counter() - t0)

    chat_done = timed("/v1/chat/completions")
    outcome_done = timed("/v1/stillflow/outcome")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            auth.check(request)
            served: Served = await svc.chat(await _body(request, limit), _lower(request))
        except RequestError as exc:
            metrics.requests.labels("none", str(exc.status)).inc()
            chat_done(t0)
            return _error_response(exc)
        chat_done(t0)
        if served.stream and served.status == 200:
            return StreamingResponse(iter(list(sse_chunks(served.body, include_usage=served.include_usage))),
                                     media_type="text/event-stream",
                                     headers={**served.headers, "Cache-Control": "no-cache"})
        return JSONResponse(served.body, status_code=served.status, headers=served.headers)

    @app.post("/v1/stillflow/outcome")
    async def outcome(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            auth.check(request)
            status, body = await svc.outcome(await _body(request, limit), _lower(request))
        finally:
            outcome_done(t0)
        return JSONResponse(body, status_code=status)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        auth.check(request)
        data = [{"id": settings.router.teacher.model or "teacher", "object": "model", "created": 0,
                 "owned_by": "stillflow-teacher"}]
        for m in (svc.slots.live, svc.slots.candidate):
            if m is not None:
                data.append({"id": f"{settings.router.model_name}-{m.version}", "object": "model", "created": 0,
                             "owned_by": "stillflow-student"})
        return JSONResponse({"object": "list", "data": data})

    @app.get("/v1/stillflow/status")
    async def status(request: Request) -> Response:
        auth.check(request)
        return JSONResponse(svc.status())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        ready, detail = svc.readiness()
        return JSONResponse(detail, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


@contextlib.asynccontextmanager
async def running_router(settings: RouterSettings, *, service: RouterService | None = None,
                         host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve the router inside the running event loop (lifespan included); yields ``http://host:port/v1``."""
    from stillflow.serving import serving

    app = create_app(settings, service or RouterService(settings))
    async with serving(app, host=host, port=port, lifespan="on") as (h, bound):
        yield f"http://{h}:{bound}/v1"


def serve(settings: RouterSettings, *, log_level: str = "info") -> None:
    """Serve on `router.host:router.port` until interrupted (SIGINT / SIGTERM stop it cleanly)."""
    import uvicorn

    if not settings.router.teacher_only:
        from router.runtime import set_threads

        set_threads(settings.router.threads, settings.router.device)  # this process is the router's own
    uvicorn.run(create_app(settings, freeze_heap=True), host=settings.router.host, port=settings.router.port,
                log_level=log_level, access_log=False)
