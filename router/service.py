"""The router's logic behind HTTP: route one chat completion, record it, report outcomes.

Exports `RouterService` and `Served`. `app.py` is the FastAPI wiring around it; tests drive it directly
too. Seams: `teacher_transport` (an httpx transport), `loader` (how a version is loaded), `sink` (where
events go).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from router.emit import EventSink, NullSink
from router.metrics import RouterMetrics
from router.policy import RoutingPolicy, StickyTraces
from router.runtime import StudentBatcher, StudentBusy, StudentModel, StudentTurn, load_version
from router.settings import RouterSettings
from router.switching import ModelSlots, VersionFollower
from router.teacher import TeacherClient, TeacherRejected, TeacherUnavailable
from router.traces import TraceBook, header_text, trace_identity, turn_steps
from router.wire import (
    ChatRequest,
    RequestError,
    openai_error,
    parse_request,
    same_action,
    student_completion,
    text_messages,
    tool_names,
)
from stillflow.chatformat import OutputFormatError, ParsedTurn, parse_assistant
from stillflow.contracts import ContractError, RouteDecision, is_valid_id, new_id
from stillflow.workloads import WorkloadLabels, resolve_workload

__all__ = ["RouterService", "Served", "HEADER_SERVED_BY"]

log = logging.getLogger("stillflow.router")

HEADER_SERVED_BY = "X-Stillflow-Served-By"
# the agents' job a request belongs to; absent (or not a valid id): `workloads.default` over the agent id
HEADER_WORKLOAD = "x-stillflow-workload"


@dataclass
class Served:
    """One answer: the status, the JSON body, the headers, and whether the client asked for a stream."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False


@dataclass
class _StudentResult:
    turn: StudentTurn | None = None
    parsed: ParsedTurn | None = None
    failure: str | None = None  # student_error | invalid_output | student_busy
    error: str | None = None

    @property
    def confidence(self) -> float | None:
        return self.turn.confidence if self.turn is not None else None


