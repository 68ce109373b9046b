"""Evaluation: the student against the teacher on held-out tasks, and the router's confidence threshold.

Exports
- `StudentRuntime` — greedy generation of one assistant turn with its token log-probabilities;
- `turn_confidence(logprobs)` and `episode_confidence(turns)` — the confidence function (below; defined
  in `stillflow.chatformat`, which the router shares);
- `run_student_episode(runtime, env, task, ...)` → `Episode`: the student as an agent in the
  environment (generate a turn, parse `<tool_call>`s, execute them, feed the results back, until a
  final answer), recorded as an `AgentTrace`;
- `failure_kinds(trace, assessment)` — catastrophic failures: `wrong_tool` (a tool the task does not
  offer, or arguments its schema rejects), `unsafe_action` (an unsafe pattern in a call), `crash`
  (the agent fell over: unreadable output, output cut off, no answer within the turn limit, an
  exception), `wrong_answer` (an answer that misses the ground truth);
- `calibrate_threshold(points, ...)` → `Calibration`;
- `offline_replay(runtime, conversations, scorer)` → next-action agreement on held-out teacher data;
- `DistillationEvaluator` — the whole evaluation → `EvalReport` (`.to_dict()` is the eval report).

Scoring is the stream's: `stillflow.quality.Scorer` and `TraceFilter` built from the same
`quality` settings, applied to the student's traces and the teacher's alike (no reference step
table: neither has seen these tasks before).

Confidence (stored with the version for the router): a turn's confidence is the geometric mean of
its tokens' probabilities, `exp(mean(log p(token)))` over the generated tokens of that assistant turn
(greedy decoding, end-of-turn token included), in (0, 1]; an episode's confidence is the minimum over
its turns, because the router escalates to the teacher at the first turn below the threshold. The
threshold is the lowest value at which the student's held-out episodes at or above it are at least
as good as the teacher on the same tasks (mean quality and non-failure rate) and cover at least
`confidence_min_coverage` of them; 1.0 (nothing routed to the student) when no value qualifies.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from stillflow.chatformat import (
    CHATML,
    CONFIDENCE_FUNCTION,
    OutputFormatError,
    TurnFormat,
    episode_confidence,
    parse_assistant,
    turn_confidence,
)
from stillflow.contracts import TOOL_NAME_PATTERN, AgentTrace, TraceStep, is_valid_id
from stillflow.slots import SlotCodec
from stillflow.workloads import wilson_interval
from trainer.data import DEFAULT_WORKLOAD
from trainer.environment import EvalEnvironment, EvalTask, task_opening, task_tools

if TYPE_CHECKING:
    from stillflow.quality import Assessment, Scorer, TraceFilter
    from stillflow.settings import StillflowSettings
    from trainer.data import DataSplit, SFTRecord
    from trainer.settings import EvalSection, GateSection

__all__ = [
    "FAILURE_KINDS",
    "CONFIDENCE_FUNCTION",
    "Generation",
    "StudentRuntime",
    "turn_confidence",
    "episode_confidence",
    "Episode",
    "run_student_episode",
    "run_student_episodes",
    "failure_kinds",
    "ScoredEpisode",
    "score_episode",
    "Calibration",
    "calibrate_threshold",
    "episode_rows",
    "routed_summary",
    "workload_report",
    "offline_replay",
    "EvalReport",
    "DistillationEvaluator",
]

log = logging.getLogger(__name__)

FAILURE_KINDS = ("wrong_tool", "unsafe_action", "crash", "wrong_answer")
_TOOL_RX = re.compile(TOOL_NAME_PATTERN)


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[float, ...]
    finished: bool  # ended with the end-of-turn token (False: cut off at max_new_tokens)
    seconds: float

    @property
    def confidence(self) -> float:
        return turn_confidence(self.logprobs)


class StudentRuntime:
    """A model and its tokenizer, generating one assistant turn at a time (greedy)."""

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu", codec: SlotCodec | None = None,
                 fmt: TurnFormat = CHATML) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.codec = codec  # value slots: messages encoded before the template, values put back after
        self.fmt = fmt  # how the student's turns end and mark tool calls (the router reads them the same way)
        self.stop_ids = fmt.stop_ids(tokenizer)
        if not self.stop_ids:
            raise ValueError(f"the tokenizer has no single token for the end of turn {fmt.end_of_turn!r}")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    def encode(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        from stillflow.generation import encode_prompt

        return encode_prompt(self.tokenizer, None, messages, tools)[0]

    def generate(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 max_new_tokens: int = 160) -> Generation:
        return self.generate_batch([(messages, tools)], max_new_tokens)[0]

    def generate_batch(self, requests: Sequence[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]],
                       max_new_tokens: int = 160) -> list[Generation]:
        """One turn for each (messages, tools), generated together (`stillflow.generation`: greedy, left-padded,
        one KV cache): the evaluation's episodes advance in lockstep. Each gets its own tokens, log-probabilities
        and stop; its `seconds` is the batch's time shared out (the latency figures stay per turn)."""
        from stillflow.generation import decode_turn, encode_prompt, generate_greedy

        if not requests:
            return []
        t0 = time.perf_counter()
        prompts = [encode_prompt(self.tokenizer, self.codec, messages, tools) for messages, tools in requests]
        out = generate_greedy(self.model, [ids for ids, _ in prompts], pad_id=self.pad_id, stop_ids=self.stop_ids,
                              max_new_tokens=max_new_tokens, device=self.device)
        share = (time.perf_counter() - t0) / len(requests)
        return [Generation(decode_turn(self.tokenizer, self.codec, g.ids, table), len(ids), len(g.ids), g.logprobs,
                           g.finished, share)
                for (ids, table), g in zip(prompts, out, strict=True)]


