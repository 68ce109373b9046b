"""Writes the Grafana dashboards in `deploy/grafana/dashboards/` (run: `python deploy/grafana/make_dashboards.py`).

The JSON files are generated from this one script so that every panel has the same shape and every
panel and query references the provisioned datasource uid (`stillflow-prom`). Edit here, re-run, commit
both. `tests/test_deploy_config.py` checks the result against the metrics the services export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "stillflow-prom"}
OUT = Path(__file__).resolve().parent / "dashboards"
RI = "$__rate_interval"


class Board:
    def __init__(self, uid: str, title: str, description: str, time_from: str = "now-1h") -> None:
        self.uid, self.title, self.description, self.time_from = uid, title, description, time_from
        self.panels: list[dict[str, Any]] = []
        self._x = self._y = self._row_h = 0

    def _place(self, w: int, h: int) -> dict[str, int]:
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        pos = {"x": self._x, "y": self._y, "w": w, "h": h}
        self._x += w
        self._row_h = max(self._row_h, h)
        return pos

    def row(self, title: str) -> None:
        if self._x:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        self.panels.append({"id": len(self.panels) + 1, "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"x": 0, "y": self._y, "w": 24, "h": 1}, "panels": []})
        self._y += 1

    def panel(self, title: str, targets: list[tuple[str, str]], *, kind: str = "timeseries", unit: str = "short",
              w: int = 12, h: int = 8, description: str = "", instant: bool = False, fmt: str = "time_series",
              thresholds: list[tuple[str, float | None]] | None = None, extra: dict[str, Any] | None = None) -> None:
        panel: dict[str, Any] = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": dict(DATASOURCE),
            "gridPos": self._place(w, h),
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": dict(DATASOURCE), "expr": expr, "legendFormat": legend,
                 "range": not instant, "instant": instant, "format": fmt}
                for i, (expr, legend) in enumerate(targets)
            ],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
        }
        if kind == "timeseries":
            panel["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                "tooltip": {"mode": "multi", "sort": "desc"}}
        if thresholds:
            panel["fieldConfig"]["defaults"]["thresholds"] = {
                "mode": "absolute",
                "steps": [{"color": color, "value": value} for color, value in thresholds],
            }
            if kind == "timeseries":
                panel["fieldConfig"]["defaults"]["custom"] = {"thresholdsStyle": {"mode": "line+area"}}
        if extra:
            for key, value in extra.items():
                panel[key] = value
        self.panels.append(panel)

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["stillflow"],
            "timezone": "browser",
            "editable": True,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "30s",
            "time": {"from": self.time_from, "to": "now"},
            "templating": {"list": []},
            "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": ["stillflow"], "asDropdown": True, "title": "stillflow"}],
            "panels": self.panels,
        }


def quantiles(
    metric: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.99), window: str = RI
) -> list[tuple[str, str]]:
    """histogram_quantile over a histogram's buckets, one target per quantile (labels `by` kept)."""
    labels = f"le, {by}" if by else "le"
    legend = " ".join(f"{{{{{x.strip()}}}}}" for x in by.split(",") if x.strip())
    return [
        (f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket[{window}])))",
         f"{legend} p{round(q * 100):d}".strip())
        for q in qs
    ]


