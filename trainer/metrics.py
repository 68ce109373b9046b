"""Prometheus metrics of the trainer (`stillflow_` prefix, base units, `_total` counters, histograms;
labels are bounded: outcomes, stages, model names and versions — never ids of traces or runs).

Exports `TrainerMetrics` (one set per process, on a registry of its own unless given) and
`serve(metrics, port)` (an HTTP `/metrics` endpoint in a background thread).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["TrainerMetrics", "serve"]

_RUN_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "stillflow_trainer_runs_total", "Training runs by outcome (promoted, rejected, failed)", ["outcome"],
            registry=r,
        )
        self.run_duration = Histogram(
            "stillflow_trainer_run_duration_seconds", "Duration of training runs and their stages", ["stage"],
            buckets=_RUN_BUCKETS, registry=r,
        )
        self.windows = Counter(
            "stillflow_trainer_windows_total", "Dataset window events counted by the retrain consumer", registry=r
        )
        self.pending_examples = Gauge(
            "stillflow_trainer_pending_examples", "New SFT examples since the last training run", registry=r
        )
        self.total_examples = Gauge(
            "stillflow_trainer_examples", "SFT examples announced by window events, in total", registry=r
        )
        self.training_examples = Gauge(
            "stillflow_trainer_training_examples", "Examples in the last run, by part", ["part"], registry=r
        )
        self.final_loss = Gauge(
            "stillflow_trainer_final_loss", "Last logged loss of the last run", ["stage"], registry=r
        )
        self.quality_ratio = Gauge(
            "stillflow_trainer_eval_quality_ratio", "Student / teacher quality on held-out tasks",
            ["model", "version"], registry=r,
        )
        self.failure_rate = Gauge(
            "stillflow_trainer_eval_failure_rate", "Catastrophic-failure rate of the student on held-out tasks",
            ["model", "version"], registry=r,
        )
        self.confidence_threshold = Gauge(
            "stillflow_trainer_confidence_threshold", "Calibrated router confidence threshold",
            ["model", "version"], registry=r,
        )

    def observe_run(self, outcome: str, seconds: float, stages: dict[str, float] | None = None) -> None:
        self.runs.labels(outcome=outcome).inc()
        self.run_duration.labels(stage="total").observe(seconds)
        for stage, s in (stages or {}).items():
            self.run_duration.labels(stage=stage).observe(s)

    def observe_version(self, model: str, version: str, metrics: dict[str, Any]) -> None:
        if isinstance(metrics.get("quality_ratio"), (int, float)):
            self.quality_ratio.labels(model=model, version=version).set(metrics["quality_ratio"])
        if isinstance(metrics.get("failure_rate"), (int, float)):
            self.failure_rate.labels(model=model, version=version).set(metrics["failure_rate"])
        if isinstance(metrics.get("confidence_threshold"), (int, float)):
            self.confidence_threshold.labels(model=model, version=version).set(metrics["confidence_threshold"])


def serve(metrics: TrainerMetrics, port: int, addr: str = "0.0.0.0") -> Any:
    """Serve `/metrics` on `port` in a daemon thread; returns the server (call `.shutdown()` to stop)."""
    server, _thread = start_http_server(port, addr=addr, registry=metrics.registry)
    return server
