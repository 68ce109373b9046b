"""Trainer: retrain consumer, student SFT/DPO, evaluation gate, model registry (flow step 7 in DESIGN.md).

One module per job (each says what it exports):
- `trainer.settings`     — `TrainerSettings` (`STILLFLOW_TRAINER__...`) and its sections;
- `trainer.data`         — materialise (topics up to a watermark, or exported JSONL), dedupe, split by
                           task, data manifest;
- `trainer.tokenizer`, `trainer.chat_template` — the tiny student's BPE tokenizer and chat template;
- `trainer.student`      — the student factory (tiny from config, `from_pretrained`, LoRA);
- `trainer.sft`, `trainer.dpo` — the two training stages (trl);
- `trainer.environment`  — the `EvalEnvironment` plugin protocol (default `sim.environment:SimEvalEnvironment`);
- `trainer.evaluate`     — `DistillationEvaluator`: the student as an agent vs the teacher, offline replay,
                           confidence calibration;
- `trainer.gate`         — promote or reject;
- `stillflow.registry`   — `ModelRegistry` (shared with the router): versions on disk with sha256 manifests;
- `trainer.job`          — one whole job; `trainer.consumer` — the retrain consumer;
- `trainer.metrics`      — Prometheus metrics; `trainer.cli` — `stillflow trainer | train | models`.

The names below are re-exported lazily (PEP 562), so `import trainer` stays light: torch,
transformers and trl load only when a training or evaluation function runs.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "TrainerSettings",
    "TrainerSection",
    "TrainingData",
    "DataSplit",
    "load_jsonl",
    "read_topics",
    "split_data",
    "make_student",
    "DistillationEvaluator",
    "EvalEnvironment",
    "decide",
    "ModelRegistry",
    "IntegrityError",
    "TrainingJob",
    "RetrainConsumer",
]

_LAZY = {
    "TrainerSettings": "trainer.settings",
    "TrainerSection": "trainer.settings",
    "TrainingData": "trainer.data",
    "DataSplit": "trainer.data",
    "load_jsonl": "trainer.data",
    "read_topics": "trainer.data",
    "split_data": "trainer.data",
    "make_student": "trainer.student",
    "DistillationEvaluator": "trainer.evaluate",
    "EvalEnvironment": "trainer.environment",
    "decide": "trainer.gate",
    "ModelRegistry": "stillflow.registry",
    "IntegrityError": "stillflow.registry",
    "TrainingJob": "trainer.job",
    "RetrainConsumer": "trainer.consumer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
