"""Settings: pydantic-settings models read from the environment (prefix `STILLFLOW_`, nesting `__`).

`KafkaSettings`, `TopicNames`, `LimitsSettings` and `QualitySettings` (scoring and gates, from
`stillflow.quality.settings`; e.g. `STILLFLOW_QUALITY__MIN_SCORE`, `STILLFLOW_QUALITY__WEIGHTS__CORRECTNESS`)
are shared sections; `StillflowSettings` is the base every service model extends with its own section
(e.g. `STILLFLOW_SDK__LINGER_MS`). `AdviseSettings` holds the thresholds and prices of `stillflow advise`
(e.g. `STILLFLOW_ADVISE__MAX_FORMAT_DRIFT`). The quality section is shared so that the stream (teacher traces)
and the trainer (student traces) score and gate by the same configuration.
`STILLFLOW_KAFKA__BOOTSTRAP_SERVERS` set → every service uses that cluster; unset → the embedded broker.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from stillflow.contracts import Limits, set_limits

# The submodule, not the package's lazy re-exports: this import must stay light (pydantic only).
from stillflow.quality.settings import QualitySettings

__all__ = [
    "KafkaSettings",
    "TopicNames",
    "LimitsSettings",
    "SDKSettings",
    "QualitySettings",
    "AdviseSettings",
    "StillflowSettings",
]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str | None = Field(
        default=None, description="host:port[,host:port]; unset means start/use the embedded broker"
    )
    client_id: str = "stillflow"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    request_timeout_ms: int = Field(default=30_000, gt=0)
    session_timeout_ms: int = Field(default=10_000, gt=0)
    heartbeat_interval_ms: int = Field(default=3_000, gt=0)
    default_partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    def client_kwargs(self) -> dict[str, object]:
        """Connection options shared by aiokafka producers, consumers and admin clients."""
        if not self.bootstrap_servers:
            raise ValueError(
                "no Kafka bootstrap servers: set STILLFLOW_KAFKA__BOOTSTRAP_SERVERS or start the embedded broker"
            )
        kw: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        return kw


class TopicNames(_Section):
    trace_steps: str = "stillflow.trace.steps"
    trace_outcomes: str = "stillflow.trace.outcomes"
    traces_scored: str = "stillflow.traces.scored"
    dataset_sft: str = "stillflow.dataset.sft"
    dataset_dpo: str = "stillflow.dataset.dpo"
    dataset_windows: str = "stillflow.dataset.windows"
    training_runs: str = "stillflow.training.runs"
    model_versions: str = "stillflow.models.versions"
    router_decisions: str = "stillflow.router.decisions"
    dlq: str = "stillflow.dlq"
    # OpenTelemetry in (`stillflow otlp` or a Collector's Kafka exporter): OTLP protobuf, one trace per record
    otlp_spans: str = "stillflow.otlp.spans"
    otlp_logs: str = "stillflow.otlp.logs"
    otlp_outcomes: str = "stillflow.otlp.outcomes"

    def with_prefix(self, prefix: str) -> TopicNames:
        """Same catalogue under another prefix (tests give each test its own topics this way)."""
        return TopicNames(**{k: f"{prefix}{v}" for k, v in self.model_dump().items()})


class LimitsSettings(_Section):
    max_step_content_chars: int = Field(default=65_536, gt=0)
    max_event_bytes: int = Field(default=1_048_576, gt=0)
    max_id_chars: int = Field(default=256, gt=0, description="longest id (task, agent, trace, tool call, ...)")

    def apply(self) -> None:
        set_limits(Limits(self.max_step_content_chars, self.max_event_bytes, self.max_id_chars))


class SDKSettings(_Section):
    linger_ms: int = Field(default=5, ge=0, description="producer batching delay")
    max_batch_size: int = Field(default=131_072, gt=0, description="producer batch size in bytes")
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    acks: Literal[0, 1, "all"] = "all"
    max_in_flight: int = Field(
        default=20_000, gt=0, description="events accepted but not yet acknowledged; emit waits beyond it"
    )
    send_timeout_s: float = Field(
        default=60.0, gt=0, description="how long emit may wait for room or an ack before it raises"
    )


class WorkloadSettings(_Section):
    default: str = Field(default="{agent_id}", min_length=1,
                         description="the workload of a trace or request that names none: a template over the "
                                     "agent id ({agent_id})")
    max_labels: int = Field(default=8, ge=0, description="workloads named on a metric label; the rest are `other`")


class AdviseSettings(_Section):
    """`stillflow advise`: the thresholds of its symptoms and the prices it costs episodes at (docs/advise.md)."""

    min_tasks_per_day: float = Field(default=1_000.0, ge=0,
                                     description="high volume: more tasks a day than this -> distil")
    max_teacher_latency_per_task_s: float = Field(default=10.0, ge=0,
                                                  description="slow: more teacher seconds a task than this -> distil")
    max_context_share: float = Field(default=0.5, ge=0, le=1,
                                     description="context window too full: a larger share of prompt tokens "
                                                 "that is system prompt + tool schemas -> fine-tune")
    max_format_drift: float = Field(default=0.02, ge=0, le=1,
                                    description="format drift: a larger share of traces rejected by the "
                                                "tool_validity gate -> fine-tune")
    max_inconsistency: float = Field(default=0.25, ge=0,
                                     description="inconsistency: a larger mean coefficient of variation of step "
                                                 "counts on the same task -> distil")
    teacher_price_per_1k: float = Field(default=0.01, ge=0, description="USD per 1k teacher tokens")
    student_price_per_1k: float = Field(default=0.0005, ge=0, description="USD per 1k student tokens")


class StillflowSettings(BaseSettings):
    """Shared settings; services subclass this and add their own section."""

    model_config = SettingsConfigDict(
        env_prefix="STILLFLOW_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicNames = TopicNames()
    limits: LimitsSettings = LimitsSettings()
    sdk: SDKSettings = SDKSettings()
    quality: QualitySettings = QualitySettings()
    workloads: WorkloadSettings = WorkloadSettings()
    advise: AdviseSettings = AdviseSettings()
    log_level: str = "INFO"
