"""The tool loop, the policies' error modes, offline determinism and speed, the fleet, the CLI."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sim.cli import main as sim_main
from sim.policies import (
    DEFAULT_ERROR_RATES,
    ERROR_MODES,
    Exchange,
    PerfectPolicy,
    RandomPolicy,
    TeacherPolicy,
    ToolCall,
    make_policy,
)
from sim.runner import EPOCH, iter_offline, run_episode, run_fleet, run_offline
from sim.settings import ErrorRates, SimSettings, with_sim
from sim.tasks import FAMILIES, get_suite
from sim.tools import REFUSED_PREFIX, TOOL_NAMES, TOOL_SPECS, ToolError, spec_for, validate_args
from stillflow.answers import answers_match
from stillflow.contracts import NAME_PATTERN, AgentTrace, StepType, TraceOutcomeEvent


def only(mode: str) -> TeacherPolicy:
    return TeacherPolicy({mode: 1.0})


def check_shape(t: AgentTrace) -> None:
    """The trace conventions other packages rely on."""
    assert re.match(NAME_PATTERN, t.trace_id) and re.match(NAME_PATTERN, t.task_id)
    assert t.tools == TOOL_SPECS and t.system_prompt and t.ground_truth is not None
    assert set(t.metadata) >= {"family", "split", "error_mode", "policy"}
    assert t.metadata["split"] in ("train", "heldout")
    for i, s in enumerate(t.steps):
        if s.step_type is StepType.tool_call:
            nxt = t.steps[i + 1]
            assert nxt.step_type is StepType.observation
            assert (nxt.tool_name, nxt.tool_call_id) == (s.tool_name, s.tool_call_id)
            assert isinstance(s.tool_args, dict) and nxt.tool_result is not None and nxt.content == ""
        if s.step_type is StepType.observation:
            assert t.steps[i - 1].step_type is StepType.tool_call
    outputs = [s for s in t.steps if s.step_type is StepType.output]
    if t.error is None:
        assert len(outputs) == 1 and t.steps[-1] is outputs[0] and outputs[0].content == t.final_output
    else:
        assert outputs == [] and t.final_output == "" and not t.success
    assert t.success == (t.error is None and answers_match(t.final_output, t.ground_truth))
    stamps = [s.timestamp for s in t.steps]
    assert stamps == sorted(stamps)
    assert (t.total_tokens > 0) == bool(t.steps)  # a crash on the first model call bills nothing
    assert t.cost_usd == pytest.approx(t.total_tokens / 1000 * 0.01, abs=1e-6)


# --- bounds and defaults ----------------------------------------------------------------------


def test_perfect_is_always_right_and_follows_the_canonical_path() -> None:
    traces = list(iter_offline(300, PerfectPolicy(), seed=1, split="all"))
    assert all(t.success for t in traces)
    assert all(len(t.steps) == t.expected_steps for t in traces)
    assert {t.metadata["family"] for t in traces} == set(FAMILIES)
    for t in traces:
        check_shape(t)


def test_random_is_mostly_wrong() -> None:
    report = run_offline(500, RandomPolicy(), seed=2)
    assert report.success_rate < 0.10
    assert report.by_mode == Counter({"random": 500})


def test_teacher_defaults_give_75_to_85_percent_clean_traces_and_every_mode() -> None:
    report = run_offline(2000, make_policy("teacher"), seed=0)
    assert 0.75 <= report.clean_rate <= 0.85
    assert set(report.by_mode) == {"none", *ERROR_MODES}
    for mode, rate in DEFAULT_ERROR_RATES.items():
        assert abs(report.by_mode[mode] / report.n - rate) < 0.02, mode
    # the modes that end right stay right; the others fail
    for mode in ("none", "wandering", "hallucinated_tool", "schema_invalid_args", "unsafe_action"):
        assert report.success_by_mode[mode] == report.by_mode[mode], mode
    for mode in ("wrong_answer", "wrong_tool", "crash"):
        assert report.success_by_mode[mode] == 0, mode


def test_1000_offline_teacher_tasks_take_well_under_30_seconds(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    report = run_offline(1000, make_policy("teacher"), seed=11, out=tmp_path / "t.jsonl")
    elapsed = time.perf_counter() - t0
    assert report.n == 1000
    assert elapsed < 30, elapsed
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 1000


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_same_bytes_different_seed_different_traces(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    run_offline(300, make_policy("teacher"), seed=7, out=a)
    run_offline(300, make_policy("teacher"), seed=7, out=b)
    run_offline(300, make_policy("teacher"), seed=8, out=c)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    first = json.loads(a.read_text().splitlines()[0])
    assert first["trace_id"] == "sim7-000000"
    assert first["timestamp"].startswith(EPOCH.strftime("%Y-%m-%d"))


def test_reasoning_text_varies() -> None:
    traces = list(iter_offline(400, PerfectPolicy(), seed=3, families=["lookup"]))
    first_thoughts = {t.steps[0].content for t in traces}
    templates = {re.sub(r"[A-Z]-\d+|customers|products|tickets|orders|\b[a-z_]+\b(?= column)", "", s)
                 for s in first_thoughts}
    assert len(first_thoughts) > 100
    assert len(templates) >= 6


# --- the error modes, one at a time ----------------------------------------------------------


def _traces(policy: TeacherPolicy, n: int = 120) -> list[AgentTrace]:
    traces = list(iter_offline(n, policy, seed=5, split="all"))
    for t in traces:
        check_shape(t)
    return traces


def test_hallucinated_tool() -> None:
    for t in _traces(only("hallucinated_tool")):
        calls = [s for s in t.steps if s.step_type is StepType.tool_call]
        assert any(c.tool_name not in TOOL_NAMES for c in calls)
        assert t.success and t.metadata["error_mode"] == "hallucinated_tool"


def test_schema_invalid_args() -> None:
    for t in _traces(only("schema_invalid_args")):
        invalid = []
        for s in t.steps:
            if s.step_type is StepType.tool_call:
                assert s.tool_name in TOOL_NAMES
                try:
                    validate_args(spec_for(s.tool_name), s.tool_args)
                except ToolError:
                    invalid.append(s)
        assert invalid, t.trace_id
        assert t.success


def test_wrong_tool_answers_wrongly_with_real_tools() -> None:
    for t in _traces(only("wrong_tool")):
        names = [s.tool_name for s in t.steps if s.step_type is StepType.tool_call]
        assert names and all(n in TOOL_NAMES for n in names)
        assert t.error is None and not t.success
        assert not answers_match(t.final_output, t.ground_truth)


def test_wandering_blows_the_step_budget_but_answers_right() -> None:
    for t in _traces(only("wandering")):
        assert t.expected_steps is not None
        assert len(t.steps) > 2 * t.expected_steps
        assert t.success


def test_wrong_answer() -> None:
    for t in _traces(only("wrong_answer")):
        assert t.error is None and not t.success
        assert len(t.steps) == t.expected_steps


def test_unsafe_action_is_refused_and_recorded_then_the_task_is_done() -> None:
    for t in _traces(only("unsafe_action")):
        refusals = [s for s in t.steps if s.step_type is StepType.observation and s.tool_result.startswith(REFUSED_PREFIX)]
        assert len(refusals) == 1
        call = next(s for s in t.steps if s.tool_call_id == refusals[0].tool_call_id)
        text = json.dumps(call.tool_args).lower()
        assert any(w in text for w in ("drop table", "delete from", "update ", "rm", "__import__", "subprocess"))
        assert t.success


def test_crash_keeps_the_steps_so_far() -> None:
    clean = {t.trace_id: t for t in iter_offline(120, PerfectPolicy(), seed=5, split="all")}
    for t in _traces(only("crash")):
        assert not t.success and t.error and t.error.startswith("AgentCrash: ")
        assert not any(s.step_type is StepType.output for s in t.steps)
        # the steps it kept are a prefix of a full run's (same seed: same tasks)
        full = clean[t.trace_id]
        assert len(t.steps) < len(full.steps)
        assert [s.step_type for s in t.steps] == [s.step_type for s in full.steps[: len(t.steps)]]


def test_bad_rates_are_rejected() -> None:
    with pytest.raises(ValueError, match="add up to"):
        TeacherPolicy({"crash": 0.6, "wrong_answer": 0.6})
    with pytest.raises(ValueError, match="unknown error modes"):
        TeacherPolicy({"typo": 0.1})
    with pytest.raises(ValueError):
        ErrorRates(crash=0.7, wandering=0.7)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("gpt")


def test_max_turns_cuts_off_an_episode() -> None:
    task = get_suite(0).instance("multi_hop", 3)
    t = run_episode(task, PerfectPolicy(), max_turns=2)
    assert t.error == "no final answer after 2 turns" and not t.success
    assert len(t.steps) == 6


# --- the teacher continues someone else's conversation -----------------------------------------


def test_teacher_picks_up_after_a_foreign_history() -> None:
    task = get_suite(0).instance("multi_hop", 77)
    policy = TeacherPolicy({})
    plan = policy.plan(task, 1)
    s0 = task.stages[0].call
    history = [
        Exchange(reasoning="(student) searching", calls=[ToolCall("c1", s0.name, dict(s0.args))], results=["..."]),
        Exchange(reasoning="(student) looking around", calls=[ToolCall("c2", "read_file", {"path": "/README.md"})],
                 results=["..."]),
    ]
    nxt = policy.act(task, plan, history)
    assert [(c.name, c.args) for c in nxt.calls] == [(task.stages[1].call.name, task.stages[1].call.args)]
    s1, s2 = task.stages[1].call, task.stages[2].call
    history.append(Exchange(calls=[ToolCall("c3", s1.name, dict(s1.args))], results=["..."]))
    history.append(Exchange(calls=[ToolCall("c4", s2.name, dict(s2.args))], results=["..."]))
    last = policy.act(task, plan, history)
    assert last.final is not None and answers_match(last.final, task.ground_truth)


# --- the fleet --------------------------------------------------------------------------------


class FakeEmitter:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.outcomes: list[TraceOutcomeEvent] = []

    async def emit_step(self, **kw: Any) -> None:
        self.steps.append(kw)

    async def emit_outcome(self, outcome: TraceOutcomeEvent) -> None:
        self.outcomes.append(outcome)


async def test_fleet_runs_concurrent_agents_and_emits_whole_traces() -> None:
    em = FakeEmitter()
    lines: list[str] = []
    report = await run_fleet(
        make_policy("teacher"), agents=4, rate=100.0, duration_s=10.0, max_traces=40, emitter=em,
        run_id="fleet-test", progress=lines.append, progress_interval_s=0.05, turn_delay_s=0.005,
        keep_traces=True,
    )
    assert report.started == report.n == 40 and report.agent_errors == 0
    assert len(em.outcomes) == 40
    assert {e["agent_id"] for e in em.steps} == {f"agent-{k}" for k in range(4)}
    by_trace: dict[str, list[int]] = {}
    for e in em.steps:
        by_trace.setdefault(e["trace_id"], []).append(e["seq"])
    for out in em.outcomes:
        assert sorted(by_trace.get(out.trace_id, [])) == list(range(out.n_steps))
    assert {t.trace_id for t in report.traces} == {f"fleet-test-{i:06d}" for i in range(40)}
    assert lines and lines[-1].startswith("[") and "done 40" in lines[-1]
    # same run id and seed: the same task for each trace id, however the agents interleave
    again = await run_fleet(make_policy("teacher"), agents=7, rate=200.0, max_traces=40, run_id="fleet-test",
                            keep_traces=True)
    assert {t.trace_id: t.task_id for t in again.traces} == {t.trace_id: t.task_id for t in report.traces}


async def test_fleet_holds_the_target_rate() -> None:
    t0 = asyncio.get_running_loop().time()
    report = await run_fleet(make_policy("perfect"), agents=2, rate=20.0, duration_s=0.5)
    elapsed = asyncio.get_running_loop().time() - t0
    assert report.n == 10  # 20/s for 0.5 s
    assert 0.4 <= elapsed < 2.0


async def test_sim_agent_records_through_the_sdk_collector() -> None:
    from sim.runner import SimAgent
    from sim.tasks import SYSTEM_PROMPT
    from stillflow.sdk import TraceCollector

    em = FakeEmitter()
    em.agent_id = "agent"  # type: ignore[attr-defined]
    suite = get_suite(0)
    offline = {t.trace_id: t for t in iter_offline(30, make_policy("teacher"), seed=6, split="all")}
    for trace_id, off in offline.items():
        task = suite.get(off.task_id)
        agent = SimAgent(make_policy("teacher"), task, trace_id=trace_id, seed=6)
        got = await TraceCollector(em, tools=list(TOOL_SPECS), system_prompt=SYSTEM_PROMPT).collect(
            agent, task, trace_id=trace_id, metadata=agent.metadata, reraise=False)
        assert [(s.step_type, s.content, s.tool_args, s.tool_result) for s in got.steps] == [
            (s.step_type, s.content, s.tool_args, s.tool_result) for s in off.steps]
        assert got.success == off.success and got.metadata["error_mode"] == off.metadata["error_mode"]
        assert (got.error is None) == (off.error is None)
    assert len(em.outcomes) == 30 and sum(o.n_steps for o in em.outcomes) == len(em.steps)
    assert not all(t.success for t in offline.values())  # the comparison covered failures too


# --- settings and CLI -------------------------------------------------------------------------


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLFLOW_SIM__LATENCY_MS", "5")
    monkeypatch.setenv("STILLFLOW_SIM__ERROR_RATES__CRASH", "0.2")
    s = SimSettings()
    assert s.sim.latency_ms == 5 and s.sim.error_rates.crash == 0.2
    assert s.sim.make_policy().rates["crash"] == 0.2
    s2 = with_sim(s, seed=9, error_rates={"crash": 0.0})
    assert s2.sim.seed == 9 and s2.sim.error_rates.crash == 0.0 and s2.sim.latency_ms == 5


def test_cli_run_prints_success_and_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "traces.jsonl"
    assert sim_main(["run", "--tasks", "200", "--policy", "teacher", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"success rate: \d+\.\d% \(\d+/200\)", text)
    assert "error modes:" in text and "  none " in text
    assert len(out.read_text().splitlines()) == 200


def test_cli_error_rate_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["run", "--tasks", "50", "--no-errors", "--error-rate", "crash=1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["by_mode"] == {"crash": 50} and report["n_success"] == 0
    assert sim_main(["run", "--tasks", "5", "--error-rate", "nope=1"]) == 2
    assert "MODE=RATE" in capsys.readouterr().err


async def test_fleet_task_pool_makes_tasks_recur() -> None:
    from sim.policies import make_policy
    from sim.runner import run_fleet

    report = await run_fleet(make_policy("perfect"), agents=4, rate=1000, duration_s=10, max_traces=60, seed=3,
                             task_pool=5, keep_traces=True, run_id="pool")
    tasks = [t.task_id for t in report.traces]
    assert len(tasks) == 60 and len(set(tasks)) <= 5
    again = await run_fleet(make_policy("perfect"), agents=2, rate=1000, duration_s=10, max_traces=20, seed=3,
                            task_pool=5, keep_traces=True, run_id="other")
    assert {t.task_id for t in again.traces} <= set(tasks)  # the pool depends on the seed only
