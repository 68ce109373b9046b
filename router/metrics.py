"""Prometheus metrics of the router (`stillflow_router_*`, base units, bounded labels: versions, paths,
reasons, error kinds — never trace or request ids). Each `RouterMetrics` has its own registry, so
several routers (tests) can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["RouterMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_CONFIDENCE = tuple(round(x / 20, 2) for x in range(1, 21))


class RouterMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("stillflow_router_requests_total", "chat completions by who served them and status",
                                ["served_by", "status"], registry=r)
        self.workload_requests = Counter(
            "stillflow_router_workload_requests_total",
            "chat completions by workload (the busiest and the served ones by name, the rest `other`) and who "
            "served them (student, teacher, none)", ["workload", "served_by"], registry=r)
        self.decisions = Counter("stillflow_router_decisions_total", "routing decisions by reason", ["reason"],
                                 registry=r)
        self.latency = Histogram("stillflow_router_request_duration_seconds", "request latency by path", ["path"],
                                 buckets=_LATENCY, registry=r)
        self.student_latency = Histogram("stillflow_router_student_generation_seconds", "one student turn",
                                         buckets=_LATENCY, registry=r)
        self.teacher_latency = Histogram("stillflow_router_teacher_request_seconds", "one teacher call (retries in)",
                                         buckets=_LATENCY, registry=r)
        self.confidence = Histogram("stillflow_router_student_confidence", "confidence of student turns",
                                    buckets=_CONFIDENCE, registry=r)
        self.teacher_errors = Counter("stillflow_router_teacher_errors_total", "failed teacher attempts by kind",
                                      ["kind"], registry=r)
        self.breaker_open = Gauge("stillflow_router_teacher_circuit_open", "1 while the teacher breaker is open",
                                  registry=r)
        self.swaps = Counter("stillflow_router_model_swaps_total", "student swaps by slot and result",
                             ["slot", "result"], registry=r)
        self.load_failures = Counter("stillflow_router_model_load_failures_total", "refused or failed loads",
                                     ["kind"], registry=r)
        self.swap_seconds = Histogram("stillflow_router_model_swap_seconds", "event to swap (load, verify, warm-up)",
                                      buckets=_LATENCY, registry=r)
        self.version_info = Gauge("stillflow_router_model_version_info", "1 for the version in each slot",
                                  ["slot", "version"], registry=r)
        self.threshold = Gauge("stillflow_router_confidence_threshold", "the live version's threshold", registry=r)
        self.student_pending = Gauge("stillflow_router_student_pending", "student turns running or waiting",
                                     registry=r)
        self.student_batch_size = Histogram("stillflow_router_student_batch_size", "requests generated together",
                                            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.emit_errors = Counter("stillflow_router_emit_errors_total", "trace / decision events not published",
                                   registry=r)
        self.events_emitted = Counter("stillflow_router_events_emitted_total", "events published by topic role",
                                      ["role"], registry=r)

    def set_version(self, slot: str, version: str | None) -> None:
        """Exactly one series per slot: the version in it (none: no series)."""
        for labels in list(self.version_info._metrics):
            if labels[0] == slot:
                self.version_info.remove(*labels)
        if version is not None:
            self.version_info.labels(slot, version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