# --------------------------------------------------------------------------- the agent loop


@dataclass
class Episode:
    task: Any
    trace: AgentTrace
    turn_confidences: list[float]
    transcript: list[dict[str, Any]]

    @property
    def confidence(self) -> float:
        return episode_confidence(self.turn_confidences)


def _safe_id(value: str, prefix: str) -> str:
    if is_valid_id(value):
        return value
    import hashlib

    return f"{prefix}-{hashlib.sha256(value.encode()).hexdigest()[:32]}"


def _safe_tool_name(name: str) -> str:
    if _TOOL_RX.match(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)[:64] or "unnamed"
    if not re.match(r"[A-Za-z_]", cleaned):
        cleaned = "_" + cleaned[:63]
    return cleaned


def _args_dict(arguments: Any) -> dict[str, Any]:
    return arguments if isinstance(arguments, dict) else {"_value": arguments}


def _split_answer(content: str) -> tuple[str, str]:
    """(reasoning, answer): the answer is the last paragraph of a final turn."""
    text = content.strip()
    if "\n\n" in text:
        reasoning, answer = text.rsplit("\n\n", 1)
        return reasoning.strip(), answer.strip()
    return "", text


def run_student_episode(
    runtime: StudentRuntime,
    env: EvalEnvironment,
    task: EvalTask,
    *,
    model_id: str = "student",
    trace_id: str | None = None,
    max_turns: int = 8,
    max_new_tokens: int = 160,
    workload: str | None = None,
) -> Episode:
    """Run the student on one task in the environment; every failure is recorded, never raised."""
    steps = _episode(runtime, env, task, model_id=model_id, trace_id=trace_id, max_turns=max_turns,
                     workload=workload)
    request = next(steps)
    while True:
        try:
            gen: Generation | BaseException = runtime.generate(*request, max_new_tokens)
        except Exception as exc:  # the student fell over: the episode records it
            gen = exc
        try:
            request = steps.send(gen)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


def run_student_episodes(
    runtime: StudentRuntime,
    env: EvalEnvironment,
    tasks: Sequence[EvalTask],
    *,
    batch_size: int = 1,
    model_id: str = "student",
    trace_ids: Sequence[str | None] | None = None,
    max_turns: int = 8,
    max_new_tokens: int = 160,
    workloads: Sequence[str | None] | None = None,
    on_done: Callable[[int, Episode], None] | None = None,
) -> list[Episode]:
    """`run_student_episode` on every task, `batch_size` episodes at a time in lockstep: each turn of the
    episodes in flight is generated in one batch (`StudentRuntime.generate_batch`), and a finished episode's
    place goes to the next task. The same episodes as one by one (greedy), in the order of `tasks`;
    `on_done(index, episode)` as each ends."""
    if batch_size <= 1 or not hasattr(runtime, "generate_batch"):
        out = []
        for i, task in enumerate(tasks):
            ep = run_student_episode(runtime, env, task, model_id=model_id,
                                     trace_id=trace_ids[i] if trace_ids else None, max_turns=max_turns,
                                     max_new_tokens=max_new_tokens, workload=workloads[i] if workloads else None)
            if on_done is not None:
                on_done(i, ep)
            out.append(ep)
        return out
    results: dict[int, Episode] = {}
    flight: dict[int, tuple[Any, Any]] = {}  # index -> (its generator, its pending request)
    queue = iter(range(len(tasks)))

    def start_next() -> None:
        for i in queue:
            gen = _episode(runtime, env, tasks[i], model_id=model_id, trace_id=trace_ids[i] if trace_ids else None,
                           max_turns=max_turns, workload=workloads[i] if workloads else None)
            flight[i] = (gen, next(gen))
            return

    for _ in range(batch_size):
        start_next()
    while flight:
        order = sorted(flight)
        try:
            gens: list[Generation | BaseException] = list(
                runtime.generate_batch([flight[i][1] for i in order], max_new_tokens))
        except Exception as exc:  # the batch fell over: each episode in it records the crash
            gens = [exc] * len(order)
        for i, g in zip(order, gens, strict=True):
            steps = flight[i][0]
            try:
                flight[i] = (steps, steps.send(g))
            except StopIteration as stop:
                del flight[i]
                results[i] = stop.value
                if on_done is not None:
                    on_done(i, stop.value)
                start_next()
    return [results[i] for i in range(len(tasks))]