def pipeline() -> Board:
    b = Board("stillflow-pipeline", "stillflow / pipeline",
              "The streams workers: events in, assembly, scoring and gates, dead letters, latency, watermark.")
    b.row("Throughput")
    b.panel("Trace events consumed by result", [
        (f"sum by (topic, result) (rate(stillflow_streams_events_total[{RI}]))", "{{topic}} {{result}}"),
    ], unit="ops")
    b.panel("Traces completed / expired / late", [
        (f"sum(rate(stillflow_streams_traces_completed_total[{RI}]))", "completed"),
        (f"sum(rate(stillflow_streams_traces_expired_total[{RI}]))", "expired (incomplete, to DLQ)"),
        (f"sum(rate(stillflow_streams_late_traces_total[{RI}]))", "late (window already closed)"),
    ], unit="ops")
    b.row("Quality gates")
    b.panel("Traces scored by verdict", [
        (f"sum by (verdict) (rate(stillflow_streams_traces_scored_total[{RI}]))", "{{verdict}}"),
    ], unit="ops")
    b.panel("Gate rejections by gate", [
        (f"sum by (gate) (rate(stillflow_streams_gate_rejections_total[{RI}]))", "{{gate}}"),
    ], unit="ops", description="A trace may fail several gates; each failure counts once per gate.")
    b.panel("Score by dimension (median)", quantiles("stillflow_streams_score", "dimension", (0.5,)),
            unit="percentunit")
    b.panel("Dead letters by kind", [
        (f"sum by (kind) (rate(stillflow_streams_dead_letters_total[{RI}]))", "{{kind}}"),
    ], unit="ops")
    b.row("OpenTelemetry in")
    b.panel("OTLP receiver requests by signal and status", [
        (f"sum by (signal, code) (rate(stillflow_otlp_requests_total[{RI}]))", "{{signal}} {{code}}"),
    ], unit="reqps", description="200 kept (partial_success counts what was refused), 4xx refused, 429/503 "
                                 "Kafka did not take the data: the exporter retries.")
    b.panel("OTel traces by result", [
        (f"sum by (result) (rate(stillflow_streams_otel_traces_total[{RI}]))", "{{result}}"),
        (f"sum by (result) (rate(stillflow_streams_otel_outcomes_total[{RI}]))", "outcome {{result}}"),
    ], unit="ops", description="built, or dead-lettered (no_content, incomplete, late, ...); how each got its "
                               "outcome (reported, evaluation, unknown).")
    b.panel("Traces without message content, by instrumentation", [
        (f"sum by (scope) (rate(stillflow_streams_otel_no_content_total[{RI}]))", "{{scope}}"),
    ], unit="ops", description="Turn content capture on for these (the dead letter names the variable).")
    b.row("Latency")
    b.panel("Processing seconds by stage (p50 / p99)",
            quantiles("stillflow_streams_processing_seconds", "stage"), unit="s")
    b.panel("End-to-end trace latency (event time to scored)",
            quantiles("stillflow_streams_trace_latency_seconds", qs=(0.5, 0.9, 0.99)), unit="s")
    b.row("State")
    b.panel("Open traces (being assembled)", [
        ("sum(stillflow_streams_assembly_open_traces)", "all workers"),
        ("stillflow_streams_assembly_open_traces", "{{instance}}"),
    ])
    b.panel("Watermark lag (now - event-time watermark)", [
        ("time() - (stillflow_streams_watermark_seconds > 0)", "{{instance}}"),
    ], unit="s", description="Grows when traffic stops or a worker falls behind; the window grace is added on top.")
    return b


def datasets() -> Board:
    b = Board("stillflow-datasets", "stillflow / datasets",
              "What the stream writes as training data: SFT examples, DPO pairs, windows, redactions.", "now-6h")
    b.panel("Dataset records written by kind", [
        (f"sum by (kind) (rate(stillflow_streams_dataset_records_total[{RI}]))", "{{kind}}"),
    ], unit="ops")
    b.panel("Records written in the range", [
        ("sum by (kind) (increase(stillflow_streams_dataset_records_total[$__range]))", "{{kind}}"),
    ], kind="stat", instant=True, w=6)
    b.panel("Windows closed in the range", [
        ("sum(increase(stillflow_streams_window_closes_total[$__range]))", "windows"),
    ], kind="stat", instant=True, w=6)
    b.panel("Window closes", [
        (f"sum(rate(stillflow_streams_window_closes_total[{RI}])) * 60", "closes / min"),
    ], unit="short")
    b.panel("SFT examples per closed window", [
        *quantiles("stillflow_streams_window_sft_examples", qs=(0.5, 0.99), window="5m"),
        ("sum(rate(stillflow_streams_window_sft_examples_sum[5m]))"
         " / sum(rate(stillflow_streams_window_sft_examples_count[5m]))", "mean"),
    ])
    b.panel("PII redactions by type", [
        (f"sum by (type) (rate(stillflow_streams_pii_redactions_total[{RI}]))", "{{type}}"),
    ], unit="ops")
    b.panel("Examples announced to the trainer", [
        ("max(stillflow_trainer_examples)", "total"),
        ("max(stillflow_trainer_pending_examples)", "pending (since the last run)"),
    ])
    return b


def training() -> Board:
    b = Board("stillflow-training", "stillflow / training",
              "The retrain consumer: runs, their stages, evaluation against the teacher, the gate.", "now-24h")
    b.panel("Runs by outcome (in the range)", [
        ("sum by (outcome) (increase(stillflow_trainer_runs_total[$__range]))", "{{outcome}}"),
    ], kind="stat", instant=True, w=8)
    b.panel("Pending examples (since the last run)", [
        ("stillflow_trainer_pending_examples", "pending"),
        ("stillflow_trainer_examples", "total announced"),
    ], w=8)
    b.panel("Window events counted", [
        (f"sum(rate(stillflow_trainer_windows_total[{RI}])) * 60", "windows / min"),
    ], w=8)
    b.panel("Run duration by stage (p50 / p99 over the range)",
            quantiles("stillflow_trainer_run_duration_seconds", "stage", window="$__range"), unit="s",
            kind="bargauge", instant=True)
    b.panel("Examples in the last run by part", [
        ("stillflow_trainer_training_examples", "{{part}}"),
    ], kind="bargauge", instant=True)
    b.panel("Eval quality ratio (student / teacher)", [
        ("stillflow_trainer_eval_quality_ratio", "{{model}} {{version}}"),
    ], unit="percentunit", thresholds=[("red", None), ("green", 0.9)],
        description="The gate promotes at >= STILLFLOW_TRAINER__GATE__QUALITY_RATIO_MIN (0.90 by default).")
    b.panel("Eval catastrophic-failure rate", [
        ("stillflow_trainer_eval_failure_rate", "{{model}} {{version}}"),
    ], unit="percentunit", thresholds=[("green", None), ("red", 0.05)],
        description="The gate wants < STILLFLOW_TRAINER__GATE__FAILURE_RATE_MAX (0.05 by default).")
    b.panel("Calibrated confidence threshold", [
        ("stillflow_trainer_confidence_threshold", "{{model}} {{version}}"),
    ], unit="percentunit")
    b.panel("Final loss of the last run by stage", [
        ("stillflow_trainer_final_loss", "{{stage}}"),
    ])
    return b


