"""The router routes by workload: a version promoted for one workload of two gets exactly that workload's
requests (and none of the other's), through the official openai client; the default workload comes from
the agent id; decisions, outcomes, metrics and `/v1/stillflow/status` say which workload each request was."""

from __future__ import annotations

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
from stillflow.registry import ModelRegistry
from tests.router_student import OPENING, TOOLS, memorised_student

pytestmark = pytest.mark.slow


class RecordingSink(NullSink):
    def __init__(self) -> None:
        self.decisions: list[Any] = []
        self.outcomes: list[Any] = []

    def turn(self, **kw: Any) -> None:
        self.decisions.append(kw["decision"])

    def decision(self, decision: Any) -> None:
        self.decisions.append(decision)

    async def outcome(self, event: Any) -> None:
        self.outcomes.append(event)


async def test_a_version_promoted_for_one_workload_serves_only_that_workload(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "registry", "student")
    # the gate promoted it for "lookup" only (at 0.5); "billing" was evaluated and failed
    reg.register(memorised_student(), confidence_threshold=0.5,
                 extra={"workloads": {"lookup": 0.5}, "workload_verdicts": {"lookup": "promoted",
                                                                          "billing": "rejected"}})
    event = reg.promote("v0001")
    assert event.workloads == {"lookup": 0.5} and event.workload_verdicts["billing"] == "rejected"

    sim = with_sim(SimSettings(), policy="perfect", latency_ms=0.0, latency_jitter_ms=0.0)
    sink = RecordingSink()
    async with running_server(sim) as teacher_url:
        settings = with_router(RouterSettings(), registry_dir=tmp_path / "registry", kafka=False,
                               teacher={"base_url": teacher_url, "retries": 0, "timeout_s": 5.0})
        async with running_router(settings, service=RouterService(settings, sink=sink)) as url:
            ai = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=30)
            served: dict[str, list[str]] = {"lookup": [], "billing": []}
            task = get_suite(0).instance("lookup", 3)  # what the teacher can answer
            teacher_request = {"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                            {"role": "user", "content": task.question}],
                               "tools": [t.to_openai() for t in TOOL_SPECS]}
            for i in range(4):
                for workload in ("lookup", "billing"):
                    request = ({"messages": OPENING, "tools": TOOLS} if workload == "lookup" else teacher_request)
                    raw = await ai.chat.completions.with_raw_response.create(
                        model="any", **request,
                        extra_headers={"X-Stillflow-Trace-Id": f"tr-{workload}-{i}", "X-Stillflow-Task-Id": task.task_id,
                                       "X-Stillflow-Workload": workload})
                    served[workload].append(raw.headers["x-stillflow-served-by"])
            # no header: the default workload is the agent id (settings `workloads.default` = "{agent_id}")
            raw = await ai.chat.completions.with_raw_response.create(
                model="any", messages=OPENING, tools=TOOLS,
                extra_headers={"X-Stillflow-Trace-Id": "tr-agent", "X-Stillflow-Agent-Id": "lookup"})
            by_agent = raw.headers["x-stillflow-served-by"]
            async with httpx.AsyncClient(base_url=url.removesuffix("/v1")) as http:
                status = (await http.get("/v1/stillflow/status")).json()
                metrics = (await http.get("/metrics")).text
                r = await http.post("/v1/stillflow/outcome", json={"trace_id": "tr-billing-0", "success": True})
                assert r.status_code == 202
    assert served == {"lookup": ["v0001"] * 4, "billing": ["teacher"] * 4}
    assert by_agent == "v0001"
    by_workload: dict[str, set[str]] = {}
    for d in sink.decisions:
        by_workload.setdefault(d.workload, set()).add(d.reason)
    assert by_workload == {"lookup": {"confident"}, "billing": {"workload_not_served"}}
    # not served is not an escalation: the billing traces were never made sticky
    assert all(d.student_version is None for d in sink.decisions if d.workload == "billing")
    wl = status["workloads"]
    assert wl["lookup"]["served_by_student"] is True and wl["lookup"]["threshold"] == 0.5
    assert wl["lookup"]["requests"] == 5 and wl["lookup"]["student_share"] == 1.0
    assert wl["billing"]["served_by_student"] is False and wl["billing"]["by"] == {"teacher": 4}
    assert 'stillflow_router_workload_requests_total{served_by="teacher",workload="billing"} 4.0' in metrics
    assert 'stillflow_router_decisions_total{reason="workload_not_served"} 4.0' in metrics
    (outcome,) = sink.outcomes
    assert outcome.workload == "billing"


async def test_a_version_gated_before_workloads_serves_every_workload(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "registry", "student")
    reg.register(memorised_student(), confidence_threshold=0.5)
    assert reg.promote("v0001").workloads == {}
    settings = with_router(RouterSettings(), registry_dir=tmp_path / "registry", kafka=False,
                           teacher={"base_url": "http://127.0.0.1:9/v1", "retries": 0})
    sink = RecordingSink()
    async with running_router(settings, service=RouterService(settings, sink=sink)) as url:
        ai = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=30)
        for workload in ("a", "b"):
            raw = await ai.chat.completions.with_raw_response.create(
                model="any", messages=OPENING, tools=TOOLS, extra_headers={"X-Stillflow-Workload": workload})
            assert raw.headers["x-stillflow-served-by"] == "v0001"
    assert [(d.workload, d.reason) for d in sink.decisions] == [("a", "confident"), ("b", "confident")]