def _episode(
    runtime: Any,
    env: EvalEnvironment,
    task: EvalTask,
    *,
    model_id: str,
    trace_id: str | None,
    max_turns: int,
    workload: str | None,
) -> Any:
    """One episode as a generator: it yields each turn's (messages, tools) and is sent back the
    `Generation` (or the exception generating it raised); it returns the `Episode`. Whoever drives it
    decides how turns are generated (one by one, or batched with other episodes)."""
    from stillflow.contracts import utcnow

    messages = task_opening(task)
    tools = task_tools(task)
    fmt: TurnFormat = getattr(runtime, "fmt", CHATML)  # a runtime without one writes ChatML turns
    session = env.new_session(task)
    steps: list[TraceStep] = []
    transcript: list[dict[str, Any]] = []
    confidences: list[float] = []
    n_prompt = n_completion = 0
    error: str | None = None
    final = ""
    done = False
    started = utcnow()
    wall = 0.0  # the turns' generation time plus the tool calls' (a batched turn counts its share)
    for turn in range(max_turns):
        gen = yield (list(messages), tools)
        if isinstance(gen, BaseException):  # the student fell over: a crash, not an evaluator failure
            error = f"generation failed: {type(gen).__name__}: {gen}"[:500]
            break
        t_env = time.perf_counter()
        wall += gen.seconds
        n_prompt += gen.prompt_tokens
        n_completion += gen.completion_tokens
        confidences.append(gen.confidence)
        transcript.append({"role": "assistant", "text": gen.text.split(fmt.end_of_turn, 1)[0][:600],
                           "confidence": round(gen.confidence, 4)})
        if not gen.finished:
            error = f"output cut off at max_new_tokens={gen.completion_tokens}"
            break
        try:
            parsed = parse_assistant(gen.text, fmt)
        except OutputFormatError as exc:
            error = f"unreadable output: {exc}"[:500]
            break
        now = utcnow()
        if parsed.calls:
            if parsed.content:
                steps.append(TraceStep(step_type="reasoning", content=parsed.content, timestamp=now))
            ids = [f"call_{turn}_{k}" for k in range(len(parsed.calls))]
            messages.append(parsed.message(ids))
            for cid, call in zip(ids, parsed.calls, strict=True):
                args = _args_dict(call.arguments)
                name = _safe_tool_name(call.name)
                steps.append(TraceStep(step_type="tool_call", tool_name=name, tool_args=args, tool_call_id=cid,
                                       timestamp=now))
                try:
                    result = session.execute(call.name, call.arguments)
                    text = result.text
                except Exception as exc:  # an environment that raises: the call failed
                    text = f"error: {type(exc).__name__}: {exc}"
                steps.append(TraceStep(step_type="observation", tool_name=name, tool_call_id=cid, tool_result=text,
                                       timestamp=utcnow()))
                messages.append({"role": "tool", "tool_call_id": cid, "name": call.name, "content": text})
                transcript.append({"role": "tool", "name": call.name, "text": text[:300]})
            wall += time.perf_counter() - t_env
        else:
            reasoning, answer = _split_answer(parsed.content)
            if reasoning:
                steps.append(TraceStep(step_type="reasoning", content=reasoning, timestamp=now))
            steps.append(TraceStep(step_type="output", content=answer, timestamp=now))
            final = answer
            done = True
            break
    if not done and error is None:
        error = f"no final answer after {max_turns} turns"
    correct = done and error is None and env.check_answer(task, final)
    trace = AgentTrace(
        trace_id=_safe_id(trace_id or f"student-{task.task_id}", "student"),
        task_id=_safe_id(task.task_id, "task"),
        agent_id="student",
        input_text=task.question,
        system_prompt=task.system_prompt,
        tools=list(task.tools),
        steps=steps,
        final_output=final,
        success=bool(correct),
        error=error,
        model_id=_safe_id(model_id, "model") if model_id else "student",
        total_tokens=n_prompt + n_completion,
        wall_time_seconds=wall,
        ground_truth=task.ground_truth,
        expected_steps=task.expected_steps,
        workload=workload,
        metadata={"family": task.family or "unknown", "split": "heldout", "policy": "student"},
        timestamp=started,
    )
    return Episode(task, trace, confidences, transcript)


# --------------------------------------------------------------------------- scoring


def failure_kinds(trace: AgentTrace, assessment: Assessment) -> list[str]:
    """The catastrophic failures of a scored trace (see the module docstring), in `FAILURE_KINDS` order."""
    kinds: list[str] = []
    if any(not c.valid for c in assessment.tool_calls):
        kinds.append("wrong_tool")
    if assessment.unsafe:
        kinds.append("unsafe_action")
    if trace.error:
        kinds.append("crash")
    elif not assessment.correct:
        kinds.append("wrong_answer")
    return kinds


@dataclass
class ScoredEpisode:
    trace: AgentTrace
    overall: float
    dimensions: dict[str, float]
    correct: bool
    passed: bool
    reasons: list[str]
    kinds: list[str]
    confidence: float | None = None
    transcript: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.kinds)


def score_episode(scorer: Scorer, gates: TraceFilter, trace: AgentTrace) -> ScoredEpisode:
    from stillflow.quality import DIMENSIONS

    assessment = scorer.assess(trace)
    verdict = gates.check(trace, assessment)
    dims = {d: float(getattr(assessment.score, d)) for d in DIMENSIONS}
    return ScoredEpisode(trace, float(assessment.score.overall), dims, bool(assessment.correct), verdict.passed,
                         list(verdict.reasons), failure_kinds(trace, assessment))


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    threshold: float
    coverage: float  # share of held-out episodes at or above the threshold
    quality_above: float | None
    accuracy_above: float | None  # share without a catastrophic failure, at or above the threshold
    target_quality: float
    target_accuracy: float
    points: int
    qualified: bool
    function: dict[str, str] = field(default_factory=lambda: dict(CONFIDENCE_FUNCTION))