class RouterService:
    def __init__(self, settings: RouterSettings, *, teacher_transport: Any = None, loader: Any = load_version,
                 sink: NullSink | None = None) -> None:
        self.settings = settings
        s = self.section = settings.router
        self.metrics = RouterMetrics()
        self.slots = ModelSlots(self.metrics)
        self.policy = RoutingPolicy(canary_percent=s.canary_percent, shadow=s.shadow,
                                    sticky=StickyTraces(s.sticky_max_traces, s.sticky_ttl_s))
        self.teacher = TeacherClient(s.teacher, transport=teacher_transport, on_error=self._teacher_error)
        self.runner = StudentBatcher(batch_size=s.batch_size, max_wait_s=s.batch_wait_ms / 1000, max_queue=s.max_queue,
                                     workers=s.max_concurrency)
        self.runner.on_batch = lambda size, _seconds: self.metrics.student_batch_size.observe(size)
        self.follower = VersionFollower(settings, self.slots, self.metrics, loader=loader)
        self.book = TraceBook(s.trace_max, s.trace_ttl_s)
        self.sink: NullSink = sink if sink is not None else (EventSink(settings, self.metrics) if s.kafka
                                                            else NullSink())
        self._background: set[asyncio.Task[None]] = set()
        self.workload_labels = WorkloadLabels(settings.workloads.max_labels)
        self._workload_counts: dict[str, dict[str, int]] = {}  # label -> served_by kind -> requests

    # ---- lifecycle ----

    async def start(self) -> None:
        self.settings.limits.apply()
        await self.sink.start()
        if not self.section.teacher_only:
            await self.follower.load_initial()
            if self.section.kafka:
                await self.follower.start()

    async def stop(self) -> None:
        await self.follower.stop()
        if self._background:
            await asyncio.wait(list(self._background), timeout=10)
        await self.sink.close()
        await self.teacher.aclose()
        self.runner.shutdown()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        live = self.slots.live
        ready = live is not None or self.section.teacher_only or self.section.ready_without_student
        detail: dict[str, Any] = {
            "ready": ready,
            "mode": "teacher_only" if self.section.teacher_only else ("shadow" if self.section.shadow else "routing"),
            "live_version": live.version if live else None,
            "candidate_version": self.slots.candidate.version if self.slots.candidate else None,
            "threshold": self.threshold_for(live) if live else None,
            "following_versions": self.follower.assigned.is_set(),
            "teacher_breaker": self.teacher.breaker.state,
            "last_load_error": self.follower.last_error,
        }
        if not ready:
            detail["why"] = ("no student is loaded (promote a version, or set STILLFLOW_ROUTER__TEACHER_ONLY / "
                             "STILLFLOW_ROUTER__READY_WITHOUT_STUDENT to serve from the teacher alone)")
        return ready, detail

    def status(self) -> dict[str, Any]:
        _, detail = self.readiness()
        detail.update({
            "in_flight": {m.version: m.in_flight for m in (self.slots.live, self.slots.candidate, self.slots.previous)
                          if m is not None},
            "student_pending": self.runner.pending,
            "sticky_traces": len(self.policy.sticky),
            "open_traces": len(self.book),
            "loads": list(self.follower.loads),
            "workloads": self.workload_status(),
        })
        return detail

    def workload_status(self) -> dict[str, Any]:
        """Per workload (as labelled on the metrics): served by the live version or not, at which threshold,
        and the requests seen and who served them."""
        live = self.slots.live
        served = live.workloads if live is not None else None
        names = set(self._workload_counts) | set(served or {})
        out: dict[str, Any] = {}
        for name in sorted(names):
            counts = self._workload_counts.get(name, {})
            total = sum(counts.values())
            entry: dict[str, Any] = {
                "served_by_student": live is not None and (served is None or name in served),
                "threshold": (served or {}).get(name) if served is not None else (
                    self.threshold_for(live) if live is not None else None),
                "requests": total, "by": dict(counts),
                "student_share": round(counts.get("student", 0) / total, 4) if total else None,
            }
            out[name] = entry
        return out

    def _serves(self, model: StudentModel, workload: str) -> bool:
        return model.workloads is None or workload in model.workloads

    def _threshold(self, model: StudentModel, workload: str) -> float:
        if self.section.threshold_override is not None or model.workloads is None:
            return self.threshold_for(model)
        return model.workloads[workload]

    def threshold_for(self, model: StudentModel) -> float:
        if self.section.threshold_override is not None:
            return self.section.threshold_override
        return model.threshold if model.threshold is not None else self.section.fallback_threshold

    def _teacher_error(self, kind: str) -> None:
        self.metrics.teacher_errors.labels(kind).inc()
        self.metrics.breaker_open.set(1 if self.teacher.breaker.state == "open" else 0)

    # ---- one completion ----

    async def chat(self, body: Any, headers: dict[str, str]) -> Served:
        """Route one `/v1/chat/completions` request (`headers` lower-cased). Raises `RequestError`."""
        t0 = time.perf_counter()
        req = parse_request(body, self.section.max_new_tokens)
        trace_id, task_id = trace_identity(req.messages, headers)
        agent = header_text(headers.get("x-stillflow-agent-id") or "agent")
        agent_id = agent if is_valid_id(agent) else "agent"
        named = headers.get(HEADER_WORKLOAD)
        workload = resolve_workload(header_text(named) if named else None, agent_id, self.settings.workloads.default)
        request_id = new_id()
        plan = self.policy.plan(trace_id, live=self.slots.live is not None, candidate=self.slots.candidate is not None)
        model = self.slots.acquire(plan.canary) if plan.ask_student else None
        decision: dict[str, Any] = {"reason": plan.reason, "shadow": plan.shadow, "canary": plan.canary,
                                    "workload": workload}
        if model is not None and not self._serves(model, workload):
            # not promoted for this job: the teacher answers; not sticky (nothing was escalated)
            self.slots.release(model)
            model = None
            decision.update(reason="workload_not_served", shadow=False)
        result: _StudentResult | None = None
        try:
            if model is not None:
                threshold = self._threshold(model, workload)
                decision.update(student_version=model.version, threshold=threshold)
                if plan.shadow:
                    shadow = asyncio.create_task(self._run_student(model, req))
                    served = await self._from_teacher(req, headers, decision)
                    self._track(self._finish_shadow(shadow, model, served, trace_id, request_id, decision, t0))
                    model = None  # released by the shadow task
                    self._record(req, served, trace_id, task_id, agent_id, None, t0, request_id, workload)
                    return self._headers(served, trace_id, request_id)
                result = await self._run_student(model, req)
                decision["confidence"] = result.confidence
                verdict = self.policy.judge(trace_id, confidence=result.confidence, threshold=threshold,
                                            failure=result.failure)  # type: ignore[arg-type]
                decision["reason"] = verdict.reason
                if result.error:
                    decision["error"] = result.error
                if verdict.serve_student:
                    assert result.turn is not None and result.parsed is not None
                    served = self._from_student(model, req, result, request_id)
                    self._record(req, served, trace_id, task_id, agent_id, decision, t0, request_id, workload)
                    return self._headers(served, trace_id, request_id)
            served = await self._from_teacher(req, headers, decision)
            self._record(req, served, trace_id, task_id, agent_id, decision, t0, request_id, workload)
            return self._headers(served, trace_id, request_id)
        finally:
            if model is not None:
                self.slots.release(model)

    async def _run_student(self, model: StudentModel, req: ChatRequest) -> _StudentResult:
        res = _StudentResult()
        try:
            turn = await self.runner.generate(model, text_messages(req.messages), req.tools or None,
                                              req.max_new_tokens)
        except StudentBusy as exc:
            return _StudentResult(failure="student_busy", error=str(exc))
        except Exception as exc:
            log.exception("student %s failed", model.version)
            return _StudentResult(failure="student_error", error=f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self.metrics.student_pending.set(self.runner.pending)
        res.turn = turn
        self.metrics.student_latency.observe(turn.seconds)
        self.metrics.confidence.observe(turn.confidence)
        if not turn.finished:
            res.failure, res.error = "invalid_output", f"cut off at {turn.completion_tokens} tokens"
            return res
        try:
            res.parsed = parse_assistant(turn.text, model.fmt)
        except OutputFormatError as exc:
            res.failure, res.error = "invalid_output", f"unreadable output: {exc}"[:500]
            return res
        offered = tool_names(req.tools)
        unknown = sorted({c.name for c in res.parsed.calls} - offered)
        if unknown:
            res.failure, res.error = "invalid_output", f"calls tools the request does not offer: {unknown}"[:500]
        elif not res.parsed.calls and not res.parsed.content:
            res.failure, res.error = "invalid_output", "an empty answer"
        return res

    def _from_student(self, model: StudentModel, req: ChatRequest, res: _StudentResult, request_id: str) -> Served:
        turn, parsed = res.turn, res.parsed
        assert turn is not None and parsed is not None
        body = student_completion(parsed, request_id=request_id, model=f"{self.section.model_name}-{model.version}",
                                  prompt_tokens=turn.prompt_tokens, completion_tokens=turn.completion_tokens,
                                  confidence=turn.confidence, version=model.version)
        return Served(200, body, {HEADER_SERVED_BY: model.version, "X-Stillflow-Confidence": f"{turn.confidence:.4f}"},
                      stream=req.stream, include_usage=req.include_usage)

    async def _from_teacher(self, req: ChatRequest, headers: dict[str, str], decision: dict[str, Any]) -> Served:
        try:
            reply = await self.teacher.complete(req.body, headers)
        except TeacherUnavailable as exc:
            decision["error"] = f"teacher_unavailable: {exc.kind}"
            retry = max(1, round(self.teacher.breaker.retry_after_s()))
            body = openai_error(f"the student is not confident enough to answer and the teacher is unavailable "
                                f"({exc})", type_="service_unavailable", code="teacher_unavailable")
            return Served(503, body, {HEADER_SERVED_BY: "none", "Retry-After": str(retry)})
        except TeacherRejected as exc:
            body = exc.body if isinstance(exc.body, dict) else openai_error(str(exc), code="teacher_rejected")
            return Served(exc.status, body, {HEADER_SERVED_BY: "teacher"})
        finally:
            self.metrics.breaker_open.set(1 if self.teacher.breaker.state == "open" else 0)
        self.metrics.teacher_latency.observe(reply.seconds)
        return Served(200, reply.body, {HEADER_SERVED_BY: "teacher"}, stream=req.stream,
                      include_usage=req.include_usage)

    @staticmethod
    def _headers(served: Served, trace_id: str, request_id: str) -> Served:
        served.headers["X-Stillflow-Trace-Id"] = trace_id
        served.headers["X-Stillflow-Request-Id"] = request_id
        return served

    # ---- recording ----

    def _record(self, req: ChatRequest, served: Served, trace_id: str, task_id: str, agent_id: str,
                decision: dict[str, Any] | None, t0: float, request_id: str, workload: str) -> None:
        served_by = served.headers.get(HEADER_SERVED_BY, "none")
        self.metrics.requests.labels(served_by, str(served.status)).inc()
        live = self.slots.live
        if live is not None and live.workloads is not None:
            self.workload_labels.pin(list(live.workloads))
        label = self.workload_labels.label(workload)
        kind = "teacher" if served_by == "teacher" else ("none" if served_by == "none" else "student")
        self.metrics.workload_requests.labels(label, kind).inc()
        counts = self._workload_counts.setdefault(label, {})
        counts[kind] = counts.get(kind, 0) + 1
        event: RouteDecision | None = None
        if decision is not None:
            reason = decision.get("reason") or "no_student"
            self.metrics.decisions.labels(reason).inc()
            try:
                event = RouteDecision(trace_id=trace_id, request_id=request_id, served_by=served_by,
                                      latency_seconds=time.perf_counter() - t0,
                                      **{k: v for k, v in decision.items() if k != "reason"}, reason=reason)
            except ValueError as exc:  # a bug, not the client's: never fail the request for it
                log.error("route decision not recorded: %s", exc)
        if served.status != 200:
            if event is not None:
                self.sink.decision(event)
            return
        message = ((served.body.get("choices") or [{}])[0]).get("message") or {}
        try:
            turn = turn_steps(req.messages, message)
        except (ValueError, ContractError) as exc:
            log.warning("trace %s: the turn could not be recorded as steps: %s", trace_id, exc)
            if event is not None:
                self.sink.decision(event)
            return
        teacher_model = served.body.get("model") if served_by == "teacher" else None
        self.book.record(trace_id=trace_id, task_id=task_id, agent_id=agent_id, tools=req.tools, turn=turn,
                         served_by=served_by, usage=served.body.get("usage"), teacher_model=teacher_model,
                         workload=workload)
        served.headers["X-Stillflow-Trace-Steps"] = str(turn.n_steps)
        if event is not None:
            self.sink.turn(trace_id=trace_id, task_id=task_id, agent_id=agent_id, first_seq=turn.first_seq,
                           steps=turn.steps, decision=event)

    async def _finish_shadow(self, task: asyncio.Task[_StudentResult], model: StudentModel, served: Served,
                             trace_id: str, request_id: str, decision: dict[str, Any], t0: float) -> None:
        try:
            res = await task
        finally:
            self.slots.release(model)
        threshold = decision.get("threshold", 1.0)
        confident = res.failure is None and res.confidence is not None and res.confidence >= threshold
        agrees = None  # unknown: the student produced no turn (busy, failed) or the teacher none
        if served.status == 200 and res.turn is not None:
            teacher_msg = ((served.body.get("choices") or [{}])[0]).get("message") or {}
            agrees = res.failure is None and res.parsed is not None and same_action(res.parsed.message(), teacher_msg)
        self.metrics.decisions.labels("shadow").inc()
        self.sink.decision(RouteDecision(
            trace_id=trace_id, request_id=request_id, served_by=served.headers.get(HEADER_SERVED_BY, "none"),
            student_version=model.version, confidence=res.confidence, threshold=threshold, reason="shadow",
            shadow=True, canary=bool(decision.get("canary")), workload=decision.get("workload"),
            would_serve=model.version if confident else "teacher", agrees=agrees,
            error=res.error or decision.get("error"), latency_seconds=time.perf_counter() - t0))

    def _track(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- outcomes ----

    async def outcome(self, report: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """`POST /v1/stillflow/outcome`: the agent says how its trace ended; the router publishes the
        `TraceOutcomeEvent` (with the steps it counted)."""
        if not isinstance(report, dict) or not isinstance(report.get("success"), bool):
            raise RequestError(400, "the body must be a JSON object with a boolean `success`", "invalid_outcome")
        trace_id = report.get("trace_id") or headers.get("x-stillflow-trace-id")
        if not isinstance(trace_id, str) or not trace_id:
            raise RequestError(400, "name the trace: `trace_id` in the body or the X-Stillflow-Trace-Id header",
                               "invalid_outcome")
        rec = self.book.get(trace_id)
        if rec is None:
            raise RequestError(404, f"this router has no open trace {trace_id!r} (never served here, already "
                                    "reported, or expired)", "unknown_trace")
        try:
            event = TraceBook.outcome(rec, report)
        except ValueError as exc:
            raise RequestError(400, f"invalid outcome: {exc}"[:1000], "invalid_outcome") from None
        try:
            await self.sink.outcome(event)
        except Exception as exc:
            self.metrics.emit_errors.inc()
            raise RequestError(503, f"the outcome could not be published: {exc}"[:500], "emit_failed",
                               "service_unavailable") from None
        self.book.pop(trace_id)
        return 202, {"trace_id": trace_id, "n_steps": event.n_steps, "event_id": event.event_id,
                     "published": self.section.kafka}
