"""`stillflow advise`: per workload, does distilling pay? (pure: no Kafka, no clock; docs/advise.md)

Exports
- `advise_from_events(scored, decisions, *, since=None, until=None, settings=None, cost=None,
  student_share=None) -> AdviceReport` — the figures and the verdict of every workload, from the scored
  traces (`ScoredTrace`, topic `traces_scored`) and the router's decisions (`RouteDecision`, topic
  `router_decisions`) of a time range;
- `AdviceReport`, `WorkloadAdvice`, `Symptom` — the report (`to_dict()` has every number);
- `render_text`, `render_markdown`, `to_json` — a terminal table, a markdown section, JSON text;
- `estimate_tokens(text)`, `prompt_tokens(trace)`, `step_spread(step_counts)` — the estimates, on their own;
- `parse_when(value, now)` — `--since` / `--until`: ISO-8601, or `30m`, `2h`, `1d`, ... back from `now`;
- `AdviseError` — no event in the range (or another reason there is nothing to advise on).

Costs are the demo's (`stillflow.costs.CostModel`), so the cost per day here is the demo report's cost per
task × the same range's task rate.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from stillflow.contracts import AgentTrace, RouteDecision, ScoredTrace, StepType, TraceStep
from stillflow.costs import NOBODY, TEACHER, CostModel, parse_served_by, student_turns
from stillflow.settings import AdviseSettings, StillflowSettings
from stillflow.workloads import DEFAULT_TEMPLATE, resolve_workload

__all__ = [
    "TOOL_VALIDITY",
    "AdviseError",
    "Symptom",
    "WorkloadAdvice",
    "AdviceReport",
    "advise_from_events",
    "estimate_tokens",
    "prompt_tokens",
    "step_spread",
    "parse_when",
    "render_text",
    "render_markdown",
    "to_json",
]

# the gate that rejects hallucinated tool names and schema-invalid arguments (stillflow.quality.gates)
TOOL_VALIDITY = "tool_validity"
DAY_S = 86_400.0
DISTIL = "distil"
FINE_TUNE = "fine-tune"
PROMPTING = "stay with prompting"


class AdviseError(ValueError):
    """Nothing to advise on (no event in the range, a range that ends before it starts, ...)."""


# --------------------------------------------------------------------------- estimates

# A token is a run of letters/digits/underscore or one other non-space character: close to a BPE
# tokenizer's count on English prose, under it on JSON and non-Latin text. Only ratios and comparisons
# between workloads are read from it, where a common bias cancels.
_TOKEN = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(text: str) -> int:
    """Estimated tokens of `text`: words (runs of \\w) plus punctuation marks, one each."""
    return len(_TOKEN.findall(text)) if text else 0


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _step_text(step: TraceStep) -> str:
    """What a step adds to the conversation the model reads on its next call."""
    if step.step_type is StepType.observation:
        return step.observation_text()
    if step.step_type is StepType.tool_call:
        return " ".join(p for p in (step.content, step.tool_name or "", _compact(step.tool_args or {})) if p)
    return step.content


def _turn_starts(steps: list[TraceStep]) -> list[int]:
    """Indices of the steps that open a model call: the first step, and every non-observation step right
    after an observation (the tool results went back to the model, which answered again)."""
    return [i for i, s in enumerate(steps) if s.step_type is not StepType.observation
            and (i == 0 or steps[i - 1].step_type is StepType.observation)]


def prompt_tokens(trace: AgentTrace) -> tuple[int, int, int]:
    """(model calls, prompt tokens over them, of which system prompt + tool schemas) of one trace.

    Every call reads the system prompt, the tools' JSON schemas (as OpenAI's `tools`) and the task, then
    the conversation so far: the contents of all the steps before the call (its earlier turns and the tool
    results). A trace with no steps counts as no call.
    """
    starts = _turn_starts(trace.steps)
    if not starts:
        return 0, 0, 0
    fixed = estimate_tokens(trace.system_prompt) + sum(estimate_tokens(_compact(t.to_openai())) for t in trace.tools)
    task = estimate_tokens(trace.input_text)
    seen, grown, total = 0, 0, 0
    for start in starts:
        while seen < start:
            grown += estimate_tokens(_step_text(trace.steps[seen]))
            seen += 1
        total += fixed + task + grown
    return len(starts), total, fixed * len(starts)


def step_spread(step_counts: Iterable[int]) -> float:
    """Coefficient of variation (population standard deviation / mean) of the step counts of one task's
    traces; 0 when they all took no step."""
    counts = list(step_counts)
    mean = statistics.fmean(counts)
    return statistics.pstdev(counts) / mean if mean > 0 else 0.0


# --------------------------------------------------------------------------- time

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_when(value: str, now: datetime) -> datetime:
    """`--since` / `--until`: ISO-8601 (`2026-12-02T10:00:00Z`, a date; naive means UTC) or a duration back
    from `now` (`45s`, `30m`, `2h`, `1d`, `1w`). Raises ValueError with what is accepted."""
    m = _RELATIVE.match(value)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2).lower()])
    try:
        ts = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is neither ISO-8601 (2026-12-02T10:00:00Z) nor a duration back from now "
                         "(30m, 2h, 1d)") from None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Symptom:
    """One line of the seed's table: a symptom, its measured value, the threshold and the remedy."""

    key: str
    name: str
    value: float | None  # None: not measurable in this range (see `note`)
    threshold: float
    unit: str  # how to read value and threshold: per_day, seconds, share, ratio
    remedy: str
    note: str = ""

    @property
    def present(self) -> bool:
        return self.value is not None and self.value > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "present": self.present}


