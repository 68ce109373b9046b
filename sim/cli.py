"""`stillflow sim ...`: run, fleet, teacher-server.

Exports `register(subparsers)` (adds the `sim` command to the `stillflow` CLI; each subcommand sets
`func(args) -> int`) and `main(argv)` (the same commands standalone: ``python -m sim run ...``).

    stillflow sim run --tasks 1000 --policy teacher --out traces.jsonl
    stillflow sim teacher-server --port 8100
    stillflow sim fleet --agents 8 --rate 5 --duration 60                    # in-process, emits to Kafka
    stillflow sim fleet --base-url http://127.0.0.1:8100/v1 --max-traces 50  # through an endpoint
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["register", "main", "build_parser"]


def _error_rates(values: Sequence[str] | None) -> dict[str, float]:
    from sim.policies import ERROR_MODES

    out: dict[str, float] = {}
    for item in values or []:
        mode, sep, rate = item.partition("=")
        if not sep or mode not in ERROR_MODES:
            raise argparse.ArgumentTypeError(
                f"--error-rate wants MODE=RATE with MODE one of {', '.join(ERROR_MODES)}; got {item!r}"
            )
        try:
            out[mode] = float(rate)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--error-rate {item!r}: {rate!r} is not a number") from None
    return out


def _settings(args: argparse.Namespace) -> Any:
    """SimSettings from the environment, overridden by the flags that were given."""
    from sim.policies import ERROR_MODES
    from sim.settings import ErrorRates, SimSettings, with_sim

    settings = SimSettings()
    updates: dict[str, Any] = {}
    for flag, field in (
        ("seed", "seed"), ("world_seed", "world_seed"), ("policy", "policy"), ("model_id", "model_id"),
        ("price_per_1k", "price_per_1k_tokens"), ("split", "split"), ("host", "host"), ("port", "port"),
        ("latency_ms", "latency_ms"), ("jitter_ms", "latency_jitter_ms"), ("agents", "agents"),
        ("rate", "rate"), ("duration", "duration_s"), ("turn_delay_ms", "turn_delay_ms"),
        ("progress_interval", "progress_interval_s"), ("base_url", "base_url"), ("model", "model"),
        ("max_turns", "max_turns"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            updates[field] = value
    rates = settings.sim.error_rates.as_dict()
    if getattr(args, "no_errors", False):
        rates = {m: 0.0 for m in ERROR_MODES}
    rates.update(_error_rates(getattr(args, "error_rate", None)))
    updates["error_rates"] = ErrorRates(**rates)
    settings = with_sim(settings, **updates)
    bootstrap = getattr(args, "bootstrap", None)
    if bootstrap:
        from stillflow.kafka import with_bootstrap

        settings = with_bootstrap(settings, bootstrap)
    return settings


def _families(value: str | None) -> list[str] | None:
    return [f.strip() for f in value.split(",") if f.strip()] if value else None


def _start_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    if value == "now":
        return datetime.now(UTC).replace(microsecond=0)
    ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _resolve_bootstrap(settings: Any) -> str | None:
    try:
        from stillflow.kafka import resolve_bootstrap
    except ImportError:  # pragma: no cover - the base package always has it
        return settings.kafka.bootstrap_servers
    return resolve_bootstrap(settings)


# --- commands -------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from sim.runner import EPOCH, run_offline

    try:
        settings = _settings(args)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        return _fail(str(exc))
    sim = settings.sim
    policy = sim.make_policy()
    kwargs = dict(
        seed=sim.seed, world_seed=sim.world_seed, split=sim.split, families=_families(args.families),
        start=_start_time(args.start_time) or EPOCH, max_turns=sim.max_turns,
        price_per_1k_tokens=sim.price_per_1k_tokens,
    )
    if args.emit:
        bootstrap = _resolve_bootstrap(settings)
        if not bootstrap:
            return _fail("--emit needs a broker: set STILLFLOW_KAFKA__BOOTSTRAP_SERVERS, pass --bootstrap, "
                         "or start one with `stillflow broker`")
        from stillflow.kafka import with_bootstrap

        settings = with_bootstrap(settings, bootstrap)
        report = asyncio.run(_run_and_emit(settings, args, policy, kwargs))
    else:
        try:
            report = run_offline(args.tasks, policy, out=args.out, **kwargs)
        except (KeyError, ValueError) as exc:
            return _fail(str(exc))
    print(json.dumps(report.as_dict()) if args.json else report.format())
    return 0


async def _run_and_emit(settings: Any, args: argparse.Namespace, policy: Any, kwargs: dict[str, Any]) -> Any:
    import time

    from sim.runner import RunReport, iter_offline
    from stillflow.sdk import TraceEmitter

    report = RunReport(out_path=args.out)
    t0 = time.perf_counter()
    fp = open(args.out, "w", encoding="utf-8") if args.out else None  # noqa: SIM115 - closed below
    try:
        async with TraceEmitter(settings) as em:
            for trace in iter_offline(args.tasks, policy, **kwargs):
                await em.emit_trace(trace)
                report.add(trace)
                if fp:
                    fp.write(trace.model_dump_json() + "\n")
    finally:
        if fp:
            fp.close()
    report.elapsed_s = time.perf_counter() - t0
    return report


def cmd_fleet(args: argparse.Namespace) -> int:
    import logging

    for name in ("httpx", "httpx2", "openai"):  # one INFO line per request drowns the progress lines
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        settings = _settings(args)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        return _fail(str(exc))
    emit = args.emit
    if args.report_to_router:
        if not settings.sim.base_url:
            return _fail("--report-to-router needs --base-url (the router's /v1)")
        if emit:
            return _fail("--report-to-router and --emit: the router publishes the trace, the fleet must not")
        emit = False
    if emit is None or emit:
        bootstrap = _resolve_bootstrap(settings)
        if bootstrap:
            from stillflow.kafka import with_bootstrap

            settings = with_bootstrap(settings, bootstrap)
            emit = True
        elif emit:
            return _fail("--emit needs a broker: set STILLFLOW_KAFKA__BOOTSTRAP_SERVERS, pass --bootstrap, "
                         "or start one with `stillflow broker`")
        else:
            print("no Kafka broker configured: running without emitting (pass --out to keep the traces)",
                  file=sys.stderr)
            emit = False
    try:
        report = asyncio.run(_fleet(settings, args, emit))
    except KeyboardInterrupt:
        return 130
    print(json.dumps(report.as_dict()) if args.json else report.format())
    return 0


async def _fleet(settings: Any, args: argparse.Namespace, emit: bool) -> Any:
    from sim.openai_agent import make_client
    from sim.runner import run_fleet

    sim = settings.sim
    client = make_client(settings) if sim.base_url else None
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if not args.quiet else None
    common: dict[str, Any] = dict(
        agents=sim.agents, rate=sim.rate, duration_s=sim.duration_s, max_traces=args.max_traces, seed=sim.seed,
        world_seed=sim.world_seed, split=sim.split, families=_families(args.families), out=args.out,
        run_id=args.run_id, turn_delay_s=sim.turn_delay_ms / 1000, max_turns=sim.max_turns,
        price_per_1k_tokens=sim.price_per_1k_tokens, model=sim.model, progress=progress,
        progress_interval_s=sim.progress_interval_s, task_pool=args.task_pool,
    )
    policy = None if client is not None else sim.make_policy()
    if progress is not None:  # a line at start, not only after the first progress interval
        target = sim.base_url or f"the in-process {sim.policy} policy"
        cap = f" or {args.max_traces} traces" if args.max_traces else ""
        progress(f"fleet: {sim.agents} agents at {sim.rate:g} tasks/s for up to {sim.duration_s:g} s{cap} "
                 f"against {target}")
    if args.report_to_router:
        from sim.router_outcome import RouterOutcomes

        async with RouterOutcomes(sim.base_url or "", api_key=sim.api_key.get_secret_value()) as reporter:
            report = await run_fleet(policy, emitter=reporter, openai_client=client, **common)
        if reporter.failed:
            print(f"outcomes not reported to the router: {reporter.failed}", file=sys.stderr)
        return report
    if emit:
        from stillflow.sdk import TraceEmitter

        async with TraceEmitter(settings) as em:
            return await run_fleet(policy, emitter=em, openai_client=client, **common)
    return await run_fleet(policy, openai_client=client, **common)


def cmd_teacher_server(args: argparse.Namespace) -> int:
    from sim.server import serve

    try:
        settings = _settings(args)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        return _fail(str(exc))
    sim = settings.sim
    print(
        f"sim teacher ({sim.policy}, seed {sim.seed}) on http://{sim.host}:{sim.port}/v1 "
        f"latency {sim.latency_ms:g}±{sim.latency_jitter_ms:g} ms, ${sim.price_per_1k_tokens:g}/1k tokens",
        file=sys.stderr, flush=True,
    )
    serve(settings, log_level=args.log_level)
    return 0


# --- parser ---------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, help="run seed (default 0 / STILLFLOW_SIM__SEED)")
    p.add_argument("--world-seed", type=int, help="world data seed (default 0)")
    p.add_argument("--policy", choices=("teacher", "perfect", "random"))
    p.add_argument("--model-id", help="model id recorded in traces / reported by the server")
    p.add_argument("--error-rate", action="append", metavar="MODE=RATE",
                   help="set one error mode's rate (repeatable), e.g. crash=0.1")
    p.add_argument("--no-errors", action="store_true", help="all error rates 0 (then --error-rate adds)")
    p.add_argument("--price-per-1k", type=float, help="USD per 1k tokens")
    p.add_argument("--max-turns", type=int)


def _batch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", choices=("train", "heldout", "all"), help="which tasks (default train)")
    p.add_argument("--families", help="comma-separated task families (default all)")
    p.add_argument("--out", help="write the traces as JSONL here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--bootstrap", help="Kafka host:port (default STILLFLOW_KAFKA__BOOTSTRAP_SERVERS)")


def register(subparsers: Any) -> None:
    """Add `sim run|fleet|teacher-server` to an argparse subparsers object."""
    sim = subparsers.add_parser("sim", help="simulated tools, tasks and agent fleet",
                                description="Simulated tool world, task suite and teacher agent fleet.")
    sub = sim.add_subparsers(dest="sim_command", metavar="{run,fleet,teacher-server}")
    sub.required = True

    run = sub.add_parser("run", help="run N tasks offline (deterministic per seed), optionally emit",
                         description="Run N tasks offline with a policy; print success rate and error modes.")
    run.add_argument("--tasks", type=int, default=100, help="number of traces (default 100)")
    _common(run)
    _batch(run)
    run.add_argument("--start-time", help="event time of the first trace: ISO-8601 or 'now' (default 2024-01-01)")
    run.add_argument("--emit", action="store_true", help="also emit every trace to Kafka")
    run.set_defaults(func=cmd_run)

    fleet = sub.add_parser("fleet", help="N concurrent agents at a target rate, emitting live",
                           description="Run a fleet of agents for a duration, emitting steps and outcomes live.")
    _common(fleet)
    _batch(fleet)
    fleet.add_argument("--agents", type=int, help="concurrent agents (default 8)")
    fleet.add_argument("--rate", type=float, help="traces started per second (default 5)")
    fleet.add_argument("--duration", type=float, help="seconds to keep starting traces (default 60)")
    fleet.add_argument("--max-traces", type=int, help="stop after this many traces")
    fleet.add_argument("--task-pool", type=int, default=None,
                       help="draw tasks from a fixed set of N (tasks recur: pairs need several traces of a task)")
    fleet.add_argument("--base-url", help="OpenAI mode: chat-completions endpoint, e.g. http://127.0.0.1:8100/v1")
    fleet.add_argument("--model", help="model name sent in OpenAI mode (default teacher)")
    fleet.add_argument("--report-to-router", action="store_true",
                       help="--base-url is a stillflow router: report each outcome to it (it publishes the "
                            "trace) instead of emitting the trace here")
    fleet.add_argument("--turn-delay-ms", type=float, help="in-process think time per turn")
    fleet.add_argument("--progress-interval", type=float, help="seconds between progress lines")
    fleet.add_argument("--run-id", help="trace id prefix (default random)")
    fleet.add_argument("--quiet", action="store_true", help="no progress lines")
    emit = fleet.add_mutually_exclusive_group()
    emit.add_argument("--emit", dest="emit", action="store_true", default=None,
                      help="emit to Kafka (default: when a broker is configured)")
    emit.add_argument("--no-emit", dest="emit", action="store_false")
    fleet.set_defaults(func=cmd_fleet)

    ts = sub.add_parser("teacher-server", help="OpenAI-compatible teacher endpoint backed by the sim policy",
                        description="Serve /v1/chat/completions answering with the teacher policy's next turn.")
    _common(ts)
    ts.add_argument("--host")
    ts.add_argument("--port", type=int)
    ts.add_argument("--latency-ms", type=float, help="mean latency (default 800)")
    ts.add_argument("--jitter-ms", type=float, help="latency jitter ± (default 250)")
    ts.add_argument("--log-level", default="warning")
    ts.set_defaults(func=cmd_teacher_server)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stillflow")
    register(parser.add_subparsers(dest="command"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry: ``python -m sim run --tasks 10`` (same as ``stillflow sim run ...``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "sim":
        argv = ["sim", *argv]
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
