"""The fleet's outcome reports to a router (`sim.router_outcome.RouterOutcomes`), against a mock router."""

from __future__ import annotations

import json

import httpx

from sim.router_outcome import RouterOutcomes
from stillflow.contracts import TraceOutcomeEvent, TraceStep
from tests.helpers import make_trace


async def test_outcomes_are_posted_steps_are_not() -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/stillflow/outcome"
        assert request.headers["authorization"] == "Bearer k"
        seen.append(json.loads(request.content))
        return httpx.Response(202, json={"trace_id": seen[-1]["trace_id"]})

    trace = make_trace(1, 4)
    async with RouterOutcomes("http://router/v1/", api_key="k", transport=httpx.MockTransport(handler)) as r:
        await r.emit_step(trace_id=trace.trace_id, task_id=trace.task_id, seq=0,
                          step=TraceStep(step_type="reasoning", content="x"))
        assert seen == []  # the router recorded the steps itself
        await r.emit_outcome(TraceOutcomeEvent.from_trace(trace))
    assert r.reported == 1 and not r.failed
    (body,) = seen
    assert body["trace_id"] == trace.trace_id and body["success"] == trace.success
    assert body["final_output"] == trace.final_output and body["ground_truth"] == trace.ground_truth


async def test_refusals_are_counted_not_retried_and_errors_are_retried() -> None:
    calls = {"n": 0}

    def refuse(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(404, json={"error": "unknown_trace"})

    trace = make_trace(2, 3)
    async with RouterOutcomes("http://router/v1", transport=httpx.MockTransport(refuse), retries=2) as r:
        assert await r.emit_outcome(TraceOutcomeEvent.from_trace(trace)) is None
    assert calls["n"] == 1 and r.failed == {"HTTP 404": 1}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] < 4:
            raise httpx.ConnectError("down")
        return httpx.Response(202, json={})

    calls["n"] = 1
    async with RouterOutcomes("http://router/v1", transport=httpx.MockTransport(flaky), retries=2) as r:
        await r.emit_outcome(TraceOutcomeEvent.from_trace(trace))
    assert r.reported == 1 and not r.failed
