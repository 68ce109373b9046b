"""dataset_build: traces/s of `stillflow dataset build` vs the stream's pure pipeline, side by side.

On one set of sim traces (teacher and random policy, written as a JSONL file): the pure pipeline
(score + gate + format + redact of one trace in this process, `TracePipeline.process`, best of 3) and the
whole offline build (read and parse the file, dedupe, order, score with the references carried, windows,
pairs, write the files; best of 2), with its default worker processes and with one. The ratio is build
traces/s over pure-pipeline traces/s (target >= 0.8: the offline path adds little to the work itself).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.common import emit_result, progress
from sim.policies import make_policy
from sim.runner import iter_offline
from streams.dataset_build import build_dataset
from streams.pipeline import TracePipeline
from streams.settings import StreamsSettings

TARGET = 0.8


def _pure_us_per_trace(traces: list) -> float:
    p = TracePipeline.from_settings(StreamsSettings())
    for t in traces[:50]:
        p.process(t)  # warm the caches
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for t in traces:
            p.process(t)
        best = min(best, (time.perf_counter() - t0) / len(traces))
    return best * 1e6


def _build_s(src: Path, work: Path, workers: int | None) -> tuple[float, int]:
    best, n = float("inf"), 0
    for i in range(2):
        t0 = time.perf_counter()
        report = build_dataset([src], work / f"out-{workers}-{i}", workers=workers, progress=False)
        best = min(best, time.perf_counter() - t0)
        n = report.counts["traces"]
    return best, n


def run(n_traces: int) -> dict:
    start = datetime.now(UTC) - timedelta(hours=1)
    n_random = n_traces // 5
    traces = list(iter_offline(n_traces - n_random, make_policy("teacher"), seed=1, start=start, rate=20.0))
    traces += [t.model_copy(update={"trace_id": f"rnd-{t.trace_id}"}) for t in
               iter_offline(n_random, make_policy("random"), seed=1, start=start + timedelta(milliseconds=1),
                            rate=20.0)]
    work = Path(tempfile.mkdtemp(prefix="stillflow-bench-dataset-"))
    src = work / "traces.jsonl"
    src.write_text("".join(t.model_dump_json() + "\n" for t in traces))
    progress(f"{len(traces)} traces ({src.stat().st_size / 1e6:.1f} MB) in {src}")
    pure = _pure_us_per_trace(traces)
    progress(f"pure pipeline: {pure:.0f} µs/trace")
    auto_s, n = _build_s(src, work, None)
    progress(f"dataset build (default workers): {auto_s:.2f} s for {n} traces")
    one_s, _ = _build_s(src, work, 1)
    progress(f"dataset build (one process): {one_s:.2f} s")
    pure_rate = 1e6 / pure
    ratio = (n / auto_s) / pure_rate
    return {
        "traces": n,
        "pipeline_pure_us_per_trace": round(pure, 1),
        "pipeline_pure_traces_per_s": round(pure_rate, 1),
        "build_traces_per_s": round(n / auto_s, 1),
        "build_workers": os.cpu_count() if n >= 2000 else 1,
        "build_one_process_traces_per_s": round(n / one_s, 1),
        "ratio_build_over_pure": round(ratio, 3),
        "ratio_one_process_over_pure": round((n / one_s) / pure_rate, 3),
        "target_ratio": TARGET,
        "meets_target": ratio >= TARGET,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=5000)
    args = ap.parse_args()
    emit_result("dataset_build", run(args.traces))


if __name__ == "__main__":
    main()