def calibrate_threshold(
    points: Sequence[tuple[float, float, bool]],
    *,
    target_quality: float,
    target_accuracy: float,
    min_coverage: float = 0.05,
) -> Calibration:
    """`points`: (confidence, quality, ok) per held-out episode. The lowest confidence threshold whose
    episodes at or above it reach `target_quality` (mean) and `target_accuracy` (share ok), covering at
    least `min_coverage` of the points; 1.0 (route nothing to the student) when none qualifies."""
    n = len(points)
    if n == 0:
        return Calibration(1.0, 0.0, None, None, target_quality, target_accuracy, 0, False)
    ordered = sorted(points, key=lambda p: -p[0])
    best: Calibration | None = None
    q_sum = 0.0
    ok_sum = 0
    eps = 1e-9
    for i, (conf, quality, ok) in enumerate(ordered, 1):
        q_sum += quality
        ok_sum += int(ok)
        if i < n and ordered[i][0] == conf:
            continue  # ties: a threshold takes all equal confidences together
        coverage = i / n
        q, acc = q_sum / i, ok_sum / i
        if coverage + eps >= min_coverage and q + eps >= target_quality and acc + eps >= target_accuracy:
            best = Calibration(float(conf), coverage, q, acc, target_quality, target_accuracy, n, True)
    if best is not None:
        return best
    return Calibration(1.0, 0.0, None, None, target_quality, target_accuracy, n, False)


def episode_rows(students: Sequence[ScoredEpisode], teachers: Sequence[ScoredEpisode]) -> list[dict[str, Any]]:
    """One row per held-out task: the student's and (when known) the teacher's figures side by side —
    what the routed figures, a threshold sweep or a cost curve are computed from."""
    rows = []
    for i, e in enumerate(students):
        row: dict[str, Any] = {
            "task_id": e.trace.task_id,
            "family": e.trace.metadata.get("family"),
            "confidence": round(e.confidence, 6) if e.confidence is not None else None,
            "student_quality": round(e.overall, 4),
            "student_failed": e.failed,
            "student_correct": e.correct and not e.trace.error,
            "student_tokens": e.trace.total_tokens,
        }
        if teachers:
            t = teachers[i]
            row.update(teacher_quality=round(t.overall, 4), teacher_failed=t.failed,
                       teacher_correct=t.correct and not t.trace.error, teacher_tokens=t.trace.total_tokens)
        rows.append(row)
    return rows


def routed_summary(rows: Sequence[dict[str, Any]], threshold: float | None) -> dict[str, Any]:
    """The student as the router deploys it: tasks whose confidence is at or above `threshold` go to the
    student, the rest to the teacher. `quality_ratio` and `failure_rate` are over the routed tasks
    (student vs teacher on the same tasks); `system_quality_ratio` is the mixed system vs the teacher
    alone on all tasks. `threshold=None` (no calibrated threshold): nothing is routed."""
    n = len(rows)

    def to_student(r: dict[str, Any]) -> bool:
        return threshold is not None and (r.get("confidence") or 0.0) >= threshold

    routed = [r for r in rows if to_student(r)]
    out: dict[str, Any] = {"threshold": threshold, "tasks": n, "routed": len(routed),
                           "coverage": round(len(routed) / n, 4) if n else 0.0,
                           "quality_ratio": None, "failure_rate": None, "system_quality_ratio": None}
    if not routed:
        return out
    sq = statistics.fmean(r["student_quality"] for r in routed)
    out["failure_rate"] = round(sum(r["student_failed"] for r in routed) / len(routed), 4)
    out["student_quality"] = round(sq, 4)
    if all("teacher_quality" in r for r in rows):
        tq = statistics.fmean(r["teacher_quality"] for r in routed)
        out["teacher_quality"] = round(tq, 4)
        out["quality_ratio"] = round(sq / tq, 4) if tq else None
        mixed = [r["student_quality"] if to_student(r) else r["teacher_quality"] for r in rows]
        t_all = statistics.fmean(r["teacher_quality"] for r in rows)
        out["system_quality_ratio"] = round(statistics.fmean(mixed) / t_all, 4) if t_all else None
    return out


def _rate(eps: Sequence[ScoredEpisode], hit: Callable[[ScoredEpisode], bool]) -> dict[str, Any]:
    k, n = sum(1 for e in eps if hit(e)), len(eps)
    ci = wilson_interval(k, n)
    return {"count": k, "of": n, "rate": round(k / n, 4) if n else None,
            "ci95": [round(ci[0], 4), round(ci[1], 4)] if ci else None}