def router() -> Board:
    b = Board("stillflow-router", "stillflow / router",
              "The OpenAI-compatible router: who served, why, how fast, how confident; teacher health; swaps.")
    b.row("Traffic")
    b.panel("Requests by served_by and status", [
        (f"sum by (served_by, status) (rate(stillflow_router_requests_total[{RI}]))", "{{served_by}} {{status}}"),
    ], unit="reqps")
    b.panel("Traffic share by version (served_by)", [
        (f"sum by (served_by) (rate(stillflow_router_requests_total[{RI}])) "
         f"/ scalar(sum(rate(stillflow_router_requests_total[{RI}])))", "{{served_by}}"),
    ], unit="percentunit", extra={"fieldConfig": {"defaults": {"unit": "percentunit", "max": 1,
                                                              "custom": {"stacking": {"mode": "normal"},
                                                                         "fillOpacity": 60}},
                                                 "overrides": []}})
    b.panel("Routing decisions by reason", [
        (f"sum by (reason) (rate(stillflow_router_decisions_total[{RI}]))", "{{reason}}"),
    ], unit="reqps")
    b.panel("Current version per slot and replica", [
        ("max by (instance, slot, version) (stillflow_router_model_version_info)", ""),
    ], kind="table", instant=True, fmt="table", w=8)
    b.panel("Live confidence threshold", [
        ("stillflow_router_confidence_threshold", "{{instance}}"),
    ], kind="stat", instant=True, unit="percentunit", w=4)
    b.row("Latency and confidence")
    b.panel("Request latency by path (p50 / p99)",
            quantiles("stillflow_router_request_duration_seconds", "path"), unit="s")
    b.panel("Student turn vs teacher call (p50 / p99)", [
        *[(e, f"student {lg}") for e, lg in quantiles("stillflow_router_student_generation_seconds")],
        *[(e, f"teacher {lg}") for e, lg in quantiles("stillflow_router_teacher_request_seconds")],
    ], unit="s")
    b.panel("Student confidence (histogram)", [
        (f"sum by (le) (rate(stillflow_router_student_confidence_bucket[{RI}]))", "{{le}}"),
    ], kind="heatmap", fmt="heatmap",
        extra={"options": {"calculate": False, "yAxis": {"unit": "percentunit"}, "color": {"scheme": "Blues"}}})
    b.panel("Student turns running or waiting", [
        ("stillflow_router_student_pending", "{{instance}}"),
    ])
    b.row("Teacher and models")
    b.panel("Teacher errors by kind", [
        (f"sum by (kind) (rate(stillflow_router_teacher_errors_total[{RI}]))", "{{kind}}"),
    ], unit="ops")
    b.panel("Teacher circuit breaker (1 = open)", [
        ("max by (instance) (stillflow_router_teacher_circuit_open)", "{{instance}}"),
    ], thresholds=[("green", None), ("red", 1)])
    b.panel("Model swaps by slot and result", [
        (f"sum by (slot, result) (increase(stillflow_router_model_swaps_total[{RI}]))", "{{slot}} {{result}}"),
        (f"sum by (kind) (increase(stillflow_router_model_load_failures_total[{RI}]))", "load failed: {{kind}}"),
    ])
    b.panel("Swap time (event to live, p50 / p99)",
            quantiles("stillflow_router_model_swap_seconds", window="$__range"), unit="s", kind="stat", instant=True)
    b.panel("Events published by role / not published", [
        (f"sum by (role) (rate(stillflow_router_events_emitted_total[{RI}]))", "{{role}}"),
        (f"sum(rate(stillflow_router_emit_errors_total[{RI}]))", "emit errors"),
    ], unit="ops")
    return b


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for make in (pipeline, datasets, training, router):
        board = make()
        path = OUT / f"{make.__name__}.json"
        path.write_text(json.dumps(board.json(), indent=2) + "\n", encoding="utf-8")
        print(f"{path.relative_to(OUT.parent.parent.parent)}: {len(board.panels)} panels")


if __name__ == "__main__":
    main()