@dataclass
class WorkloadAdvice:
    """Every figure of one workload over the range (None: not measurable; see docs/advise.md)."""

    workload: str
    tasks: int  # scored traces
    calls: int  # router decisions (one per request; shadow ones only where no other was recorded)
    student_calls: int
    failed_calls: int
    tasks_per_day: float | None
    calls_per_day: float | None
    calls_per_task: float | None
    teacher_calls: int
    teacher_latency_per_call_s: float | None
    teacher_latency_per_task_s: float | None  # per call × calls per task
    teacher_wall_time_per_task_s: float | None  # mean wall time of the teacher-only traces (for comparison)
    model_calls: int  # model calls seen in the traces (turns), over which the prompt figures are
    prompt_tokens_per_call: float | None
    context_tokens_per_call: float | None  # system prompt + tool schemas
    context_share: float | None
    format_drift_traces: int
    format_drift: float | None
    repeated_tasks: int  # task ids with >= 2 traces
    inconsistency: float | None  # mean coefficient of variation of their step counts
    tokens_per_task: float | None
    cost_usd: float  # the range's episodes, priced by the cost model
    cost_per_task_usd: float | None
    cost_per_day_usd: float | None  # now: cost_usd / span × 1 day
    student_share: float | None  # measured: student calls / calls
    assumed_student_share: float | None  # the share "with the student" is costed at (measured unless given)
    teacher_only_cost_per_day_usd: float | None
    with_student_cost_per_day_usd: float | None
    saving_per_day_usd: float | None  # teacher-only - with the student
    symptoms: list[Symptom] = field(default_factory=list)

    @property
    def remedies(self) -> list[str]:
        found = {s.remedy for s in self.symptoms if s.present}
        return [r for r in (DISTIL, FINE_TUNE) if r in found]

    @property
    def verdict(self) -> str:
        return " + ".join(self.remedies) if self.remedies else PROMPTING

    def verdict_line(self) -> str:
        present = [s for s in self.symptoms if s.present]
        if not present:
            unknown = [s.name for s in self.symptoms if s.value is None]
            tail = f" (not measured: {', '.join(unknown)})" if unknown else ""
            return f"{self.workload}: {PROMPTING} — no symptom above its threshold{tail}"
        why = "; ".join(f"{s.name} {_fmt(s.value, s.unit)} > {_fmt(s.threshold, s.unit)}" for s in present)
        line = f"{self.workload}: {self.verdict} — {why}"
        if self.saving_per_day_usd is not None and self.assumed_student_share:
            line += (f"; the student at {_pct(self.assumed_student_share)} of calls saves "
                     f"${self.saving_per_day_usd:,.2f}/day")
        return line

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["symptoms"] = [s.to_dict() for s in self.symptoms]
        d["remedies"] = self.remedies
        d["verdict"] = self.verdict
        d["verdict_line"] = self.verdict_line()
        return d