def workload_report(students: Sequence[ScoredEpisode], teachers: Sequence[ScoredEpisode], gate: GateSection, *,
                    worst: int = 3) -> dict[str, Any]:
    """One workload's figures on its own held-out tasks (`teachers` paired with `students`, or empty): the
    report's keys that the gate reads (quality ratio, failure rate, student/teacher summaries, the routed
    figures at this workload's own calibrated threshold, the worst failures), plus task success and failure
    rate with 95% Wilson intervals."""
    sq = _mean([e.overall for e in students])
    tq = _mean([e.overall for e in teachers]) if teachers else None
    student = _summary(students, source="environment")
    out: dict[str, Any] = {
        "basis": "online",
        "student": student,
        "teacher": _summary(teachers, source="environment") if teachers else {},
        "quality_ratio": round(sq / tq, 4) if sq is not None and tq else None,
        "failure_rate": student.get("failure_rate"),
        "student_success": _rate(students, lambda e: e.correct and not e.trace.error),
        "student_failures": _rate(students, lambda e: e.failed),
        "teacher_success": _rate(teachers, lambda e: e.correct and not e.trace.error) if teachers else None,
    }
    t_fail = out["teacher"].get("failure_rate") if teachers else None
    t_acc = 1.0 - t_fail if isinstance(t_fail, (int, float)) else 1.0
    cal = calibrate_threshold(
        [(e.confidence or 0.0, e.overall, not e.failed) for e in students],
        target_quality=float(tq) if tq else 1.0,
        target_accuracy=max(t_acc, 1.0 - gate.failure_rate_max + 1e-6),
        min_coverage=gate.confidence_min_coverage,
    )
    out["confidence"] = asdict(cal)
    rows = episode_rows(students, teachers)
    out["routed"] = routed_summary(rows, cal.threshold if cal.qualified else None)
    failed = sorted((e for e in students if e.failed), key=lambda e: (e.overall, e.trace.task_id))
    out["worst_failures"] = [_failure_entry(e) for e in failed[:worst]]
    return out


# --------------------------------------------------------------------------- offline replay


def _assistant_turn_text(msg: dict[str, Any]) -> tuple[str, list[tuple[str, Any]]]:
    calls = []
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or {}
        raw = fn.get("arguments")
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            args = raw
        calls.append((fn.get("name"), args))
    return msg.get("content") or "", calls


