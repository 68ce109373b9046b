"""Report a fleet's outcomes to a stillflow router instead of emitting the traces itself.

Behind a router the router already publishes every step of every request it serves (numbered from the
conversation), so an agent that also emitted its steps would publish each trace twice. What only the
agent knows is how the episode ended: `RouterOutcomes` is an emitter (`emit_step` / `emit_outcome`,
see `sim.runner.Emitter`) whose steps are dropped and whose outcome goes to the router's
`POST /v1/stillflow/outcome` (success, final output, error, ground truth, expected steps, labels),
which publishes the `TraceOutcomeEvent` with the steps it counted. Failed reports are counted, logged
once per kind and retried (bounded); a trace whose outcome never arrives expires in the stream as
incomplete — visible, not silent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from stillflow.contracts import TraceOutcomeEvent, TraceStep

__all__ = ["RouterOutcomes"]

log = logging.getLogger(__name__)


class RouterOutcomes:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 10.0,
                 retries: int = 2, transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = base_url.rstrip("/") + "/stillflow/outcome"
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout_s, transport=transport)
        self._retries = retries
        self.reported = 0
        self.failed: dict[str, int] = {}

    async def __aenter__(self) -> RouterOutcomes:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def emit_step(self, *, trace_id: str, task_id: str, seq: int, step: TraceStep,
                        agent_id: str = "agent") -> None:
        return None  # the router recorded it when it served the request

    async def emit_outcome(self, outcome: TraceOutcomeEvent) -> Any:
        body = {
            "trace_id": outcome.trace_id,
            "success": outcome.success,
            "final_output": outcome.final_output,
            "error": outcome.error,
            "ground_truth": outcome.ground_truth,
            "expected_steps": outcome.expected_steps,
            "metadata": outcome.metadata,
        }
        kind = ""
        for attempt in range(self._retries + 1):
            try:
                resp = await self._client.post(self.url, json=body)
            except httpx.HTTPError as exc:
                kind = type(exc).__name__
            else:
                if resp.status_code < 300:
                    self.reported += 1
                    return resp.json()
                kind = f"HTTP {resp.status_code}"
                if resp.status_code < 500:  # the router refused it (unknown trace, bad report): no retry
                    break
            await asyncio.sleep(0.2 * (attempt + 1))
        self.failed[kind] = self.failed.get(kind, 0) + 1
        if self.failed[kind] == 1:
            log.warning("outcome of %s not reported to the router (%s); later failures of this kind are counted",
                        outcome.trace_id, kind)
        return None
