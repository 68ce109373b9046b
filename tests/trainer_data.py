"""Exported training data from the simulator, as the stream would produce it (tests and benches only).

`export_sim_data(out_dir, n_tasks=..., runs_per_task=..., gated=True)` runs the sim's teacher
(default error modes) several times per task, passes every trace through the stream's per-trace
pipeline (`streams.pipeline.TracePipeline`: score → gate → format → redact), mines preference pairs
per task (`streams.pairs.mine_pairs`), and writes `sft.jsonl` (`SFTExample` events) and `dpo.jsonl`
(`PreferencePair` events). `gated=False` keeps every teacher trace that has a final answer (the
"ungated" baseline: what you get without the quality gates).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sim import make_policy
from sim.runner import run_episode
from sim.tasks import get_suite
from sim.world import stable_int
from stillflow.contracts import PreferencePair, SFTExample
from streams.formatting import FormatError, to_sft_example
from streams.pairs import mine_pairs
from streams.pipeline import TracePipeline

__all__ = ["generate_sim_data", "export_sim_data", "write_export"]


def generate_sim_data(
    *,
    n_tasks: int = 300,
    runs_per_task: int = 2,
    seed: int = 0,
    gated: bool = True,
    families: Sequence[str] | None = None,
    redact: bool = True,
    error_rates: dict[str, float] | None = None,
) -> tuple[list[SFTExample], list[PreferencePair], dict[str, Any]]:
    suite = get_suite(0)
    policy = make_policy("teacher", rates=error_rates)
    tasks = suite.sample(random.Random(stable_int("trainer-data", seed)), n_tasks, split="train", families=families)
    tasks = list({t.task_id: t for t in tasks}.values())
    pipe = TracePipeline(redact=redact)
    examples: list[SFTExample] = []
    pairs: list[PreferencePair] = []
    counts: Counter[str] = Counter()
    for ti, task in enumerate(tasks):
        candidates = []
        for r in range(runs_per_task):
            trace = run_episode(task, policy, seed=seed * 1000 + r, trace_id=f"d{seed}-{ti:05d}-{r}")
            processed = pipe.process(trace)
            counts["traces"] += 1
            candidates.append(processed.candidate)
            counts["passed" if processed.verdict.passed else "rejected"] += 1
            if gated:
                example = processed.example
            else:
                try:
                    example = to_sft_example(trace, processed.assessment.score,
                                             messages=processed.candidate.messages)
                except FormatError:
                    example = None
            if example is not None:
                examples.append(example)
        pairs.extend(mine_pairs(candidates, min_gap=0.2))
    counts["sft"] = len(examples)
    counts["pairs"] = len(pairs)
    return examples, pairs, dict(counts)


def write_export(out_dir: Path, examples: Sequence[SFTExample], pairs: Sequence[PreferencePair]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "sft.jsonl").open("w", encoding="utf-8") as fp:
        for e in examples:
            fp.write(e.model_dump_json() + "\n")
    with (out_dir / "dpo.jsonl").open("w", encoding="utf-8") as fp:
        for p in pairs:
            fp.write(p.model_dump_json() + "\n")
    return out_dir


def export_sim_data(out_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    examples, pairs, counts = generate_sim_data(**kwargs)
    write_export(Path(out_dir), examples, pairs)
    (Path(out_dir) / "counts.json").write_text(json.dumps(counts))
    return counts
