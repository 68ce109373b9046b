"""`stillflow up`: every service on one machine, supervised, with one readable log.

The embedded broker (unless a bootstrap is configured: `STILLFLOW_KAFKA__BOOTSTRAP_SERVERS` or a
running `stillflow broker`), the topic catalogue, a streams worker, the OTLP receiver (`stillflow otlp`),
the retrain consumer (trainer) and the router; with `--sim` also the sim teacher server (the router's
teacher) and a sim agent fleet that talks to the router and reports its outcomes there, so the flywheel
turns on its own. Each service is its own process (`stillflow.supervisor`): their output goes, prefixed
with the service name, to the terminal and to `<out>/up.log`. A service that fails (non-zero exit) stops
everything with its last lines shown; Ctrl-C (or SIGTERM) stops the services newest first, then the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stillflow.settings import StillflowSettings

__all__ = ["register", "plan_services", "start_services", "Service", "UpError"]


class UpError(RuntimeError):
    pass


@dataclass(frozen=True)
class Service:
    name: str
    args: list[str]  # `stillflow ARGS`
    ready_url: str | None = None  # answers 200 once the service serves
    metrics_url: str | None = None


def plan_services(args: argparse.Namespace, out: Path) -> list[Service]:
    """The services `up` starts, in start order (pure: tested without starting anything)."""
    registry = str(out / "models")
    services = [
        Service("streams", ["streams", "--web-port", str(args.streams_port), "--loglevel", "warning"],
                ready_url=f"http://127.0.0.1:{args.streams_port}/",
                metrics_url=f"http://127.0.0.1:{args.streams_port}/metrics"),
    ]
    if getattr(args, "otlp_port", 0):  # instrumented agents' OpenTelemetry spans in (0: not started)
        otlp = f"http://127.0.0.1:{args.otlp_port}"
        services.append(Service("otlp", ["otlp", "--port", str(args.otlp_port), "--loglevel", "warning"],
                                ready_url=f"{otlp}/readyz", metrics_url=f"{otlp}/metrics"))
    trainer = ["trainer", "--registry", registry, "--metrics-port", str(args.trainer_metrics_port)]
    if args.quick:
        trainer += ["--quick"]
    if args.retrain_threshold is not None:
        trainer += ["--threshold", str(args.retrain_threshold)]
    if args.min_examples is not None:
        trainer += ["--min-examples", str(args.min_examples)]
    if getattr(args, "sft_steps", None):
        trainer += ["--sft-steps", str(args.sft_steps)]
    if getattr(args, "eval_tasks", None):
        trainer += ["--eval-tasks", str(args.eval_tasks)]
    services.append(Service("trainer", trainer,
                            metrics_url=f"http://127.0.0.1:{args.trainer_metrics_port}/metrics"))
    teacher_url = args.teacher_url
    if args.sim:
        teacher_url = f"http://127.0.0.1:{args.teacher_port}/v1"
        services.append(Service("teacher", ["sim", "teacher-server", "--port", str(args.teacher_port)],
                                ready_url=f"http://127.0.0.1:{args.teacher_port}/readyz"))  # its task index is built
    router = ["router", "--port", str(args.router_port), "--registry", registry, "--ready-without-student"]
    if teacher_url:
        router += ["--teacher-url", teacher_url]
    router_url = f"http://127.0.0.1:{args.router_port}"
    services.append(Service("router", router, ready_url=f"{router_url}/readyz", metrics_url=f"{router_url}/metrics"))
    if args.sim:
        services.append(Service("fleet", [
            "sim", "fleet", "--base-url", f"{router_url}/v1", "--report-to-router", "--rate", str(args.fleet_rate),
            "--duration", str(args.fleet_duration), "--agents", str(args.fleet_agents),
            "--task-pool", str(args.task_pool), "--progress-interval", "30",
            *(["--families", args.fleet_families] if getattr(args, "fleet_families", None) else []),
        ]))
    return services


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own http://127.0.0.1 URLs
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


async def _wait_ready(sup: Any, child: Any, service: Service, timeout: float) -> None:
    if service.ready_url is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.running:
            raise UpError(f"{service.name} exited with {child.proc.returncode} while starting: "
                          + "".join(child.lines[-8:]).strip())
        if await asyncio.to_thread(_answers, service.ready_url):
            return
        await asyncio.sleep(0.5)
    raise UpError(f"{service.name} not ready after {timeout:.0f} s ({service.ready_url})")


async def start_services(sup: Any, services: list[Service], env: dict[str, str],
                         ready_timeout: float) -> list[tuple[Service, Any]]:
    """Start `services` in order, each ready (its `ready_url` answers) before the next starts; raises
    `UpError` naming the service that exited or did not become ready (`stillflow up`, `stillflow demo`)."""
    children = []
    for service in services:
        child = sup.start(service.name, service.args, env=env)
        children.append((service, child))
        await _wait_ready(sup, child, service, ready_timeout)
    return children


async def run_up(args: argparse.Namespace) -> int:
    from stillflow.kafka import bootstrap_or_embedded, ensure_topics
    from stillflow.supervisor import Supervisor

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = StillflowSettings()
    if not args.sim and not args.teacher_url and not _teacher_configured():
        raise UpError("the router needs a teacher: pass --teacher-url (an OpenAI-compatible /v1), set "
                      "STILLFLOW_ROUTER__TEACHER__BASE_URL, or use --sim for the simulated one")
    settings, broker = bootstrap_or_embedded(settings, out / "broker.log")
    bootstrap = settings.kafka.bootstrap_servers or ""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sup = Supervisor(out / "up.log", echo=None if args.quiet else sys.stdout)
    code = 0
    try:
        await ensure_topics(settings)
        env = {
            "STILLFLOW_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "STILLFLOW_STREAMS__DATA_DIR": str(out / "streams-data"),
            "STILLFLOW_STREAMS__WINDOW_SIZE_S": str(args.window),
        }
        if args.app_id:
            env["STILLFLOW_STREAMS__APP_ID"] = args.app_id
        children = await start_services(sup, plan_services(args, out), env, args.ready_timeout)
        print("\nstillflow is up:", flush=True)
        for service, child in children:
            where = service.ready_url or service.metrics_url or ""
            print(f"  {service.name:8s} pid {child.proc.pid:<7d} {where}", flush=True)
        print(f"  router   OpenAI base URL http://127.0.0.1:{args.router_port}/v1 ; log {out / 'up.log'}\n"
              "Ctrl-C stops everything.", flush=True)
        while not stop.is_set():
            failed = sup.failed()  # non-zero exits only: the fleet ends with 0 when its --fleet-duration is over
            if failed:
                c = failed[0]
                raise UpError(f"{c.name} exited with {c.proc.returncode}: " + "".join(c.lines[-8:]).strip())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        print("stopping…", flush=True)
    except UpError as exc:
        print(f"stillflow up: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        sup.stop_all()
        if broker is not None:
            broker.stop()
    return code


def _teacher_configured() -> bool:
    import os

    return bool(os.environ.get("STILLFLOW_ROUTER__TEACHER__BASE_URL"))


def cmd_up(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_up(args))
    except UpError as exc:
        print(f"stillflow up: {exc}", file=sys.stderr)
        return 1


def register(sub: argparse._SubParsersAction) -> None:
    from stillflow.cli import positive_int  # stillflow.cli imports this module to register it

    p = sub.add_parser("up", help="start every service on this machine (embedded broker unless one is set)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--sim", action="store_true",
                   help="also the sim teacher server (the router's teacher) and a sim fleet talking to the router")
    p.add_argument("--quick", action="store_true", help="the trainer's --quick profile (minutes per run on CPU)")
    p.add_argument("--teacher-url", help="the router's teacher (OpenAI-compatible, ends in /v1); --sim sets it")
    p.add_argument("--out", default="stillflow-up", help="logs, stream state and the model registry")
    p.add_argument("--router-port", type=int, default=8200)
    p.add_argument("--streams-port", type=int, default=6066, help="streams worker web port (/metrics)")
    p.add_argument("--trainer-metrics-port", type=int, default=9108)
    p.add_argument("--otlp-port", type=int, default=4318,
                   help="the OTLP/HTTP receiver's port (OpenTelemetry-instrumented agents send here; 0: none)")
    p.add_argument("--teacher-port", type=int, default=8100, help="--sim: the sim teacher's port")
    p.add_argument("--window", type=float, default=60.0, help="dataset window size in seconds")
    p.add_argument("--retrain-threshold", type=int, default=None, help="new SFT examples per training run")
    p.add_argument("--min-examples", type=int, default=None, help="SFT examples in total before the first run")
    p.add_argument("--fleet-rate", type=float, default=2.0, help="--sim: traces started per second")
    p.add_argument("--fleet-duration", type=float, default=86400.0, help="--sim: seconds of traffic")
    p.add_argument("--fleet-agents", type=int, default=8)
    p.add_argument("--task-pool", type=int, default=40, help="--sim: tasks the fleet draws from (they recur)")
    p.add_argument("--fleet-families", default=None,
                   help="--sim: the fleet's task families, comma-separated (default all): the agent's job")
    p.add_argument("--sft-steps", type=positive_int, default=None, help="the trainer's SFT steps (over its profile's)")
    p.add_argument("--eval-tasks", type=positive_int, default=None,
                   help="the trainer's held-out tasks per workload (over its profile's)")
    p.add_argument("--app-id", default=None, help="streams consumer group / app id (default: settings)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds each service has to become ready")
    p.add_argument("--quiet", action="store_true", help="log to <out>/up.log only")
    p.set_defaults(func=cmd_up)
