"""Prometheus metrics of the streams service (names per DESIGN.md: `stillflow_` prefix, base units,
`_total` counters, histograms, bounded labels — topics, gates, kinds, dimensions; never trace ids).

Each worker serves them at `/metrics` on its web port.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["StreamsMetrics"]

_SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class StreamsMetrics:
    """One set per app; a registry of its own so that several apps in one process (tests) do not clash."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter(
            "stillflow_streams_events_total", "Trace events consumed, by topic role and result",
            ["topic", "result"], registry=r,
        )
        self.dead_letters = Counter(
            "stillflow_streams_dead_letters_total", "Records sent to the DLQ, by kind", ["kind"], registry=r
        )
        self.traces_completed = Counter(
            "stillflow_streams_traces_completed_total", "Traces assembled whole", registry=r
        )
        self.traces_expired = Counter(
            "stillflow_streams_traces_expired_total", "Incomplete traces expired to the DLQ", registry=r
        )
        self.traces_scored = Counter(
            "stillflow_streams_traces_scored_total", "Traces scored, by verdict", ["verdict"], registry=r
        )
        self.workload_traces = Counter(
            "stillflow_streams_workload_traces_total",
            "Traces scored, by workload (the busiest by name, the rest `other`) and verdict", ["workload", "verdict"],
            registry=r,
        )
        self.gate_rejections = Counter(
            "stillflow_streams_gate_rejections_total", "Gate failures (a trace may fail several)", ["gate"],
            registry=r,
        )
        self.score = Histogram(
            "stillflow_streams_score", "Trajectory score per dimension", ["dimension"], buckets=_SCORE_BUCKETS,
            registry=r,
        )
        self.dataset_records = Counter(
            "stillflow_streams_dataset_records_total", "Records written to dataset topics", ["kind"], registry=r
        )
        self.pii_redactions = Counter(
            "stillflow_streams_pii_redactions_total", "PII and secrets redacted, by type", ["type"], registry=r
        )
        self.window_closes = Counter(
            "stillflow_streams_window_closes_total", "Dataset windows closed", registry=r
        )
        self.window_size = Histogram(
            "stillflow_streams_window_sft_examples", "SFT examples per closed window",
            buckets=(0, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000), registry=r,
        )
        self.late_traces = Counter(
            "stillflow_streams_late_traces_total", "Traces whose window had closed (counted in the open one)",
            registry=r,
        )
        self.processing_seconds = Histogram(
            "stillflow_streams_processing_seconds", "Time spent on one record, by stage", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.trace_latency = Histogram(
            "stillflow_streams_trace_latency_seconds", "Trace event time to scored (end to end)",
            buckets=_E2E_BUCKETS, registry=r,
        )
        self.judge_calls = Counter(
            "stillflow_streams_judge_calls_total",
            "LLM judge requests, by result (fallback: the heuristic scored it)", ["result"], registry=r,
        )
        self.assembly_open = Gauge(
            "stillflow_streams_assembly_open_traces", "Traces being assembled on this worker", registry=r
        )
        # OpenTelemetry in (streams.otel_stage)
        self.otel_records = Counter(
            "stillflow_streams_otel_records_total", "OTLP records consumed, by topic role and result",
            ["topic", "result"], registry=r,
        )
        self.otel_spans = Counter(
            "stillflow_streams_otel_spans_total", "Spans read from OTLP records, by result (kept, duplicate)",
            ["result"], registry=r,
        )
        self.otel_traces = Counter(
            "stillflow_streams_otel_traces_total",
            "OTel traces, by result (built, incomplete, late, no_content, no_llm_spans, invalid)", ["result"],
            registry=r,
        )
        self.otel_no_content = Counter(
            "stillflow_streams_otel_no_content_total",
            "Traces dead-lettered because their model-call spans carry no message content, by instrumentation "
            "scope (the first 32 by name, then `other`)", ["scope"], registry=r,
        )
        self.otel_outcomes = Counter(
            "stillflow_streams_otel_outcomes_total",
            "How OTel traces got their outcome (reported, evaluation, unknown) and outcomes that joined nothing "
            "(unmatched)", ["result"], registry=r,
        )
        self.otel_open = Gauge(
            "stillflow_streams_otel_open_traces", "OTel traces being assembled on this worker", registry=r
        )
        self.watermark = Gauge(
            "stillflow_streams_watermark_seconds", "Event-time watermark (unix seconds)", registry=r
        )
