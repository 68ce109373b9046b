"""Settings of the OTLP receiver (`stillflow otlp`): the shared settings plus `STILLFLOW_OTLP__...`.

Examples: `STILLFLOW_OTLP__PORT=4318`, `STILLFLOW_OTLP__MAX_BODY_BYTES=8388608`,
`STILLFLOW_OTLP__API_KEYS='["k1"]'` (then exporters send `OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer k1`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from stillflow.settings import StillflowSettings

__all__ = ["OtlpSection", "OtlpSettings"]


class OtlpSection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=4318, ge=0, le=65535, description="OTLP/HTTP's standard port; 0: a free one")
    api_keys: tuple[SecretStr, ...] = Field(default=(), description="accepted bearer keys; empty = no auth")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0,
                                description="larger request bodies (after gunzip too) are refused with 413")
    max_record_bytes: int = Field(
        default=1_000_000, gt=0,
        description="one trace's spans of one request larger than this (Kafka's default message limit) are "
        "refused, counted in partial_success")
    publish_timeout_s: float = Field(
        default=10.0, gt=0, description="Kafka must take a request's records within this, else 503 + Retry-After")
    max_inflight_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="bodies being published at once; beyond: 429 + Retry-After")
    retry_after_s: int = Field(default=5, ge=1, description="the Retry-After of a 429 or 503")


class OtlpSettings(StillflowSettings):
    """Settings of the OTLP receiver (`STILLFLOW_OTLP__...`)."""

    otlp: OtlpSection = OtlpSection()