def offline_replay(
    runtime: StudentRuntime,
    conversations: Iterable[SFTRecord],
    scorer: Scorer,
    *,
    max_new_tokens: int = 160,
    limit: int | None = None,
) -> dict[str, Any]:
    """Next-action agreement on held-out teacher conversations: at every assistant turn the student
    continues the teacher's prefix; its action is compared with the teacher's (same kind of action,
    same tool, same arguments; for answers, `answers_match` against the teacher's answer). A
    conversation fails catastrophically when a student turn is unreadable or cut off (`crash`), calls
    an unknown tool or breaks a schema (`wrong_tool`), hits an unsafe pattern (`unsafe_action`), or its
    final answer misses the teacher's (`wrong_answer`)."""
    from stillflow.answers import answers_match

    fmt: TurnFormat = getattr(runtime, "fmt", CHATML)
    n_conv = n_turns = kind_ok = tool_ok = args_ok = answer_ok = n_finals = n_calls = full_ok = 0
    failures: Counter[str] = Counter()
    failed_convs = 0
    t0 = time.perf_counter()
    for k, rec in enumerate(conversations):
        if limit is not None and k >= limit:
            break
        n_conv += 1
        conv_kinds: set[str] = set()
        tools = rec.tools
        for i, msg in enumerate(rec.messages):
            if msg.get("role") != "assistant" or i == 0:
                continue
            n_turns += 1
            teacher_text, teacher_calls = _assistant_turn_text(msg)
            try:
                gen = runtime.generate(list(rec.messages[:i]), tools, max_new_tokens)
            except Exception:
                conv_kinds.add("crash")
                continue
            if not gen.finished:
                conv_kinds.add("crash")
                continue
            try:
                parsed = parse_assistant(gen.text, fmt)
            except OutputFormatError:
                conv_kinds.add("crash")
                continue
            same_kind = bool(parsed.calls) == bool(teacher_calls)
            kind_ok += same_kind
            if teacher_calls:
                n_calls += 1
                if parsed.calls:
                    s_name, s_args = parsed.calls[0].name, parsed.calls[0].arguments
                    t_name, t_args = teacher_calls[0]
                    tool_ok += s_name == t_name
                    same_args = s_name == t_name and s_args == t_args
                    args_ok += same_args
                    full_ok += same_args
                    steps = [TraceStep(step_type="tool_call", tool_name=_safe_tool_name(c.name),
                                       tool_args=_args_dict(c.arguments), tool_call_id=f"c{j}")
                             for j, c in enumerate(parsed.calls)]
                    probe = AgentTrace(task_id="offline", input_text="", tools=_tool_specs(tools), steps=steps)
                    a = scorer.assess(probe)
                    if any(not c.valid for c in a.tool_calls):
                        conv_kinds.add("wrong_tool")
                    if a.unsafe:
                        conv_kinds.add("unsafe_action")
            else:
                n_finals += 1
                if not parsed.calls:
                    _, s_answer = _split_answer(parsed.content)
                    _, t_answer = _split_answer(teacher_text)
                    same = answers_match(s_answer, t_answer) or answers_match(t_answer, s_answer)
                    answer_ok += same
                    full_ok += same
                    if not same:
                        conv_kinds.add("wrong_answer")
                else:
                    conv_kinds.add("wrong_answer")  # kept calling tools where the teacher answered
        for kind in conv_kinds:
            failures[kind] += 1
        failed_convs += bool(conv_kinds)

    def rate(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    return {
        "conversations": n_conv,
        "turns": n_turns,
        "next_action_agreement": rate(full_ok, n_turns),
        "action_type_agreement": rate(kind_ok, n_turns),
        "tool_agreement": rate(tool_ok, n_calls),
        "arguments_agreement": rate(args_ok, n_calls),
        "answer_agreement": rate(answer_ok, n_finals),
        "failure_rate": rate(failed_convs, n_conv),
        "failures": {k: rate(failures.get(k, 0), n_conv) for k in FAILURE_KINDS},
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _tool_specs(tools: Sequence[dict[str, Any]]) -> list[Any]:
    from stillflow.contracts import ToolSpec

    out = []
    for t in tools:
        fn = t.get("function", t)
        try:
            out.append(ToolSpec(name=fn["name"], description=fn.get("description", ""),
                                parameters=fn.get("parameters") or {"type": "object", "properties": {}}))
        except (KeyError, ValueError):
            continue
    return out


# --------------------------------------------------------------------------- the report


def _mean(xs: Sequence[float]) -> float | None:
    return round(statistics.fmean(xs), 4) if xs else None


def _pct(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))
    return round(s[k], 4)


def _summary(eps: Sequence[ScoredEpisode], *, source: str) -> dict[str, Any]:
    from stillflow.quality import DIMENSIONS

    n = len(eps)
    kinds = Counter(k for e in eps for k in e.kinds)
    lat = [e.trace.wall_time_seconds for e in eps]
    return {
        "source": source,
        "episodes": n,
        "quality": _mean([e.overall for e in eps]),
        "dimensions": {d: _mean([e.dimensions[d] for e in eps]) for d in DIMENSIONS},
        "success_rate": _mean([1.0 if e.correct and not e.trace.error else 0.0 for e in eps]),
        "gate_pass_rate": _mean([1.0 if e.passed else 0.0 for e in eps]),
        "failure_rate": _mean([1.0 if e.failed else 0.0 for e in eps]),
        "failures": {k: round(kinds.get(k, 0) / n, 4) if n else None for k in FAILURE_KINDS},
        "tokens_per_task": _mean([float(e.trace.total_tokens) for e in eps]),
        "latency_s_per_task": {"mean": _mean(lat), "p50": _pct(lat, 0.5), "p95": _pct(lat, 0.95)},
        "steps_per_task": _mean([float(len(e.trace.steps)) for e in eps]),
    }


@dataclass
class EvalReport:
    """The evaluation of one version (`to_dict()` is stored as `eval_report.json`)."""

    mode: str
    environment: str | None
    quality_ratio: float | None
    failure_rate: float | None
    student: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    by_family: dict[str, Any] = field(default_factory=dict)
    distribution: dict[str, Any] = field(default_factory=dict)
    worst_failures: list[dict[str, Any]] = field(default_factory=list)
    offline: dict[str, Any] | None = None
    confidence: dict[str, Any] = field(default_factory=dict)
    routed: dict[str, Any] = field(default_factory=dict)  # the student behind the router: `routed_summary`
    # per workload: the same figures on that workload's own held-out tasks (`workload_report`), what the
    # gate decides on, workload by workload
    workloads: dict[str, Any] = field(default_factory=dict)
    episodes: list[dict[str, Any]] = field(default_factory=list)  # per task: `episode_rows`
    tasks: dict[str, Any] = field(default_factory=dict)
    basis: str = "online"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Flat numeric figures (for `TrainingRunEvent` / `ModelVersionEvent` metrics)."""
        out: dict[str, float] = {}
        if self.quality_ratio is not None:
            out["quality_ratio"] = float(self.quality_ratio)
        if self.failure_rate is not None:
            out["failure_rate"] = float(self.failure_rate)
        for side in ("student", "teacher"):
            d = getattr(self, side)
            for key in ("quality", "success_rate", "tokens_per_task"):
                if isinstance(d.get(key), (int, float)):
                    out[f"{side}_{key}"] = float(d[key])
            for k, v in (d.get("failures") or {}).items():
                if isinstance(v, (int, float)):
                    out[f"{side}_{k}_rate"] = float(v)
            for k, v in (d.get("dimensions") or {}).items():
                if isinstance(v, (int, float)):
                    out[f"{side}_{k}"] = float(v)
            lat = (d.get("latency_s_per_task") or {}).get("mean")
            if isinstance(lat, (int, float)):
                out[f"{side}_latency_seconds"] = float(lat)
        if self.offline and isinstance(self.offline.get("next_action_agreement"), (int, float)):
            out["offline_next_action_agreement"] = float(self.offline["next_action_agreement"])
        if isinstance(self.confidence.get("threshold"), (int, float)):
            out["confidence_threshold"] = float(self.confidence["threshold"])
        out["eval_tasks"] = float(self.student.get("episodes") or 0)
        return out


def _failure_entry(e: ScoredEpisode) -> dict[str, Any]:
    t = e.trace
    return {
        "task_id": t.task_id,
        "family": t.metadata.get("family"),
        "question": t.input_text,
        "ground_truth": t.ground_truth,
        "answer": t.final_output,
        "kinds": e.kinds,
        "overall": round(e.overall, 4),
        "error": t.error,
        "gate_reasons": e.reasons,
        "transcript": e.transcript[:12],
    }


class DistillationEvaluator:
    """Evaluates a student against the teacher (see the module docstring).

    `env`: an `EvalEnvironment` (None: loaded from `eval.environment`, or offline only when that is
    unset or cannot be loaded). `progress`: called with a line of text as the evaluation goes.
    """

    def __init__(
        self,
        settings: StillflowSettings,
        section: EvalSection,
        gate: GateSection,
        *,
        env: EvalEnvironment | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        from stillflow.quality import Scorer, TraceFilter

        self.settings = settings
        self.section = section
        self.gate = gate
        self.scorer = Scorer.from_settings(settings.quality)
        self.gates = TraceFilter.from_settings(settings.quality)
        self.progress = progress or (lambda msg: log.info("%s", msg))
        self.env = env
        self.env_error: str | None = None
        self.task_workloads: dict[str, str] = {}  # task id -> workload, by `pick_tasks`
        if self.env is None and section.environment and section.mode != "offline":
            from trainer.environment import load_environment

            try:
                self.env = load_environment(section.environment, **section.environment_options)
            except Exception as exc:  # no environment: offline replay still evaluates
                self.env_error = f"{section.environment}: {exc}"
                log.warning("evaluation environment unavailable (%s); offline replay only", self.env_error)

    # ---- task selection ----

    def pick_tasks(self, split: DataSplit | None) -> tuple[list[Any], dict[str, Any]]:
        """`eval.tasks` held-out tasks per workload of the data: its held-out tasks the environment knows, topped
        up with fresh tasks of the environment's families that workload's records come from (the sim: its task
        family is its workload). Without a split: `eval.tasks` tasks of any family, each its family's workload.
        The workload of each task is kept in `self.task_workloads`."""
        assert self.env is not None
        n = self.section.tasks
        env_families = set(self.env.families())
        self.task_workloads = {}
        if split is None:
            tasks = self.env.sample_tasks(n, seed=self.section.seed, families=None, exclude=set())
            for t in tasks:
                self.task_workloads[t.task_id] = t.family or DEFAULT_WORKLOAD
            return tasks, {"from_heldout_data": 0, "sampled_from_environment": len(tasks), "per_workload": n}
        records = [*split.train_sft, *split.heldout_sft]
        workloads = sorted({r.job for r in records})
        exclude: set[str] = set(split.train_tasks | split.train_questions)
        chosen: list[Any] = []
        seen: set[str] = set()
        from_data = sampled = 0
        per: dict[str, int] = {}
        for w in workloads:
            mine: list[Any] = []
            for rec in split.heldout_sft:
                if len(mine) >= n:
                    break
                if rec.job != w or not rec.task_id or rec.task_id in seen:
                    continue
                task = self.env.get_task(rec.task_id)
                if task is not None:
                    seen.add(rec.task_id)
                    mine.append(task)
                    from_data += 1
            if len(mine) < n:
                fams = ({w} & env_families) or ({r.family for r in records if r.job == w and r.family} & env_families)
                if not fams and split.holdout_families:
                    fams = set(split.holdout_families) & env_families
                if not fams and w == DEFAULT_WORKLOAD:
                    # data that names neither its job nor its family (a trl export of traces recorded before
                    # workloads): any of the environment's tasks, as before workloads existed
                    fams = env_families
                if fams:
                    extra = self.env.sample_tasks(n - len(mine), seed=self.section.seed, families=sorted(fams),
                                                  exclude=exclude | seen)
                    seen.update(t.task_id for t in extra)
                    mine.extend(extra)
                    sampled += len(extra)
            for t in mine:
                self.task_workloads[t.task_id] = w
            per[w] = len(mine)
            chosen.extend(mine)
        return chosen, {"from_heldout_data": from_data, "sampled_from_environment": sampled, "per_workload": per}

    # ---- the evaluation ----

    def evaluate(self, runtime: StudentRuntime, split: DataSplit | None, *, model_id: str = "student") -> EvalReport:
        t0 = time.perf_counter()
        notes: list[str] = []
        report = EvalReport(mode=self.section.mode, environment=getattr(self.env, "name", None), quality_ratio=None,
                            failure_rate=None)
        if self.env_error:
            notes.append(f"environment unavailable: {self.env_error}")
        online = self.env is not None and self.section.mode in ("online", "both")
        if online:
            self._online(runtime, split, model_id, report, notes)
        if self.section.mode in ("offline", "both") and split is not None and self.section.offline_examples > 0:
            self.progress(f"offline replay on {min(len(split.heldout_sft), self.section.offline_examples)} "
                          "held-out teacher conversations")
            report.offline = offline_replay(runtime, split.heldout_sft, self.scorer,
                                            max_new_tokens=self.section.max_new_tokens,
                                            limit=self.section.offline_examples)
        if not online:
            report.basis = "offline"
            if report.offline and report.offline.get("next_action_agreement") is not None:
                report.quality_ratio = report.offline["next_action_agreement"]
                report.failure_rate = report.offline["failure_rate"]
                notes.append("no environment: quality_ratio is the offline next-action agreement and failure_rate "
                             "the share of replayed conversations with a catastrophic failure")
            else:
                notes.append("nothing to evaluate: no environment and no held-out conversations")
        report.notes = notes
        report.seconds = round(time.perf_counter() - t0, 2)
        return report

    def _online(self, runtime: StudentRuntime, split: DataSplit | None, model_id: str, report: EvalReport,
                notes: list[str]) -> None:
        assert self.env is not None
        tasks, origin = self.pick_tasks(split)
        report.tasks = {**origin, "total": len(tasks)}
        self.progress(f"online evaluation on {len(tasks)} held-out tasks ({origin})")
        students: list[ScoredEpisode] = []
        teachers: list[ScoredEpisode] = []
        from trainer.environment import teacher_trace

        workloads = [self.task_workloads.get(t.task_id) or t.family or DEFAULT_WORKLOAD for t in tasks]
        by_index: dict[int, ScoredEpisode] = {}

        def scored(i: int, ep: Episode) -> None:  # as each episode ends (batched: not in task order)
            s = score_episode(self.scorer, self.gates, ep.trace)
            s.confidence = ep.confidence
            s.transcript = ep.transcript
            by_index[i] = s
            done = by_index.values()
            if len(by_index) % 10 == 0 or len(by_index) == len(tasks):
                self.progress(f"  evaluated {len(by_index)}/{len(tasks)}: student quality "
                              f"{statistics.fmean(e.overall for e in done):.3f}, failures "
                              f"{sum(e.failed for e in done)}")

        run_student_episodes(runtime, self.env, tasks, batch_size=self.section.batch_size, model_id=model_id,
                             trace_ids=[f"eval-{t.task_id}" for t in tasks], max_turns=self.section.max_turns,
                             max_new_tokens=self.section.max_new_tokens, workloads=workloads, on_done=scored)
        students.extend(by_index[i] for i in range(len(tasks)))
        for task, workload in zip(tasks, workloads, strict=True):
            tt = teacher_trace(self.env, task, seed=self.section.seed)
            if tt is not None:
                teachers.append(score_episode(self.scorer, self.gates, tt.model_copy(update={"workload": workload})))
        report.student = _summary(students, source="environment")
        if teachers and len(teachers) == len(students):
            report.teacher = _summary(teachers, source="environment")
        elif split is not None and split.heldout_sft:
            scores = [r.score for r in split.heldout_sft if r.score is not None]
            report.teacher = {"source": "heldout_data", "episodes": len(scores), "quality": _mean(scores),
                              "note": "stream scores of the held-out SFT examples (gated data: an optimistic baseline)"}
            notes.append("the environment cannot run the teacher: baseline from held-out data")
        tq = report.teacher.get("quality")
        sq = report.student.get("quality")
        report.quality_ratio = round(sq / tq, 4) if isinstance(sq, (int, float)) and tq else None
        report.failure_rate = report.student.get("failure_rate")
        report.by_family = self._by_family(students, teachers if len(teachers) == len(students) else [])
        if split is not None and split.holdout_families:
            held = set(split.holdout_families)
            inside = [i for i, e in enumerate(students) if e.trace.metadata.get("family") not in held]
            outside = [i for i, e in enumerate(students) if e.trace.metadata.get("family") in held]
            report.distribution = {
                "holdout_families": sorted(held),
                "trained_families": self._ratio_of(students, teachers, inside),
                "heldout_families": self._ratio_of(students, teachers, outside),
            }
        failed = sorted((e for e in students if e.failed), key=lambda e: (e.overall, e.trace.task_id))
        report.worst_failures = [_failure_entry(e) for e in failed[: self.section.worst]]
        t_fail = report.teacher.get("failure_rate")
        t_acc = 1.0 - t_fail if isinstance(t_fail, (int, float)) else 1.0
        # the router sends a turn to the student only above the threshold: there the student must be as
        # good as the teacher and fail less often than the gate allows
        cal = calibrate_threshold(
            [(e.confidence or 0.0, e.overall, not e.failed) for e in students],
            target_quality=float(tq) if tq else 1.0,
            target_accuracy=max(t_acc, 1.0 - self.gate.failure_rate_max + 1e-6),
            min_coverage=self.gate.confidence_min_coverage,
        )
        report.confidence = asdict(cal)
        report.episodes = episode_rows(students, teachers if len(teachers) == len(students) else [])
        report.routed = routed_summary(report.episodes, cal.threshold if cal.qualified else None)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, e in enumerate(students):
            groups[e.trace.workload or DEFAULT_WORKLOAD].append(i)
        paired = len(teachers) == len(students)
        report.workloads = {
            w: workload_report([students[i] for i in idx], [teachers[i] for i in idx] if paired else [],
                               self.gate, worst=min(3, self.section.worst))
            for w, idx in sorted(groups.items())
        }

    @staticmethod
    def _ratio_of(students: list[ScoredEpisode], teachers: list[ScoredEpisode], idx: list[int]) -> dict[str, Any]:
        s = [students[i].overall for i in idx]
        t = [teachers[i].overall for i in idx] if len(teachers) == len(students) else []
        return {
            "episodes": len(idx),
            "student_quality": _mean(s),
            "teacher_quality": _mean(t),
            "quality_ratio": (round(statistics.fmean(s) / statistics.fmean(t), 4)
                              if s and t and statistics.fmean(t) else None),
            "student_failure_rate": _mean([1.0 if students[i].failed else 0.0 for i in idx]),
        }

    @staticmethod
    def _by_family(students: list[ScoredEpisode], teachers: list[ScoredEpisode]) -> dict[str, Any]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, e in enumerate(students):
            groups[e.trace.metadata.get("family", "unknown")].append(i)
        out = {}
        for fam in sorted(groups):
            idx = groups[fam]
            d = DistillationEvaluator._ratio_of(students, teachers, idx)
            if teachers:
                d["teacher_failure_rate"] = _mean([1.0 if teachers[i].failed else 0.0 for i in idx])
            d["student_failures"] = dict(Counter(k for i in idx for k in students[i].kinds))
            out[fam] = d
        return out
