"""`stillflow router`: serve the OpenAI-compatible router.

Exports `register(subparsers)` (called by `stillflow.cli`; imports nothing heavy: FastAPI, torch and
transformers load inside the command).

    stillflow router --teacher-url https://api.openai.com/v1 --teacher-model gpt-4o  # + ..._TEACHER__API_KEY
    stillflow router --port 8200 --registry ./models --threshold 0.8
    stillflow router --teacher-only --no-kafka                                           # a plain proxy

Settings come from the environment (`STILLFLOW_ROUTER__...`, see `router.settings`); flags override.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

__all__ = ["register"]

log = logging.getLogger("stillflow.router")


def _settings(args: argparse.Namespace) -> Any:
    from router.settings import RouterSettings, with_router

    settings = RouterSettings()
    updates: dict[str, Any] = {}
    for flag, fld in (("host", "host"), ("port", "port"), ("registry", "registry_dir"), ("model", "model_name"),
                      ("threshold", "threshold_override"), ("canary_percent", "canary_percent"),
                      ("device", "device"), ("max_concurrency", "max_concurrency")):
        value = getattr(args, flag, None)
        if value is not None:
            updates[fld] = value
    for flag in ("shadow", "teacher_only", "ready_without_student"):
        if getattr(args, flag, False):
            updates[flag] = True
    if args.no_kafka:
        updates["kafka"] = False
    teacher = {k: v for k, v in (("base_url", args.teacher_url), ("model", args.teacher_model)) if v is not None}
    if teacher:
        updates["teacher"] = teacher
    settings = with_router(settings, **updates)
    if settings.router.kafka:
        from stillflow.cli import CLIError
        from stillflow.kafka import resolve_bootstrap, with_bootstrap

        bootstrap = args.bootstrap or resolve_bootstrap(settings)
        if not bootstrap:
            raise CLIError("no Kafka broker for the router's events and version switching: start one with "
                           "`stillflow broker`, set STILLFLOW_KAFKA__BOOTSTRAP_SERVERS / --bootstrap, or run "
                           "without events with --no-kafka")
        settings = with_bootstrap(settings, bootstrap)
    return settings


def cmd_router(args: argparse.Namespace) -> int:
    from router.app import serve

    # one INFO line per teacher request (httpx) and per group-coordinator step (aiokafka) drown the service log
    for name in ("httpx", "aiokafka"):
        logging.getLogger(name).setLevel(logging.WARNING)

    settings = _settings(args)
    s = settings.router
    log.info("router on http://%s:%d/v1 → teacher %s; registry %s (model %s)%s", s.host, s.port, s.teacher.base_url,
             s.registry_dir.resolve(), s.model_name, "; teacher only" if s.teacher_only else "")
    serve(settings, log_level="debug" if getattr(args, "verbose", False) else "info")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("router", help="serve the OpenAI-compatible router: student when confident, else teacher")
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8200)")
    p.add_argument("--teacher-url", default=None, help="the teacher's OpenAI-compatible base URL (ends in /v1)")
    p.add_argument("--teacher-model", default=None, help="the model name sent to the teacher")
    p.add_argument("--registry", default=None, help="the model registry directory (default ./models)")
    p.add_argument("--model", default=None, help="the registry model name (default student)")
    p.add_argument("--threshold", type=float, default=None, help="confidence threshold instead of the version's")
    p.add_argument("--canary-percent", type=float, default=None, help="traces sent to the candidate version")
    p.add_argument("--shadow", action="store_true", help="student runs, teacher serves, both recorded")
    p.add_argument("--teacher-only", action="store_true", help="never load a student")
    p.add_argument("--ready-without-student", action="store_true", help="ready while no student is loaded")
    p.add_argument("--device", default=None, help="torch device for the student (default cpu)")
    p.add_argument("--max-concurrency", type=int, default=None, help="student generations at once")
    p.add_argument("--no-kafka", action="store_true", help="no events, no live switching")
    p.add_argument("--bootstrap", default=None, help="host:port (default: settings or `stillflow broker`)")
    p.set_defaults(func=cmd_router)
