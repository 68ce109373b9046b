"""Live switching against the broker: under a steady load (4 openai clients, answers never stalling) a
`promoted` event for v2 is served within 5 s with no failed request, `rolled_back` returns to v1 alike,
and a corrupted version announced as promoted is never served. Every request is published as a
`RouteDecision` and its trace steps; a reported outcome closes the trace on the topic."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from router.app import running_router
from router.service import RouterService
from router.settings import with_router
from stillflow.contracts import RouteDecision, TraceOutcomeEvent, TraceStepEvent, decode, encode
from stillflow.kafka import make_producer
from tests.helpers import read_topics
from tests.router_student import OPENING, TOOLS, memorised_student, registry_with

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Load:
    """Workers sending one-turn requests as fast as they are answered; every reply is logged."""

    def __init__(self, url: str, workers: int = 4) -> None:
        self.ai = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=10)
        self.workers = workers
        self.log: list[tuple[float, str, int]] = []  # (time, served_by, status)
        self.stop = False
        self.n = 0

    async def _worker(self, w: int) -> None:
        while not self.stop:
            self.n += 1
            trace = f"load-{w}-{self.n}"
            try:
                raw = await self.ai.chat.completions.with_raw_response.create(
                    model="m", messages=OPENING, tools=TOOLS, extra_headers={"X-Stillflow-Trace-Id": trace})
                self.log.append((time.monotonic(), raw.headers["x-stillflow-served-by"], raw.status_code))
            except openai.APIStatusError as exc:
                self.log.append((time.monotonic(), "error", exc.status_code))
            except Exception:
                self.log.append((time.monotonic(), "error", 0))

    def start(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._worker(w)) for w in range(self.workers)]

    async def first(self, version: str, since: float, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((t for t, v, _ in self.log if t >= since and v == version), None)
            if hit is not None:
                return hit
            await asyncio.sleep(0.02)
        raise AssertionError(f"{version} not served within {timeout}s")


async def test_live_switch_under_load_rollback_and_a_corrupted_version(settings: Any, tmp_path: Path) -> None:
    reg = registry_with(tmp_path / "registry", memorised_student(), 3)
    (reg.path("v0003") / "model.safetensors").write_bytes(b"corrupted")
    rs = with_router(settings, registry_dir=tmp_path / "registry", threshold_override=0.5, replica_id="live-test",
                     teacher={"base_url": "http://127.0.0.1:9/v1", "retries": 0, "connect_timeout_s": 0.5})
    svc = RouterService(rs)
    producer = make_producer(settings.kafka)
    await producer.start()

    async def publish(event: Any) -> float:
        await producer.send_and_wait(settings.topics.model_versions, encode(event), key=event.model_name.encode())
        return time.monotonic()

    try:
        async with running_router(rs, service=svc) as url:
            await asyncio.wait_for(svc.follower.assigned.wait(), 20)  # the replica's group has joined
            load = Load(url)
            tasks = load.start()
            await asyncio.sleep(1.5)
            t_promote = await publish(reg.promote("v0002"))
            t_v2 = await load.first("v0002", t_promote)
            await asyncio.sleep(1.0)
            t_rollback = await publish(reg.rollback(reason="test"))
            t_v1 = await load.first("v0001", t_rollback)
            await asyncio.sleep(1.0)
            sha = reg.manifest_sha256("v0003")
            from stillflow.contracts import ModelVersionEvent

            t_bad = await publish(ModelVersionEvent(model_name="student", version="v0003", status="promoted",
                                                    path=str(reg.path("v0003")), manifest_sha256=sha))
            await asyncio.sleep(1.5)
            load.stop = True
            await asyncio.gather(*tasks)

            # an outcome reported through the router closes one trace
            async with httpx.AsyncClient(base_url=url) as http:
                r = await http.post("/stillflow/outcome", json={"trace_id": "load-0-1", "success": True})
            assert r.status_code == 202 and r.json()["published"]
            loads = list(svc.follower.loads)
    finally:
        await producer.stop()

    log = load.log
    # steady: answers kept coming through every switch (no stall while a version loads); not a speed test,
    # the rate is only reported (it depends on the machine)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(log)]
    rate = len(log) / (log[-1][0] - log[0][0])
    assert len(log) >= 40 and max(gaps) < 2.0, f"{len(log)} answers, {rate:.1f} req/s, longest gap {max(gaps):.2f} s"
    assert [x for x in log if x[2] != 200] == []  # zero failed requests
    assert t_v2 - t_promote < 5.0 and t_v1 - t_rollback < 5.0
    after_v2 = [v for t, v, _ in log if t_v2 + 0.5 < t < t_rollback]
    after_v1 = [v for t, v, _ in log if t_v1 + 0.5 < t]
    assert after_v2 and set(after_v2) == {"v0002"}
    assert after_v1 and set(after_v1) == {"v0001"}  # and the corrupted v0003 never
    assert ("v0003", "integrity") in [(d["version"], d["kind"]) for d in loads if not d["ok"]]
    assert t_bad < log[-1][0]

    # every request published its decision and its step; the outcome its event
    topics = settings.topics
    records = await read_topics(settings, [topics.router_decisions, topics.trace_steps, topics.trace_outcomes],
                                expected=2 * len(log) + 1, timeout=30)
    decisions = [decode(r.value, RouteDecision) for r in records if r.topic == topics.router_decisions]
    steps = [decode(r.value, TraceStepEvent) for r in records if r.topic == topics.trace_steps]
    outcomes = [decode(r.value, TraceOutcomeEvent) for r in records if r.topic == topics.trace_outcomes]
    assert len(decisions) == len(log) and {d.reason for d in decisions} == {"confident"}
    assert {d.served_by for d in decisions} == {"v0001", "v0002"}
    assert len(steps) == len(log) and all(s.step.step_type.value == "tool_call" and s.seq == 0 for s in steps)
    assert [(o.trace_id, o.n_steps, o.success) for o in outcomes] == [("load-0-1", 1, True)]
