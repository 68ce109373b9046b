"""`stillflow advise` (pure, no broker): recorded events of known rates, tokens, costs, rejections and step
spreads in; the exact figures, the verdicts, the renderings and the command line out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from stillflow.advise import (
    AdviseError,
    advise_from_events,
    estimate_tokens,
    parse_when,
    prompt_tokens,
    render_markdown,
    render_text,
    step_spread,
    to_json,
)
from stillflow.cli import main
from stillflow.contracts import (
    AgentTrace,
    RouteDecision,
    ScoredTrace,
    ToolSpec,
    TraceOutcomeEvent,
    TraceStep,
    TrajectoryScore,
)
from stillflow.costs import CostModel
from stillflow.demo_ledger import Ledger, phase_stats, segment_phases
from stillflow.settings import AdviseSettings

T0 = 1_800_000_000.0
HOUR = 3600.0
SETTINGS = AdviseSettings()  # the defaults: 1000 tasks/day, 10 s/task, 50%, 2%, 0.25; $0.01 / $0.0005


def at(s: float) -> datetime:
    return datetime.fromtimestamp(T0 + s, UTC)


SINCE, UNTIL = at(0), at(HOUR)
SCORE = TrajectoryScore(correctness=1, efficiency=1, tool_selection=1, safety=1, reasoning_quality=1, overall=1)
LOOKUP = ToolSpec(name="run_sql", description="Run one read-only SQL query against the warehouse",
                  parameters={"type": "object", "properties": {"query": {"type": "string", "description": "SQL"}},
                              "required": ["query"]})
SQL_SYSTEM = ("You are the analytics agent. Answer with one SQL query through run_sql, never guess, never write. "
              "Tables: orders(id, customer, total, placed_at), customers(id, name, region).")


def out(text: str) -> TraceStep:
    return TraceStep(step_type="output", content=text)


def think(text: str) -> TraceStep:
    return TraceStep(step_type="reasoning", content=text)


def trace(s: float, workload: str, task: str, steps: list[TraceStep], *, tokens: int = 1000, cost: float = 0.01,
          served: str = "teacher:2", system: str = "", tools: list[ToolSpec] | None = None,
          question: str = "where is my order", wall: float = 1.0, tid: str | None = None) -> AgentTrace:
    return AgentTrace(trace_id=tid or f"{workload}-{s}", task_id=task, agent_id=f"{workload}-agent",
                      input_text=question, system_prompt=system, tools=tools or [], steps=steps, success=True,
                      total_tokens=tokens, cost_usd=cost, wall_time_seconds=wall, workload=workload,
                      metadata={"served_by": served}, timestamp=at(s))


def scored(t: AgentTrace, rejected: list[str] | None = None) -> ScoredTrace:
    return ScoredTrace(timestamp=t.timestamp, trace=t, score=SCORE, passed=not rejected, rejected_by=rejected or [])


def decision(s: float, workload: str | None, trace_id: str, served_by: str = "teacher", latency: float = 1.0,
             shadow: bool = False, request: str | None = None) -> RouteDecision:
    return RouteDecision(timestamp=at(s), trace_id=trace_id, request_id=request or f"r-{trace_id}-{s}",
                         served_by=served_by, student_version=None if served_by in ("teacher", "none") else served_by,
                         reason="shadow" if shadow else ("confident" if served_by != "teacher" else "no_student"),
                         shadow=shadow, workload=workload, latency_seconds=latency)


def recorded() -> tuple[list[ScoredTrace], list[RouteDecision]]:
    """Four workloads over one hour (T0 .. T0 + 1 h):
    - support: 50 tasks (1200/day), 2 calls each, teacher 3 s a call, 10 of them half served by the
      student (v0001): 10 of 100 calls; short system prompt, one model call per trace (no tool), steps 2 each;
    - sql: 12 tasks (288/day), 4 tasks × 3 runs, a long system prompt and a tool schema, tool call +
      observation + answer (2 model calls), teacher 20 s a call, 1 of 12 rejected by tool_validity;
    - triage: 3 tasks, steps 1 and 3 on the same task (CV 0.5) and 2 on another;
    - faq: 3 tasks, one step, 0.5 s calls: no symptom."""
    sc: list[ScoredTrace] = []
    ds: list[RouteDecision] = []
    for i in range(50):
        s = 30 + i * 70
        mixed = i < 10
        t = trace(s, "support", f"sup-{i % 10}", [think("look it up"), out("it ships today")],
                  system="You help.", served="teacher:1,v0001:1" if mixed else "teacher:2",
                  cost=0.005 if mixed else 0.01)
        sc.append(scored(t))
        ds.append(decision(s - 2, "support", t.trace_id, latency=3.0))
        ds.append(decision(s - 1, "support", t.trace_id, served_by="v0001" if mixed else "teacher", latency=3.0))
    for i in range(12):
        s = 100 + i * 250
        t = trace(s, "sql", f"sql-{i % 4}", [
            TraceStep(step_type="tool_call", tool_name="run_sql", tool_args={"query": "SELECT 1"}, tool_call_id="c1"),
            TraceStep(step_type="observation", tool_name="run_sql", tool_result=[[1]], tool_call_id="c1"),
            out("one"),
        ], system=SQL_SYSTEM, tools=[LOOKUP], question="how many orders", tokens=2000, cost=0.02)
        sc.append(scored(t, ["tool_validity", "min_score"] if i == 5 else None))
        ds.append(decision(s - 30, None, t.trace_id, latency=20.0))  # no workload: taken from its trace
        ds.append(decision(s - 10, "sql", t.trace_id, latency=20.0))
    for s, task, n in ((500, "tri-a", 1), (1500, "tri-a", 3), (2500, "tri-b", 2)):
        t = trace(s, "triage", task, [think("hmm")] * (n - 1) + [out("p2")], tokens=300, cost=0.003)
        sc.append(scored(t))
        ds.append(decision(s - 1, "triage", t.trace_id, latency=2.0))
    for s in (700, 1700, 2700):
        t = trace(s, "faq", f"faq-{s}", [out("see the FAQ")], tokens=100, cost=0.001)
        sc.append(scored(t))
        ds.append(decision(s - 1, "faq", t.trace_id, latency=0.5))
    return sc, ds


def report():
    sc, ds = recorded()
    return advise_from_events(sc, ds, since=SINCE, until=UNTIL, settings=SETTINGS)


def by_name(rep) -> dict:
    return {w.workload: w for w in rep.workloads}


# -- the estimates ---------------------------------------------------------------------------------------


def test_token_estimate_counts_words_and_punctuation() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("You help.") == 3
    assert estimate_tokens('{"query":"SELECT 1"}') == 10  # { " query " : " SELECT 1 " }


def test_prompt_tokens_grow_with_the_conversation_and_count_the_fixed_part_per_call() -> None:
    t = recorded()[0][50]  # the first sql trace: tool call, observation, answer = 2 model calls
    system = estimate_tokens(SQL_SYSTEM)
    schema = estimate_tokens(json.dumps(LOOKUP.to_openai(), separators=(",", ":")))
    question = estimate_tokens("how many orders")
    call = estimate_tokens('run_sql {"query":"SELECT 1"}')
    obs = estimate_tokens("[[1]]")
    calls, total, context = prompt_tokens(t.trace)
    assert calls == 2
    assert total == 2 * (system + schema + question) + call + obs
    assert context == 2 * (system + schema)
    assert prompt_tokens(AgentTrace(task_id="t", input_text="q")) == (0, 0, 0)


def test_step_spread_is_the_coefficient_of_variation() -> None:
    assert step_spread([1, 3]) == pytest.approx(0.5)
    assert step_spread([2, 2, 2]) == 0 and step_spread([0, 0]) == 0


def test_since_and_until_take_iso_and_durations_back_from_now() -> None:
    now = at(10 * HOUR)
    assert parse_when("2h", now) == at(8 * HOUR) and parse_when("30m", now) == at(10 * HOUR - 1800)
    assert parse_when("1d", now) == at(-14 * HOUR) and parse_when("45s", now) == at(10 * HOUR - 45)
    assert parse_when("2027-01-15T08:00:00Z", now) == datetime(2027, 1, 15, 8, tzinfo=UTC)
    assert parse_when("2027-01-15", now) == datetime(2027, 1, 15, tzinfo=UTC)
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_when("yesterday", now)


# -- the figures -----------------------------------------------------------------------------------------


def test_rates_latency_and_share_per_workload() -> None:
    rep = report()
    assert rep.span_s == HOUR and rep.span_source == "range" and [w.workload for w in rep.workloads] == [
        "faq", "sql", "support", "triage"]
    sup = by_name(rep)["support"]
    assert (sup.tasks, sup.calls, sup.student_calls) == (50, 100, 10)
    assert sup.tasks_per_day == pytest.approx(1200) and sup.calls_per_day == pytest.approx(2400)
    assert sup.calls_per_task == 2 and sup.student_share == pytest.approx(0.1)
    assert sup.teacher_calls == 90 and sup.teacher_latency_per_call_s == pytest.approx(3.0)
    assert sup.teacher_latency_per_task_s == pytest.approx(6.0)
    assert sup.teacher_wall_time_per_task_s == pytest.approx(1.0)  # the 40 teacher-only traces
    sql = by_name(rep)["sql"]
    assert (sql.tasks, sql.calls) == (12, 24)  # the decisions without a workload joined by trace id
    assert sql.tasks_per_day == pytest.approx(288) and sql.teacher_latency_per_task_s == pytest.approx(40.0)


def test_tokens_drift_and_inconsistency() -> None:
    rep = by_name(report())
    sup, sql, tri = rep["support"], rep["sql"], rep["triage"]
    # support: one model call a trace: system "You help." (3) + question (4)
    assert sup.model_calls == 50 and sup.prompt_tokens_per_call == pytest.approx(7)
    assert sup.context_share == pytest.approx(3 / 7)
    _, total, context = prompt_tokens(recorded()[0][50].trace)
    assert sql.model_calls == 24 and sql.prompt_tokens_per_call == pytest.approx(total / 2)
    assert sql.context_share == pytest.approx(context / total) and sql.context_share > 0.5
    assert sql.format_drift_traces == 1 and sql.format_drift == pytest.approx(1 / 12)
    assert sup.format_drift == 0
    assert sql.repeated_tasks == 4 and sql.inconsistency == 0
    assert tri.repeated_tasks == 1 and tri.inconsistency == pytest.approx(0.5)  # tri-a: 1 and 3 steps
    assert rep["faq"].inconsistency is None  # no task ran twice


def test_costs_now_teacher_only_and_with_the_student() -> None:
    sup = by_name(report())["support"]
    # 40 teacher-only episodes of 1000 tokens ($0.01), 10 mixed: 500 teacher ($0.005) + 500 student ($0.00025)
    assert sup.cost_usd == pytest.approx(40 * 0.01 + 10 * 0.00525)
    assert sup.cost_per_task_usd == pytest.approx(0.4525 / 50)
    assert sup.cost_per_day_usd == pytest.approx(0.4525 * 24)
    assert sup.tokens_per_task == 1000
    assert sup.teacher_only_cost_per_day_usd == pytest.approx(0.01 * 1200)
    # at the measured 10%: 900 teacher tokens + 100 student tokens a task
    assert sup.with_student_cost_per_day_usd == pytest.approx((0.009 + 0.00005) * 1200)
    assert sup.saving_per_day_usd == pytest.approx(12.0 - 10.86)
    sc, ds = recorded()
    what_if = by_name(advise_from_events(sc, ds, since=SINCE, until=UNTIL, settings=SETTINGS, student_share=0.8))
    assert what_if["support"].assumed_student_share == 0.8 and what_if["support"].student_share == pytest.approx(0.1)
    assert what_if["support"].with_student_cost_per_day_usd == pytest.approx((0.002 + 0.0004) * 1200)
    priced = by_name(advise_from_events(sc, ds, since=SINCE, until=UNTIL, cost=CostModel(0.02, 0.001)))
    assert priced["faq"].cost_usd == pytest.approx(3 * 100 / 1000 * 0.02)


def test_verdicts_name_the_symptoms_and_the_remedies() -> None:
    rep = by_name(report())
    present = {w: [s.key for s in a.symptoms if s.present] for w, a in rep.items()}
    assert present == {"support": ["volume"], "sql": ["latency", "context", "format"],
                       "triage": ["inconsistency"], "faq": []}
    assert rep["support"].verdict == "distil" and rep["triage"].verdict == "distil"
    assert rep["sql"].verdict == "distil + fine-tune" and rep["sql"].remedies == ["distil", "fine-tune"]
    assert rep["faq"].verdict == "stay with prompting"
    assert rep["support"].verdict_line().startswith("support: distil — high volume 1,200/day > 1,000/day")
    assert "saves $1.14/day" in rep["support"].verdict_line()
    assert "not measured: inconsistency" in rep["faq"].verdict_line()
    strict = AdviseSettings(max_format_drift=0.1, max_context_share=0.95, max_teacher_latency_per_task_s=60)
    sc, ds = recorded()
    assert by_name(advise_from_events(sc, ds, since=SINCE, until=UNTIL, settings=strict))["sql"].verdict == (
        "stay with prompting")


def test_range_filters_dedupes_and_falls_back_to_the_events_span() -> None:
    sc, ds = recorded()
    rep = advise_from_events(sc + sc[:5], ds + ds[:5], settings=SETTINGS)  # redelivered: counted once
    assert rep.scored == len(sc) and rep.decisions == len(ds) and rep.span_source == "events"
    assert rep.since == min(d.timestamp for d in ds) and rep.until == max(s.timestamp for s in sc)
    half = advise_from_events(sc, ds, since=SINCE, until=at(HOUR / 2), settings=SETTINGS)
    assert by_name(half)["support"].tasks == 26 and half.span_s == HOUR / 2  # s = 30 + 70 i <= 1800


def test_shadow_decisions_count_only_where_they_are_the_requests_record() -> None:
    t = trace(10, "w", "k", [out("x")])
    ds = [decision(5, "w", t.trace_id, latency=2.0, request="a"),
          decision(6, "w", t.trace_id, latency=9.0, shadow=True, request="a"),  # same request: the plain one counts
          decision(7, "w", t.trace_id, latency=4.0, shadow=True, request="b")]
    w = advise_from_events([scored(t)], ds, since=at(0), until=at(60)).workloads[0]
    assert w.calls == 2 and w.teacher_latency_per_call_s == 2.0
    only_shadow = advise_from_events([scored(t)], ds[2:], since=at(0), until=at(60)).workloads[0]
    assert only_shadow.teacher_latency_per_call_s == 4.0
    assert "shadow" in only_shadow.symptoms[1].note


def test_an_empty_range_is_an_error() -> None:
    sc, ds = recorded()
    with pytest.raises(AdviseError, match="no scored traces or route decisions between"):
        advise_from_events(sc, ds, since=at(-100), until=at(-50))
    with pytest.raises(AdviseError, match="before it starts"):
        advise_from_events(sc, ds, since=at(50), until=at(0))


# -- agreement with the demo's report ------------------------------------------------------------------


def test_cost_per_day_agrees_with_the_demo_reports_cost_per_task_times_the_task_rate() -> None:
    cm = CostModel(0.01, 0.0005)
    sc, ds = recorded()
    ledger = Ledger(since=T0)
    for d in ds:
        ledger.add(d)
    for s in sc:  # the router's outcome of each episode: the trace's figures
        ledger.add(TraceOutcomeEvent.from_trace(s.trace))
    # one phase over the whole hour, as the demo report reads a phase
    (stats,) = phase_stats(ledger, segment_phases([], T0), cm)
    assert stats.episodes == len(sc)
    rep = advise_from_events(sc, ds, since=SINCE, until=UNTIL, cost=cm)
    tasks_per_day = sum(w.tasks_per_day for w in rep.workloads)
    cost_per_day = sum(w.cost_per_day_usd for w in rep.workloads)
    assert round(stats.cost_per_task * tasks_per_day, 6) == round(cost_per_day, 6)
    # and per workload, over that workload's episodes
    sup = by_name(rep)["support"]
    ledger_sup = Ledger(since=T0)
    for s in sc[:50]:
        ledger_sup.add(TraceOutcomeEvent.from_trace(s.trace))
    only = phase_stats(ledger_sup, segment_phases([], T0), cm)[0]
    assert round(only.cost_per_task * sup.tasks_per_day, 6) == round(sup.cost_per_day_usd, 6)


# -- rendering ------------------------------------------------------------------------------------------


def test_text_markdown_and_json() -> None:
    rep = report()
    text = render_text(rep)
    assert "workload support" in text and "high volume" in text and "> 1,000/day" in text
    assert "  sql: distil + fine-tune — teacher latency per task 40.00 s > 10.00 s" in text
    assert "faq: stay with prompting" in text and "$10.86/day now" in text
    md = render_markdown(rep)
    assert md.startswith("# Which workloads are worth distilling")
    assert "| support | 1,200 | 2.00 | $10.86 | $12.00 | $10.86 | distil |" in md
    assert "| format drift | 8.3% | > 2.0% | fine-tune | yes |" in md
    assert render_markdown(rep, heading="##").startswith("## Which") and "### sql" in render_markdown(rep, heading="##")
    data = json.loads(to_json(rep))
    sup = next(w for w in data["workloads"] if w["workload"] == "support")
    assert sup["tasks_per_day"] == pytest.approx(1200) and sup["verdict"] == "distil"
    assert sup["symptoms"][0] == {"key": "volume", "name": "high volume", "value": pytest.approx(1200),
                                  "threshold": 1000.0, "unit": "per_day", "remedy": "distil", "note": "",
                                  "present": True}
    assert data["thresholds"]["max_format_drift"] == 0.02 and data["teacher_price_per_1k"] == 0.01


# -- the command line -----------------------------------------------------------------------------------


@pytest.fixture
def jsonl(tmp_path):
    sc, ds = recorded()
    path = tmp_path / "events.jsonl"
    lines = [e.model_dump_json() for e in [*sc, *ds]]
    path.write_text("\n".join([*lines, "", '{"something": "else"}']) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("STILLFLOW_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("STILLFLOW_STATE_DIR", str(tmp_path / "state"))


def test_cli_from_jsonl_json_and_markdown(jsonl, tmp_path, capsys, no_env) -> None:
    md = tmp_path / "report.md"
    code = main(["advise", "--from-jsonl", str(jsonl), "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(),
                 "--json", "--out", str(md)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "neither a ScoredTrace nor a RouteDecision" in captured.err  # the odd line is skipped, and said
    data = json.loads(captured.out)
    assert {w["workload"]: w["verdict"] for w in data["workloads"]} == {
        "faq": "stay with prompting", "sql": "distil + fine-tune", "support": "distil", "triage": "distil"}
    assert "| sql |" in md.read_text()


def test_cli_thresholds_and_prices_from_settings_and_flags(jsonl, capsys, no_env, monkeypatch) -> None:
    monkeypatch.setenv("STILLFLOW_ADVISE__MIN_TASKS_PER_DAY", "5000")
    code = main(["advise", "--from-jsonl", str(jsonl), "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(),
                 "--json", "--teacher-price-per-1k", "0.02"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["thresholds"]["min_tasks_per_day"] == 5000 and data["teacher_price_per_1k"] == 0.02
    assert next(w for w in data["workloads"] if w["workload"] == "support")["verdict"] == "stay with prompting"


def test_cli_empty_range_and_no_broker_are_clear_errors(jsonl, capsys, no_env) -> None:
    code = main(["advise", "--from-jsonl", str(jsonl), "--since", "2000-01-01", "--until", "2000-01-02"])
    err = capsys.readouterr().err
    assert code == 2 and "no scored traces or route decisions between 2000-01-01" in err
    code = main(["advise", "--since", "2h"])
    err = capsys.readouterr().err
    assert code == 2 and "no Kafka broker" in err and "STILLFLOW_KAFKA__BOOTSTRAP_SERVERS" in err
    code = main(["advise", "--from-jsonl", str(jsonl), "--since", "last tuesday"])
    assert code == 2 and "--since" in capsys.readouterr().err


def test_python_dash_m_stillflow_advise(jsonl, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLFLOW_")}
    env["STILLFLOW_STATE_DIR"] = str(tmp_path / "state")
    done = subprocess.run([sys.executable, "-m", "stillflow", "advise", "--from-jsonl", str(jsonl)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "verdicts:" in done.stdout and "sql: distil + fine-tune" in done.stdout
    empty = subprocess.run([sys.executable, "-m", "stillflow", "advise", "--from-jsonl", str(jsonl),
                            "--since", "2000-01-01", "--until", "2000-01-02"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert empty.returncode != 0 and "nothing to advise on" in empty.stderr