@dataclass
class AdviceReport:
    since: datetime  # the range's start: --since, else the first event
    until: datetime  # its end: --until, else the last event
    span_s: float
    span_source: str  # "range" (given), "events" (first to last event) or "mixed"
    scored: int
    decisions: int
    teacher_price_per_1k: float
    student_price_per_1k: float
    thresholds: dict[str, float]
    workloads: list[WorkloadAdvice]

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "span_s": self.span_s,
            "span_source": self.span_source,
            "scored": self.scored,
            "decisions": self.decisions,
            "teacher_price_per_1k": self.teacher_price_per_1k,
            "student_price_per_1k": self.student_price_per_1k,
            "thresholds": dict(self.thresholds),
            "workloads": [w.to_dict() for w in self.workloads],
        }


def _advise_settings(settings: StillflowSettings | AdviseSettings | None) -> tuple[AdviseSettings, str]:
    if isinstance(settings, AdviseSettings):
        return settings, DEFAULT_TEMPLATE
    s = settings if settings is not None else StillflowSettings()
    return s.advise, s.workloads.default


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _per_day(n: float, span_s: float) -> float | None:
    return n / span_s * DAY_S if span_s > 0 else None


def advise_from_events(
    scored: Iterable[ScoredTrace],
    decisions: Iterable[RouteDecision],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    settings: StillflowSettings | AdviseSettings | None = None,
    cost: CostModel | None = None,
    student_share: float | None = None,
) -> AdviceReport:
    """The advice for every workload seen in [since, until] (inclusive; None: from the first / to the last
    event). Scored traces are counted once per trace id, decisions once per request id (a request's shadow
    decision only when it has no other). Rates are over until - since. `cost` defaults to the settings'
    prices; `student_share` (0..1) costs "with the student" at that share instead of the measured one.
    Raises `AdviseError` when no event falls in the range."""
    adv, template = _advise_settings(settings)
    cost = cost or CostModel(adv.teacher_price_per_1k, adv.student_price_per_1k)
    if student_share is not None and not 0 <= student_share <= 1:
        raise AdviseError(f"student share must be in [0, 1], got {student_share}")
    if since is not None and until is not None and until < since:
        raise AdviseError(f"the range ends ({until.isoformat()}) before it starts ({since.isoformat()})")

    def inside(ts: datetime) -> bool:
        return (since is None or ts >= since) and (until is None or ts <= until)

    traces: dict[str, ScoredTrace] = {}
    for sc in scored:
        if inside(sc.timestamp) and sc.trace.trace_id not in traces:
            traces[sc.trace.trace_id] = sc
    by_request: dict[str, RouteDecision] = {}
    for d in decisions:
        if not inside(d.timestamp):
            continue
        seen = by_request.get(d.request_id)
        if seen is None or (seen.shadow and not d.shadow):
            by_request[d.request_id] = d
    if not traces and not by_request:
        where = ("in the events read" if since is None and until is None else
                 f"between {since.isoformat() if since else 'the first event'} and "
                 f"{until.isoformat() if until else 'the last event'}")
        raise AdviseError(f"no scored traces or route decisions {where}: nothing to advise on")

    times = [sc.timestamp for sc in traces.values()] + [d.timestamp for d in by_request.values()]
    start, end = since or min(times), until or max(times)
    span_s = max(0.0, (end - start).total_seconds())
    given = (since is not None) + (until is not None)
    span_source = ("events", "mixed", "range")[given]

    trace_workload: dict[str, str] = {}
    groups: dict[str, list[ScoredTrace]] = defaultdict(list)
    for sc in traces.values():
        t = sc.trace
        w = resolve_workload(t.workload, t.agent_id, template)
        trace_workload[t.trace_id] = w
        groups[w].append(sc)
    calls: dict[str, list[RouteDecision]] = defaultdict(list)
    for d in by_request.values():
        w = d.workload if d.workload else trace_workload.get(d.trace_id)
        calls[resolve_workload(w, None, template)].append(d)

    out = [_workload(w, groups.get(w, []), calls.get(w, []), span_s, adv, cost, student_share)
           for w in sorted(set(groups) | set(calls))]
    return AdviceReport(since=start, until=end, span_s=span_s, span_source=span_source, scored=len(traces),
                        decisions=len(by_request), teacher_price_per_1k=cost.teacher_price_per_1k,
                        student_price_per_1k=cost.student_price_per_1k,
                        thresholds=adv.model_dump(exclude={"teacher_price_per_1k", "student_price_per_1k"}),
                        workloads=out)


