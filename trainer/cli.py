"""`stillflow trainer`, `stillflow train`, `stillflow models ...`.

Exports `register(subparsers)` (called by `stillflow.cli`; imports nothing heavy: torch, transformers,
trl and prometheus_client load inside the command handlers).

    stillflow trainer                                  # the retrain consumer (Ctrl-C stops it)
    stillflow train --from-jsonl ./export --quick      # one job on exported data, no broker needed
    stillflow train --from-topics                      # one job on the dataset topics as they are now
    stillflow models list | show v0003 | promote v0003 | rollback [--to v0002]

Settings come from the environment (`STILLFLOW_TRAINER__...`, see `trainer.settings`); flags override.
Registry commands that change which version is live publish the `ModelVersionEvent` the routers
follow; without a reachable broker they refuse unless given `--offline`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["register"]

log = logging.getLogger("stillflow.trainer")


class _CLIError(Exception):
    pass


def _cli_error(msg: str) -> Exception:
    try:
        from stillflow.cli import CLIError

        return CLIError(msg)
    except ImportError:  # pragma: no cover
        return _CLIError(msg)


def _families(value: str | None) -> list[str] | None:
    return [f.strip() for f in value.split(",") if f.strip()] if value else None


def _settings(args: argparse.Namespace) -> Any:
    """TrainerSettings from the environment with the flags applied (bootstrap left unresolved)."""
    from trainer.settings import TrainerSettings

    settings = TrainerSettings()
    section = settings.trainer
    # a pretrained student from the environment (STILLFLOW_TRAINER__STUDENT__BASE=...) with the tiny student's
    # learning rate left in place gets its own training defaults (fields set explicitly stay)
    env_pretrained = section.student.is_pretrained and "learning_rate" not in section.sft.model_fields_set
    explicit = section
    if getattr(args, "quick", False):
        section = section.quick()
    updates: dict[str, Any] = {}
    for flag, fld in (("registry", "registry_dir"), ("model", "model_name"), ("device", "device"),
                      ("threshold", "retrain_threshold"), ("min_examples", "min_training_examples"),
                      ("threads", "threads"), ("metrics_port", "metrics_port")):
        value = getattr(args, flag, None)
        if value is not None:
            updates[fld] = value
    fams = _families(getattr(args, "holdout_families", None))
    if fams is not None:
        updates["holdout_families"] = tuple(fams)
    if getattr(args, "pretrained", None):
        updates["student"] = section.student.model_copy(update={"pretrained": args.pretrained, "base": None})
    if getattr(args, "base", None):
        if getattr(args, "pretrained", None):
            raise _cli_error("--base and --pretrained name two different students; give one")
        updates["student"] = section.student.model_copy(update={"base": args.base, "pretrained": None})
    if getattr(args, "lora", False):
        student = updates.get("student", section.student)
        updates["student"] = student.model_copy(update={"lora": student.lora.model_copy(update={"enabled": True})})
    student_now = updates.get("student", section.student)
    if student_now.is_pretrained and (env_pretrained or not section.student.is_pretrained):
        # a pretrained student: its training defaults (learning rates, batch, steps), before the flags below
        from trainer.settings import pretrained_profile

        section = pretrained_profile(section.model_copy(update={"student": student_now}),
                                     quick=bool(getattr(args, "quick", False)), explicit=explicit)
    env = getattr(args, "environment", None)
    if env is not None:
        updates["eval"] = section.eval.model_copy(
            update={"environment": None if env in ("", "none") else env,
                    "mode": "offline" if env in ("", "none") else section.eval.mode}
        )
    if getattr(args, "eval_tasks", None):
        ev = updates.get("eval", section.eval)
        updates["eval"] = ev.model_copy(update={"tasks": args.eval_tasks})
    if getattr(args, "gate_scope", None):
        updates["gate"] = section.gate.model_copy(update={"scope": args.gate_scope})
    if getattr(args, "no_dpo", False):
        updates["dpo"] = section.dpo.model_copy(update={"enabled": False})
    if getattr(args, "sft_steps", None):  # after the profile: --quick --sft-steps 1600 is the quick student, longer
        updates["sft"] = section.sft.model_copy(update={"max_steps": args.sft_steps})
    if updates:
        from trainer.settings import TrainerSection

        section = TrainerSection.model_validate({**section.model_dump(), **updates})
    return settings.model_copy(update={"trainer": section})


def _bootstrap(settings: Any, args: argparse.Namespace) -> str | None:
    from stillflow.kafka import resolve_bootstrap

    return getattr(args, "bootstrap", None) or resolve_bootstrap(settings)


def _with_broker(settings: Any, args: argparse.Namespace, *, required: bool) -> Any | None:
    from stillflow.kafka import with_bootstrap

    bootstrap = _bootstrap(settings, args)
    if not bootstrap:
        if required:
            raise _cli_error("no Kafka broker: start one with `stillflow broker`, or set "
                             "STILLFLOW_KAFKA__BOOTSTRAP_SERVERS / pass --bootstrap")
        return None
    return with_bootstrap(settings, bootstrap)


async def _publish(settings: Any, events: Sequence[Any]) -> None:
    from stillflow.contracts import TrainingRunEvent, encode
    from stillflow.kafka import make_producer, timestamp_ms

    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for ev in events:
            if isinstance(ev, TrainingRunEvent):
                topic, key = settings.topics.training_runs, ev.run_id
            else:
                topic, key = settings.topics.model_versions, ev.model_name
            await producer.send_and_wait(topic, encode(ev), key=key.encode(), timestamp_ms=timestamp_ms(ev.timestamp))
    finally:
        await producer.stop()


def _quiet_libraries() -> None:
    for name in ("httpx", "datasets", "filelock", "urllib3", "aiokafka"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


# -- stillflow train ----------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    import time
    import uuid

    _quiet_libraries()
    from stillflow.contracts import TrainingRunEvent
    from trainer.data import DataError, Watermark, load_jsonl, read_topics

    settings = _settings(args)
    run_id = f"run-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    broker_settings = None
    if args.from_topics:
        broker_settings = _with_broker(settings, args, required=True)
    elif not args.no_publish:
        broker_settings = _with_broker(settings, args, required=False)
    try:
        data = asyncio.run(read_topics(broker_settings)) if args.from_topics else load_jsonl(args.from_jsonl)
    except DataError as exc:
        raise _cli_error(str(exc)) from None
    print(f"data: {len(data.sft)} SFT examples, {len(data.pairs)} preference pairs from {data.source} "
          f"({data.duplicates} duplicates dropped, {data.invalid} unreadable)", file=sys.stderr, flush=True)
    watermark = Watermark.from_json(json.dumps(data.watermark)) if data.watermark else None
    base = dict(run_id=run_id, model_name=settings.trainer.model_name, n_new_examples=len(data.sft),
                watermark=watermark.to_json() if watermark else None)
    publish = broker_settings is not None and not args.no_publish
    if publish:
        asyncio.run(_publish(broker_settings, [TrainingRunEvent(status="requested", **base),
                                               TrainingRunEvent(status="started", **base)]))
    elif not args.no_publish:
        print("note: no Kafka broker found: training runs without publishing events", file=sys.stderr)
    from trainer.job import TrainingJob

    job = TrainingJob(settings, progress=not args.no_progress, echo=lambda m: print(m, file=sys.stderr, flush=True))
    try:
        result = job.run(data, run_id=run_id, watermark=base["watermark"])
    except Exception as exc:
        if publish:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            asyncio.run(_publish(broker_settings, [TrainingRunEvent(status="failed", error=error, **base)]))
        if isinstance(exc, DataError):
            raise _cli_error(str(exc)) from None
        raise
    if publish:
        asyncio.run(_publish(broker_settings, [*result.events, TrainingRunEvent(
            status="finished", version=result.version, metrics=result.metrics, **base)]))
    print(json.dumps(result.summary(), indent=2))
    return 0


# -- stillflow trainer --------------------------------------------------------------------------


def cmd_trainer(args: argparse.Namespace) -> int:
    _quiet_libraries()
    settings = _with_broker(_settings(args), args, required=True)

    async def main() -> None:
        from trainer.consumer import RetrainConsumer
        from trainer.metrics import TrainerMetrics, serve

        metrics = TrainerMetrics()
        port = settings.trainer.metrics_port
        server = serve(metrics, port) if port else None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        consumer = RetrainConsumer(settings, metrics=metrics)
        await consumer.start()
        s = settings.trainer
        print(f"trainer for model {s.model_name!r}: retrain every {s.retrain_threshold} new examples "
              f"(at least {s.min_training_examples} in total), registry {s.registry_dir.resolve()}"
              + (f", metrics on :{port}/metrics" if port else "") + "; Ctrl-C stops it", file=sys.stderr, flush=True)
        try:
            await consumer.run(stop)
        finally:
            await consumer.stop()
            if server is not None:
                server.shutdown()

    asyncio.run(main())
    return 0


# -- stillflow models ---------------------------------------------------------------------------


def _registry(args: argparse.Namespace) -> Any:
    from stillflow.registry import ModelRegistry

    s = _settings(args).trainer
    return ModelRegistry(s.registry_dir, s.model_name)


def _row(info: Any) -> dict[str, Any]:
    m = info.manifest
    metrics = m.get("metrics") or {}
    return {
        "version": info.version,
        "status": info.status,
        "live": info.live,
        "created_at": m.get("created_at"),
        "parent": m.get("parent_version"),
        "quality_ratio": metrics.get("quality_ratio"),
        "failure_rate": metrics.get("failure_rate"),
        "confidence_threshold": m.get("confidence_threshold"),
        # what it serves (None: every workload): the gate's choice, or an operator's at promotion
        "workloads": info.workloads,
    }


def _fmt(v: Any, spec: str = ".3f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def cmd_models(args: argparse.Namespace) -> int:
    from stillflow.registry import IntegrityError, RegistryError

    reg = _registry(args)
    try:
        if args.action == "list":
            rows = [_row(i) for i in reg.list()]
            if args.json:
                print(json.dumps(rows, indent=2))
                return 0
            if not rows:
                print(f"no versions of {reg.model} in {reg.root.resolve()}")
                return 0
            print(f"{'version':<9} {'status':<12} {'live':<5} {'quality':>8} {'failures':>9} {'threshold':>10}  "
                  f"{'parent':<8} {'created':<32} serves")
            for r in rows:
                live = "*" if r["live"] else ""
                serves = "every workload" if r["workloads"] is None else ",".join(r["workloads"]) or "-"
                print(f"{r['version']:<9} {r['status']:<12} {live:<5} {_fmt(r['quality_ratio']):>8} "
                      f"{_fmt(r['failure_rate'], '.1%'):>9} {_fmt(r['confidence_threshold']):>10}  "
                      f"{r['parent'] or '-':<8} {r['created_at']!s:<32} {serves}")
            return 0
        if args.action == "show":
            version = args.version or reg.live()
            if not version:
                raise _cli_error(f"{reg.model} has no live version; name one")
            info = reg.info(version)
            try:
                reg.verify(version)
                integrity = "ok"
            except IntegrityError as exc:
                integrity = str(exc)
            out = {**_row(info), "integrity": integrity, "path": str(info.path), "manifest": info.manifest}
            report_path = info.path / "eval_report.json"
            if report_path.exists():
                report = json.loads(report_path.read_text())
                out["report"] = {k: report.get(k) for k in ("quality_ratio", "failure_rate", "student", "teacher",
                                                             "offline", "confidence", "worst_failures", "gate")}
            print(json.dumps(out, indent=2, default=str))
            return 0 if integrity == "ok" else 1
        if args.action == "export":
            version = args.version or reg.live()
            if not version:
                raise _cli_error(f"{reg.model} has no live version; name one")
            from stillflow.bases import BaseError

            try:
                out_dir = _export(reg, version, Path(args.out))
            except BaseError as exc:
                raise _cli_error(str(exc)) from None
            print(f"{reg.model} {version} → {out_dir}")
            return 0
        # promote / rollback change what is live: announce it, or say clearly that it is not announced
        settings = _settings(args)
        broker = None if args.offline else _with_broker(settings, args, required=False)
        if broker is None and not args.offline:
            raise _cli_error("no Kafka broker to announce the change to the routers: start `stillflow broker`, set "
                             "STILLFLOW_KAFKA__BOOTSTRAP_SERVERS or pass --bootstrap; or pass --offline to change "
                             "the registry only")
        if args.action == "promote":
            names = [w.strip() for w in (args.workload or "").split(",") if w.strip()] or None
            event = reg.promote(args.version, reason=args.reason or "promoted by an operator", workloads=names,
                                operator=True)
        else:
            event = reg.rollback(args.to, reason=args.reason or "rolled back by an operator")
        if broker is not None:
            asyncio.run(_publish(broker, [event]))
        out = {"event": event.status, "version": event.version, "previous_version": event.previous_version,
               "published": broker is not None}
        if args.action == "promote":
            served = reg.served(event.version)
            out["workloads"] = "every workload" if served is None else served
        print(json.dumps(out, indent=2))
        return 0
    except IntegrityError as exc:
        raise _cli_error(str(exc)) from None
    except RegistryError as exc:
        raise _cli_error(str(exc)) from None


# -- parser -------------------------------------------------------------------------------------


def cmd_bases(args: argparse.Namespace) -> int:
    from stillflow.bases import bases_dir, read_base
    from trainer.bases import NAMED_BASES, BaseUnavailable, install_base

    if args.action == "install":
        try:
            path = install_base(args.name)
        except BaseUnavailable as exc:
            raise _cli_error(str(exc)) from None
        doc = read_base(path) or {}
        print(f"{args.name}: {path} (sha256 {doc.get('sha256', '?')})")
        return 0
    for name, spec in NAMED_BASES.items():
        target = bases_dir() / name
        doc = read_base(target) if target.is_dir() else None
        try:
            __import__(spec.module)
            package = "installed"
        except ImportError:
            package = f"not installed: {spec.install_line}"
        state = f"converted at {target} (sha256 {doc['sha256'][:12]}…)" if doc else "not converted yet"
        print(f"{name}\t{spec.description}\n  package {spec.package}: {package}\n  {state}")
    return 0


def _export(registry: Any, version: str, out: Path) -> Path:
    """A version as a standalone HF directory: a LoRA version merged into its (verified) base."""
    import shutil

    from stillflow.bases import REF_FILE, read_ref
    from trainer.student import load_student, merge_lora

    registry.verify(version)
    src = registry.path(version)
    if out.exists() and any(out.iterdir()):
        raise _cli_error(f"{out} exists and is not empty")
    if read_ref(src) is None:
        shutil.copytree(src, out, dirs_exist_ok=True)
        return out
    student = load_student(src)
    merge_lora(student.model).save_pretrained(str(out), safe_serialization=True)
    student.tokenizer.save_pretrained(str(out))
    for f in src.iterdir():  # the turn format, licences, reports; not the adapter or the base reference
        if f.is_file() and not f.name.startswith("adapter_") and f.name not in (REF_FILE, "manifest.json") \
                and not (out / f.name).exists():
            shutil.copy2(f, out / f.name)
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", default=None, help="registry directory (default: settings, ./models)")
    p.add_argument("--model", default=None, help="model name (default: settings, 'student')")
    p.add_argument("--bootstrap", default=None, help="host:port (default: settings or `stillflow broker`)")


def _training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small student, few steps, small evaluation (minutes on CPU)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--pretrained", default=None,
                   help="train this model (local path or cached id) instead of a tiny one")
    p.add_argument("--base", default=None, metavar="NAME",
                   help="a named pretrained base, e.g. gemma3-270m (`stillflow bases list`)")
    p.add_argument("--lora", action="store_true", help="LoRA adapters (peft) instead of full fine-tuning")
    p.add_argument("--no-dpo", action="store_true", help="SFT only")
    from stillflow.cli import positive_int

    p.add_argument("--sft-steps", type=positive_int, default=None,
                   help="SFT steps (over the profile's; the student learns a narrow job in ~1600 on CPU)")
    p.add_argument("--holdout-families", default=None, help="task families held out whole, comma-separated")
    p.add_argument("--environment", default=None,
                   help="evaluation environment module:attr ('none' = offline replay only)")
    p.add_argument("--eval-tasks", type=int, default=None,
                   help="held-out tasks run online per workload (the gate decides workload by workload)")
    p.add_argument("--gate-scope", choices=("all", "routed"), default=None,
                   help="all: the student alone on every held-out task (default); routed: behind the router, on "
                        "the tasks its calibrated threshold sends it (as the demo judges it)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("trainer", help="run the retrain consumer: train when enough new data arrived")
    _common(p)
    _training_flags(p)
    p.add_argument("--threshold", type=int, default=None, help="new examples per run (retrain_threshold)")
    p.add_argument("--min-examples", type=int, default=None, help="examples in total before the first run")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (0 = off)")
    p.set_defaults(func=cmd_trainer)

    p = subparsers.add_parser("train", help="run one training job now (no consumer)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-topics", action="store_true", help="the dataset topics up to their end now")
    src.add_argument("--from-jsonl", metavar="PATH",
                     help="a dataset directory (sft.jsonl [, dpo.jsonl]) as `stillflow export` or `stillflow dataset "
                     "build` write it; a file of traces is refused with the `stillflow dataset build` line to run")
    _common(p)
    _training_flags(p)
    p.add_argument("--no-publish", action="store_true", help="do not publish run and version events")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("models", help="the model registry: list, show, promote, rollback")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", help="every version with its status and figures")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    _common(a)
    a = actions.add_parser("show", help="one version: manifest, integrity, report figures")
    a.add_argument("version", nargs="?", default=None, help="default: the live version")
    _common(a)
    a = actions.add_parser("promote", help="make a version live (verified) and announce it")
    a.add_argument("version")
    a.add_argument("--workload", default=None, metavar="A,B",
                   help="the workloads it serves, each at its calibrated threshold (default: the ones the gate "
                        "promoted it for; for a version the gate promoted for none, every workload it was "
                        "evaluated on)")
    _change_flags(a)
    a = actions.add_parser("rollback", help="take the live version out, make the previous one live again")
    a.add_argument("--to", default=None, help="the version to make live (default: the one live before)")
    _change_flags(a)
    a = actions.add_parser("export", help="a version as a standalone HF directory (LoRA: merged into its base)")
    a.add_argument("version", nargs="?", default=None, help="default: the live version")
    a.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    _common(a)
    p.set_defaults(func=cmd_models, json=False, version=None, to=None, reason=None, offline=False, workload=None)

    p = subparsers.add_parser("bases", help="named pretrained bases for --base: list, install (convert once)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="the named bases, whether each is installed and converted")
    a = actions.add_parser("install", help="convert a named base into the cache now (else on first use)")
    a.add_argument("name")
    p.set_defaults(func=cmd_bases)


def _change_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", default=None, help="recorded with the change and in the event")
    p.add_argument("--offline", action="store_true", help="change the registry without publishing the event")
    _common(p)
