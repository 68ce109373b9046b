"""Settings of the router: `RouterSettings` = the shared `StillflowSettings` + a `router` section.

Environment examples: `STILLFLOW_ROUTER__PORT=8200`, `STILLFLOW_ROUTER__TEACHER__BASE_URL=https://api.openai.com/v1`,
`STILLFLOW_ROUTER__TEACHER__API_KEY=sk-...`, `STILLFLOW_ROUTER__API_KEYS='["key-1","key-2"]'`,
`STILLFLOW_ROUTER__THRESHOLD_OVERRIDE=0.8`, `STILLFLOW_ROUTER__CANARY_PERCENT=5`, `STILLFLOW_ROUTER__SHADOW=true`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from stillflow.settings import StillflowSettings

__all__ = ["TeacherSection", "RouterSection", "RouterSettings", "with_router", "default_replica_id"]


def default_replica_id() -> str:
    """host-pid: unique per running router, so each replica gets its own consumer group."""
    return f"{socket.gethostname()}-{os.getpid()}".replace("_", "-")[:100]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TeacherSection(_Section):
    """Any OpenAI-compatible chat-completions endpoint."""

    base_url: str = Field(default="http://127.0.0.1:8100/v1", description="ends in /v1")
    model: str | None = Field(default=None, description="the `model` sent to the teacher (unset: the request's)")
    api_key: SecretStr | None = None
    connect_timeout_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=60.0, gt=0, description="one teacher attempt, start to end")
    retries: int = Field(default=1, ge=0, le=5, description="extra attempts on connection errors, 429 and 5xx")
    retry_backoff_s: float = Field(default=0.1, ge=0, description="first backoff, doubled per retry")
    breaker_failures: int = Field(default=5, ge=1, description="consecutive failures that open the breaker")
    breaker_reset_s: float = Field(default=10.0, gt=0, description="how long it stays open before one probe")
    max_connections: int = Field(default=256, ge=1)


class RouterSection(_Section):
    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(default=8200, ge=0, le=65535)
    api_keys: tuple[SecretStr, ...] = Field(default=(), description="accepted bearer keys; empty = no auth")
    max_request_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="larger bodies get 413")
    # the teacher
    teacher: TeacherSection = TeacherSection()
    # the student
    registry_dir: Path = Field(default=Path("models"), description="the model registry root (trainer's)")
    model_name: str = "student"
    device: str = "cpu"
    # On CPU the generation thread shares the cores with the event loop (HTTP, parsing, events): torch's
    # default of one thread per core spun against it. Measured in-process, 16 clients, tiny student, 2 cores:
    # 232 req/s at 2 threads, 375 at 1 (router.runtime.default_threads).
    threads: int | None = Field(default=None, ge=1,
                                description="torch threads (unset: half the cores on CPU, torch's default on GPU)")
    max_concurrency: int = Field(default=1, ge=1, description="student batches generating at once")
    # requests waiting for the student are generated together (router.runtime.StudentBatcher): 16 clients get
    # 5x the requests/s of one (benchmarks router, tiny student, 2 cores); one at a time it was 1.0x
    batch_size: int = Field(default=16, ge=1, description="most requests generated in one batch")
    batch_wait_ms: float = Field(default=5.0, ge=0,
                                 description="a batch waits up to this long for as many requests as the last one held")
    max_queue: int = Field(default=32, ge=0, description="requests waiting beyond the running batches; beyond: teacher")
    max_new_tokens: int = Field(default=256, ge=1, description="cap on a student turn's tokens")
    threshold_override: float | None = Field(default=None, ge=0, le=1,
                                             description="use this threshold instead of the version's")
    fallback_threshold: float = Field(default=1.0, ge=0, le=1,
                                      description="threshold of a version that has none (1.0 = student never serves)")
    # policy
    canary_percent: float = Field(default=0.0, ge=0, le=100, description="traces sent to the candidate version")
    canary_version: str | None = Field(default=None, description="candidate to load at start (else: events)")
    shadow: bool = Field(default=False, description="student runs, teacher serves, both recorded")
    sticky_ttl_s: float = Field(default=3600.0, gt=0, description="how long an escalated trace stays with the teacher")
    sticky_max_traces: int = Field(default=100_000, ge=1)
    trace_ttl_s: float = Field(default=3600.0, gt=0,
                               description="how long a trace's steps are remembered for its outcome")
    trace_max: int = Field(default=100_000, ge=1)
    # modes
    teacher_only: bool = Field(default=False, description="never load a student; ready at once")
    ready_without_student: bool = Field(default=False,
                                        description="/readyz is ready while no student is loaded (teacher serves)")
    kafka: bool = Field(default=True, description="emit events and follow version events (false: neither)")
    replica_id: str = Field(default_factory=default_replica_id,
                            description="this replica's consumer group suffix (each replica sees every event)")
    keep_previous: bool = Field(default=True, description="keep the replaced version loaded for a fast rollback")


class RouterSettings(StillflowSettings):
    """`StillflowSettings` with the `router` section (env `STILLFLOW_ROUTER__...`)."""

    router: RouterSection = RouterSection()


def with_router(settings: StillflowSettings, **updates: Any) -> RouterSettings:
    """A copy of `settings` as `RouterSettings` with `router` fields replaced (validated); a `teacher` dict
    updates the teacher section field by field."""
    base = settings if isinstance(settings, RouterSettings) else RouterSettings(**{
        k: getattr(settings, k) for k in StillflowSettings.model_fields
    })
    current = base.router
    teacher = updates.pop("teacher", None)
    if isinstance(teacher, dict):
        updates["teacher"] = current.teacher.model_copy(update=teacher)
    elif teacher is not None:
        updates["teacher"] = teacher
    section = RouterSection.model_validate({**{k: getattr(current, k) for k in RouterSection.model_fields}, **updates})
    return base.model_copy(update={"router": section})