def _workload(name: str, scored: list[ScoredTrace], decisions: list[RouteDecision], span_s: float,
              adv: AdviseSettings, cost: CostModel, assumed_share: float | None) -> WorkloadAdvice:
    tasks, n_calls = len(scored), len(decisions)
    student_calls = sum(d.served_by not in (TEACHER, NOBODY) for d in decisions)
    failed_calls = sum(d.served_by == NOBODY for d in decisions)
    calls_per_task = n_calls / tasks if tasks and n_calls else None

    teacher = [d for d in decisions if d.served_by == TEACHER and not d.shadow]
    latency_note = ""
    if not teacher:  # shadow mode: its decisions are the only record of the teacher's requests
        teacher = [d for d in decisions if d.served_by == TEACHER]
        latency_note = "from shadow decisions (they wait for the student too)" if teacher else ""
    per_call = _mean([d.latency_seconds for d in teacher])
    per_task = per_call * calls_per_task if per_call is not None and calls_per_task is not None else None
    teacher_only = [sc.trace.wall_time_seconds for sc in scored
                    if student_turns(parse_served_by(sc.trace.metadata.get("served_by"))) == 0]

    model_calls = prompt_total = context_total = 0
    for sc in scored:
        n, p, c = prompt_tokens(sc.trace)
        model_calls += n
        prompt_total += p
        context_total += c
    drift = sum(TOOL_VALIDITY in sc.rejected_by for sc in scored)

    steps_by_task: dict[str, list[int]] = defaultdict(list)
    for sc in scored:
        steps_by_task[sc.trace.task_id].append(len(sc.trace.steps))
    spreads = [step_spread(v) for v in steps_by_task.values() if len(v) >= 2]

    cost_usd = sum(cost.trace_cost(sc.trace) for sc in scored)
    tokens = [sc.trace.total_tokens for sc in scored]
    tokens_per_task = _mean([float(t) for t in tokens])
    tasks_per_day = _per_day(tasks, span_s)
    share = student_calls / n_calls if n_calls else None
    s = assumed_share if assumed_share is not None else share
    teacher_only_day = with_student_day = saving = None
    if tasks_per_day is not None and tokens_per_task is not None:
        teacher_only_day = cost.cost(tokens_per_task, 0) * tasks_per_day
        if s is not None:
            with_student_day = cost.cost(tokens_per_task * (1 - s), tokens_per_task * s) * tasks_per_day
            saving = teacher_only_day - with_student_day

    context_share = context_total / prompt_total if prompt_total else None
    format_drift = drift / tasks if tasks else None
    inconsistency = _mean(spreads)
    symptoms = [
        Symptom("volume", "high volume", tasks_per_day, adv.min_tasks_per_day, "per_day", DISTIL,
                "" if tasks_per_day is not None else "the range spans no time"),
        Symptom("latency", "teacher latency per task", per_task, adv.max_teacher_latency_per_task_s, "seconds",
                DISTIL, latency_note if per_task is not None else "no call the teacher served, or no task"),
        Symptom("context", "context window too full", context_share, adv.max_context_share, "share", FINE_TUNE,
                "" if context_share is not None else "no trace with steps"),
        Symptom("format", "format drift", format_drift, adv.max_format_drift, "share", FINE_TUNE,
                "" if format_drift is not None else "no scored trace"),
        Symptom("inconsistency", "inconsistency", inconsistency, adv.max_inconsistency, "ratio", DISTIL,
                "" if inconsistency is not None else "no task ran twice"),
    ]
    return WorkloadAdvice(
        workload=name, tasks=tasks, calls=n_calls, student_calls=student_calls, failed_calls=failed_calls,
        tasks_per_day=tasks_per_day, calls_per_day=_per_day(n_calls, span_s), calls_per_task=calls_per_task,
        teacher_calls=len(teacher), teacher_latency_per_call_s=per_call, teacher_latency_per_task_s=per_task,
        teacher_wall_time_per_task_s=_mean(teacher_only), model_calls=model_calls,
        prompt_tokens_per_call=prompt_total / model_calls if model_calls else None,
        context_tokens_per_call=context_total / model_calls if model_calls else None,
        context_share=context_share, format_drift_traces=drift, format_drift=format_drift,
        repeated_tasks=len(spreads), inconsistency=inconsistency, tokens_per_task=tokens_per_task,
        cost_usd=cost_usd, cost_per_task_usd=cost_usd / tasks if tasks else None,
        cost_per_day_usd=_per_day(cost_usd, span_s), student_share=share, assumed_student_share=s,
        teacher_only_cost_per_day_usd=teacher_only_day, with_student_cost_per_day_usd=with_student_day,
        saving_per_day_usd=saving, symptoms=symptoms,
    )


