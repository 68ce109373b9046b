"""Settings of the streams service.

Exports `StreamsSettings` (the service's settings model: the shared `StillflowSettings` plus a
`streams` section read from `STILLFLOW_STREAMS__...`) and its sections `StreamsSection` and
`JudgeSettings`. Every model is frozen.

Scoring and the gates are configured by the shared `quality` section (`stillflow.quality.settings`,
`STILLFLOW_QUALITY__MIN_SCORE`, `STILLFLOW_QUALITY__WEIGHTS__CORRECTNESS`, ...), since the trainer
scores student traces by the same rules; `StreamsSettings().quality` is that section.

Examples: `STILLFLOW_STREAMS__WINDOW_SIZE_S=30`, `STILLFLOW_STREAMS__PAIR_MIN_GAP=0.3`,
`STILLFLOW_STREAMS__JUDGE__ENABLED=true`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from stillflow.settings import StillflowSettings

__all__ = [
    "JudgeSettings",
    "OtelSection",
    "StreamsSection",
    "StreamsSettings",
]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JudgeSettings(_Section):
    """The optional LLM judge of reasoning quality (any OpenAI-compatible chat endpoint)."""

    enabled: bool = False
    base_url: str = "http://localhost:8000/v1"
    model: str = "gpt-4o-mini"
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    max_trace_chars: int = Field(default=12_000, gt=0, description="the rendered trace is cut to this size")
    cache_size: int = Field(default=1024, ge=0, description="scores kept per trace_id (redelivery)")
    max_concurrency: int = Field(default=8, gt=0, description="judge requests in flight at once")


class OtelSection(_Section):
    """How OTel spans (`stillflow.otlp.spans`, `.logs`) become traces (streams.otel)."""

    enabled: bool = Field(default=True, description="consume the OTLP topics (spans, logs, outcomes)")
    settle_s: float = Field(
        default=5.0, gt=0,
        description="a trace whose root span arrived is built once no span came for this long (its children's "
        "last export may still be on the way)")
    trace_timeout_s: float = Field(default=600.0, gt=0,
                                   description="a trace whose root span never comes expires (DLQ `incomplete`)")
    outcome_wait_s: float = Field(
        default=300.0, ge=0,
        description="a built trace waits this long for its outcome, then is scored with success unknown")
    max_lateness_s: float = Field(
        default=600.0, gt=0,
        description="a built trace is remembered this long (exporter retries are duplicates), and spans that "
        "ended longer ago than this, for a trace nobody holds, are late (DLQ `late`): never built twice")
    max_spans_per_trace: int = Field(default=2048, gt=0)
    final_marker: str = Field(
        default="Final answer:",
        description="an answer text's last line starting with this splits it into reasoning and answer, as the "
        "SDK agents do; empty: the whole text is the answer")
    check_interval_s: float = Field(default=1.0, gt=0,
                                    description="how often settled and expired traces are looked for")


class StreamsSection(_Section):
    """Everything the stream processors are tuned with."""

    # assembly
    assembly_timeout_s: float = Field(default=300.0, gt=0, description="idle time before an incomplete trace expires")
    max_steps_per_trace: int = Field(default=512, gt=0, description="more steps is an error (dead-lettered)")
    # where a batch is decoded, assembled and its completed traces scored: `process` (one child process,
    # beside the event loop), `inline`, or `auto` (a process when the machine has 2+ cores); see streams.stage
    scoring: Literal["auto", "process", "inline"] = "auto"
    scoring_timeout_s: float = Field(
        default=120.0, gt=0, description="a scoring process that takes longer over one batch is replaced"
    )
    # reasoning judge (scoring and gates themselves: the shared `quality` section)
    judge: JudgeSettings = JudgeSettings()
    # OpenTelemetry spans in
    otel: OtelSection = OtelSection()
    # pairs
    pair_min_gap: float = Field(default=0.2, ge=0, le=1)
    pair_require_chosen_passed: bool = Field(
        default=False, description="best-vs-worst pairs only when the best trace passed every gate"
    )
    # windows
    window_size_s: float = Field(default=60.0, gt=0)
    window_grace_s: float = Field(default=10.0, ge=0)
    max_tasks_per_window: int = Field(default=256, gt=0, description="tasks whose traces are kept for pairs")
    max_candidates_per_task: int = Field(default=4, ge=2, description="traces kept per task and window")
    # redaction
    redact_pii: bool = True
    redact_scored: bool = Field(
        default=True,
        description="also redact the trace inside each ScoredTrace (the audit topic); false keeps it as the "
        "agent sent it — then restrict who may read that topic",
    )
    window_idle_close_s: float = Field(
        default=30.0, gt=0,
        description="no traces for this long (wall clock, counted from when the worker got its partitions): "
        "close every open window",
    )
    window_tick_interval_s: float = Field(default=5.0, gt=0, description="how often idleness is checked")
    max_clock_skew_s: float = Field(
        default=300.0, gt=0, description="event times further ahead of now advance the watermark only this far"
    )
    expiry_check_interval_s: float = Field(default=10.0, gt=0, description="how often idle traces are looked for")
    # worker (streams/app.py); partitions follow the trace topics' partition count
    app_id: str = Field(default="stillflow-streams", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,100}$")
    web_port: int = Field(default=6066, ge=0, le=65535, description="faust web server, also serves /metrics")
    web_host: str = "127.0.0.1"
    store: str = "memory://"
    data_dir: str = Field(default="~/.stillflow/streams", description="faust's data directory (one per app id)")
    session_timeout_s: float = Field(default=10.0, gt=0)
    standby_replicas: int = Field(default=1, ge=0)
    batch_max_events: int = Field(default=1000, ge=1, description="events the assembler takes at once")
    # per-batch work (window hop, the window book, partial trace states) is amortised over the batch:
    # 0.02 → 0.1 s cut the worker's CPU per event from ~228 to ~186 µs (ingest bench), for at most
    # 80 ms more latency per trace; 0.25 s saved little more and doubled the time to first output
    batch_within_s: float = Field(default=0.1, gt=0, description="longest wait to fill a batch")
    # a backlog's last batch (and each trace in quiet traffic) would otherwise wait all of batch_within_s
    batch_idle_s: float = Field(
        default=0.01, gt=0, description="end a batch once no event came for this long (the input paused)"
    )
    # faust's consumer waits up to 1.5 s per fetch (not a faust setting): a busy worker stalled behind
    # fetches of idle partitions (streams.consumer_tuning)
    fetch_max_wait_ms: int = Field(
        default=100, ge=1, le=1500, description="longest a fetch request waits at the broker"
    )
    producer_max_batch_bytes: int = Field(default=1_048_576, gt=0, description="producer batch size")
    producer_linger_s: float = Field(
        default=0.005, ge=0, description="batch outputs and changelog writes for this long (fewer requests)"
    )


class StreamsSettings(StillflowSettings):
    """Settings of the streams service (`STILLFLOW_STREAMS__...`)."""

    streams: StreamsSection = StreamsSection()

    def internal_topics(self) -> dict[str, str]:
        """The streams app's own topics (role -> name), named after its app id."""
        app_id = self.streams.app_id
        return {"expire": f"{app_id}-assembly-expire", "windows": f"{app_id}-windows",
                "otel_tick": f"{app_id}-otel-tick", "otel_tasks": f"{app_id}-otel-tasks"}
