"""dataset_build: traces/s of `stillflow dataset build` vs the stream's pure pipeline, side by side.

On one set of sim traces (teacher and random policy, written as a JSONL file), in alternating rounds (best
of each): the pure pipeline (score + gate + format + redact of each trace in this process,
`TracePipeline.process`) and the whole offline build (read and parse the file, dedupe, order, score with
the references carried, windows, pairs, write the files), with its default worker processes and with one.
CPU seconds per trace (all processes) beside the wall-clock rates. The ratio is build
traces/s over pure-pipeline traces/s (target >= 0.8: the offline path adds little to the work itself).
"""

from __future__ import annotations

import argparse
import os
import resource
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


def _cpu_s() -> float:
    """CPU seconds of this process and of its reaped children (the build's worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _pure_round(traces: list) -> tuple[float, float]:
    """(wall s, CPU s) of one pass of the pure pipeline over `traces`."""
    p = TracePipeline.from_settings(StreamsSettings())
    for t in traces[:50]:
        p.process(t)  # warm the caches
    c0, t0 = _cpu_s(), time.perf_counter()
    for t in traces:
        p.process(t)
    return time.perf_counter() - t0, _cpu_s() - c0


def _build_round(src: Path, out: Path, workers: int | None) -> tuple[float, float, int]:
    c0, t0 = _cpu_s(), time.perf_counter()
    report = build_dataset([src], out, workers=workers, progress=False)
    return time.perf_counter() - t0, _cpu_s() - c0, report.counts["traces"]


def run(n_traces: int, rounds: int) -> dict:
    start = datetime.now(UTC) - timedelta(hours=1)
    n_random = n_traces // 5
    traces = list(iter_offline(n_traces - n_random, make_policy("teacher"), seed=1, start=start, rate=20.0))
    traces += [t.model_copy(update={"trace_id": f"rnd-{t.trace_id}"}) for t in
               iter_offline(n_random, make_policy("random"), seed=1, start=start + timedelta(milliseconds=1),
                            rate=20.0)]
    work = Path(tempfile.mkdtemp(prefix="stillflow-bench-dataset-"))
    src = work / "traces.jsonl"
    src.write_text("".join(t.model_dump_json() + "\n" for t in traces))
    progress(f"{len(traces)} traces ({src.stat().st_size / 1e6:.1f} MB) in {src}; {rounds} alternating rounds")
    pure: list[tuple[float, float]] = []
    auto: list[tuple[float, float]] = []
    one: list[tuple[float, float]] = []
    n = len(traces)
    for r in range(rounds):  # side by side: the machine's noise hits all three alike
        pure.append(_pure_round(traces))
        w, c, n = _build_round(src, work / f"auto-{r}", None)
        auto.append((w, c))
        w, c, _ = _build_round(src, work / f"one-{r}", 1)
        one.append((w, c))
        progress(f"round {r + 1}: pure {pure[-1][0]:.2f} s, build {auto[-1][0]:.2f} s, one process {one[-1][0]:.2f} s")
    pure_s, auto_s, one_s = (min(x[0] for x in xs) for xs in (pure, auto, one))
    pure_cpu, auto_cpu, one_cpu = (min(x[1] for x in xs) for xs in (pure, auto, one))
    ratio = pure_s / auto_s  # build traces/s over pure traces/s (same n)
    return {
        "traces": n,
        "rounds": rounds,
        "pipeline_pure_us_per_trace": round(pure_s / n * 1e6, 1),
        "pipeline_pure_traces_per_s": round(n / pure_s, 1),
        "build_traces_per_s": round(n / auto_s, 1),
        "build_workers": os.cpu_count() if n >= 2000 else 1,
        "build_one_process_traces_per_s": round(n / one_s, 1),
        # CPU per trace (all processes): steadier than wall time on a shared machine, and what the offline path
        # adds to the work itself (parsing the rows, the stream's size checks, windows, pairs, files)
        "pipeline_pure_cpu_us_per_trace": round(pure_cpu / n * 1e6, 1),
        "build_cpu_us_per_trace": round(auto_cpu / n * 1e6, 1),
        "build_one_process_cpu_us_per_trace": round(one_cpu / n * 1e6, 1),
        "ratio_build_over_pure": round(ratio, 3),
        "ratio_one_process_over_pure": round(pure_s / one_s, 3),
        "target_ratio": TARGET,
        "meets_target": ratio >= TARGET,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    emit_result("dataset_build", run(args.traces, args.rounds))


if __name__ == "__main__":
    main()
