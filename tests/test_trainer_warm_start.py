"""Warm start: a run trains the latest (or live) version further instead of a new student, and a version
whose student is not the settings' is never used (the run starts afresh and says why)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.settings import DPOSection, LoraSection, SFTSection, StudentSection, TrainerSection, TrainerSettings

TINY = StudentSection(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=400,
                      copy_warmup_steps=3)


def _recorded(**over):
    out = {"source": "tiny:llama", "arch": "llama", "hidden_size": 32, "num_layers": 1, "lora": False,
           "base": None, "value_slots": TINY.value_slots}
    return {**out, **over}


def test_a_tiny_version_matches_only_the_same_tiny_student() -> None:
    from trainer.student import warm_start_mismatch

    assert warm_start_mismatch(_recorded(), TINY) is None
    assert "hidden_size is 64" in warm_start_mismatch(_recorded(hidden_size=64), TINY)
    assert "value_slots" in warm_start_mismatch(_recorded(value_slots=0), TINY)
    assert "does not describe" in warm_start_mismatch(None, TINY)
    assert "tiny student" in warm_start_mismatch(_recorded(source="gemma3-270m", base={"name": "gemma3-270m"}), TINY)


def test_a_lora_version_matches_its_base_with_lora_only() -> None:
    from trainer.student import warm_start_mismatch

    gemma = StudentSection(base="gemma3-270m", lora=LoraSection(enabled=True))
    lora_v = {"source": "gemma3-270m", "lora": True, "base": {"name": "gemma3-270m", "sha256": "a" * 64}}
    assert warm_start_mismatch(lora_v, gemma) is None
    assert "trained from 'tiny:llama'" in warm_start_mismatch(_recorded(), gemma)
    assert "LoRA" in warm_start_mismatch({**lora_v, "lora": False}, gemma)
    other = StudentSection(base="qwen-0.5b", lora=LoraSection(enabled=True))
    assert "'qwen-0.5b'" in warm_start_mismatch(lora_v, other)


@pytest.mark.slow
def test_the_second_run_trains_the_first_version_further(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from stillflow.registry import ModelRegistry
    from tests.trainer_data import generate_sim_data, write_export
    from trainer.data import load_jsonl
    from trainer.job import TrainingJob

    def section(student: StudentSection) -> TrainerSection:
        return TrainerSection(
            registry_dir=tmp_path / "registry", student=student, warm_start="latest", warm_start_sft_steps=3,
            sft=SFTSection(max_steps=5, batch_size=4), dpo=DPOSection(max_steps=1, batch_size=2, min_pairs=1),
            eval=TrainerSection().eval.model_copy(update={"tasks": 2, "offline_examples": 1, "max_turns": 1,
                                                          "max_new_tokens": 8}),
            gate=TrainerSection().gate.model_copy(update={"min_eval_tasks": 1}))

    def run(seed: int, student: StudentSection, lines: list[str]):
        examples, pairs, _ = generate_sim_data(n_tasks=30, runs_per_task=2, seed=seed)
        write_export(tmp_path / f"export{seed}", examples, pairs)
        job = TrainingJob(TrainerSettings(trainer=section(student)), progress=False, echo=lines.append)
        return job.run(load_jsonl(tmp_path / f"export{seed}"), run_id=f"run-{seed}")

    lines: list[str] = []
    first = run(1, TINY, lines)
    assert any("warm start (latest): no version yet" in line for line in lines)
    second = run(2, TINY, lines)  # other data: a new student would train another tokenizer
    reg = ModelRegistry(tmp_path / "registry", "student")
    m1, m2 = reg.manifest(first.version), reg.manifest(second.version)
    assert m2["warm_start_from"] == first.version and "warm_start_from" not in m1
    assert m2["files"]["tokenizer.json"] == m1["files"]["tokenizer.json"]  # the first version's tokenizer
    training = json.loads((reg.path(second.version) / "training.json").read_text())
    assert training["warm_start"] == {"from": first.version, "sft_steps": 3} and training["sft"]["steps"] == 3
    assert "warm start" in training["copy_warmup"]["skipped"]

    wider = TINY.model_copy(update={"hidden_size": 48, "num_heads": 2})
    third = run(3, wider, lines)  # the settings changed the student: never trained on as another
    m3 = reg.manifest(third.version)
    assert "warm_start_from" not in m3
    assert any(f"warm start from {second.version} skipped: its hidden_size is 32, the settings' 48" in line
               for line in lines)
    assert json.loads((reg.path(third.version) / "training.json").read_text())["sft"]["steps"] == 5