# --------------------------------------------------------------------------- rendering


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "n/a"
    if unit == "per_day":
        return f"{x:,.0f}/day"
    if unit == "seconds":
        return f"{x:,.2f} s"
    if unit == "share":
        return _pct(x)
    return f"{x:.3f}"


def _num(x: float | None, fmt: str = ",.1f", prefix: str = "") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{prefix}{x:{fmt}}"


def _span(seconds: float) -> str:
    s = round(seconds)
    d, s = divmod(s, 86_400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] * bool(d) + [f"{h}h"] * bool(h) + [f"{m}m"] * bool(m) + [f"{s}s"] * (bool(s) or not (d or h or m))
    return " ".join(parts)


_SOURCE = {"range": "the given range", "events": "first to last event", "mixed": "the given bound and the events"}


def _head(r: AdviceReport) -> list[str]:
    return [
        f"range {r.since.isoformat(timespec='seconds')} .. {r.until.isoformat(timespec='seconds')} "
        f"({_span(r.span_s)}, {_SOURCE[r.span_source]}); {r.scored} scored traces, {r.decisions} route decisions",
        f"prices: teacher ${r.teacher_price_per_1k:g}, student ${r.student_price_per_1k:g} per 1k tokens",
    ]


def _figures(w: WorkloadAdvice) -> list[tuple[str, str]]:
    if w.assumed_student_share is None or w.assumed_student_share == 0:
        student = "no student served in the range (--student-share costs one)"
    else:
        measured = "" if w.assumed_student_share == w.student_share else (
            f" (measured {_pct(w.student_share) if w.student_share is not None else 'n/a'})")
        student = (f"{_num(w.with_student_cost_per_day_usd, ',.2f', '$')}/day with the student at "
                   f"{_pct(w.assumed_student_share)} of calls{measured}")
    return [
        ("volume", f"{w.tasks} tasks, {w.calls} calls: {_num(w.tasks_per_day, ',.0f')} tasks/day, "
                   f"{_num(w.calls_per_day, ',.0f')} calls/day, {_num(w.calls_per_task, '.2f')} calls/task"),
        ("teacher latency", f"{_num(w.teacher_latency_per_call_s, '.2f')} s/call over {w.teacher_calls} calls, "
                            f"{_num(w.teacher_latency_per_task_s, '.2f')} s/task (teacher-only traces' wall time "
                            f"{_num(w.teacher_wall_time_per_task_s, '.2f')} s)"),
        ("prompt", f"{_num(w.prompt_tokens_per_call, ',.0f')} tokens/call over {w.model_calls} model calls, "
                   f"{_num(w.context_tokens_per_call, ',.0f')} of them system prompt + tool schemas"),
        ("quality", f"{w.format_drift_traces} traces rejected by {TOOL_VALIDITY}; {w.repeated_tasks} tasks ran "
                    f"more than once"),
        ("cost", f"{_num(w.cost_per_task_usd, ',.5f', '$')}/task; {_num(w.cost_per_day_usd, ',.2f', '$')}/day now; "
                 f"{_num(w.teacher_only_cost_per_day_usd, ',.2f', '$')}/day teacher-only, {student}"),
    ]


def _symptom_rows(w: WorkloadAdvice) -> list[list[str]]:
    return [[s.name, _fmt(s.value, s.unit), f"> {_fmt(s.threshold, s.unit)}", s.remedy,
             "yes" if s.present else ("n/a" if s.value is None else "no")] for s in w.symptoms]


_HEADERS = ["symptom", "value", "threshold", "remedy", "present"]


def render_text(report: AdviceReport) -> str:
    """The report for a terminal: per workload its figures, the symptom table and the verdict line."""
    lines = ["stillflow advise: is distilling worth it, per workload", *_head(report)]
    for w in report.workloads:
        lines += ["", f"workload {w.workload}"]
        lines += [f"  {k:<16} {v}" for k, v in _figures(w)]
        rows = [_HEADERS, *_symptom_rows(w)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADERS))]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    lines += ["", "verdicts:"] + [f"  {w.verdict_line()}" for w in report.workloads]
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(report: AdviceReport, *, heading: str = "#") -> str:
    """The report as markdown (`heading`: the level of its title; the demo's report nests it with "##")."""
    sub = heading + "#"
    lines = [f"{heading} Which workloads are worth distilling", "", *(f"- {h}" for h in _head(report)), "",
             "| workload | tasks/day | calls/task | cost/day now | teacher-only | with the student | verdict |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for w in report.workloads:
        lines.append(
            f"| {_md_cell(w.workload)} | {_num(w.tasks_per_day, ',.0f')} | {_num(w.calls_per_task, '.2f')} | "
            f"{_num(w.cost_per_day_usd, ',.2f', '$')} | {_num(w.teacher_only_cost_per_day_usd, ',.2f', '$')} | "
            f"{_num(w.with_student_cost_per_day_usd, ',.2f', '$')} | {w.verdict} |")
    for w in report.workloads:
        lines += ["", f"{sub} {_md_cell(w.workload)}", ""]
        lines += [f"- {k}: {_md_cell(v)}" for k, v in _figures(w)]
        lines += ["", "| " + " | ".join(_HEADERS) + " |", "|---|---:|---:|---|---|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in _symptom_rows(w)]
        lines += ["", f"**Verdict:** {_md_cell(w.verdict_line())}"]
    return "\n".join(lines) + "\n"


def to_json(report: AdviceReport, *, indent: int | None = 2) -> str:
    """Every number of the report, as JSON text."""
    return json.dumps(report.to_dict(), indent=indent, ensure_ascii=False)
