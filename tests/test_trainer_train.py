"""Training: a tiny SFT then DPO run logs its losses and changes the weights; a saved student loads back
with `from_pretrained`; the whole job (data → SFT → DPO → evaluation → gate → registry) end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")

from tests.trainer_data import generate_sim_data, write_export
from trainer.data import dpo_rows, from_events, sft_rows, split_data
from trainer.settings import DPOSection, SFTSection, StudentSection, TrainerSection, TrainerSettings

pytestmark = pytest.mark.slow

TINY = StudentSection(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=400,
                      copy_warmup_steps=3)


def _data(n_tasks: int = 40):
    examples, pairs, _ = generate_sim_data(n_tasks=n_tasks, runs_per_task=3, seed=2)
    return from_events(examples, pairs)


def _snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sft_then_dpo_logs_losses_and_changes_parameters(tmp_path: Path) -> None:
    import torch

    from trainer.dpo import run_dpo
    from trainer.sft import run_sft
    from trainer.student import tiny_student

    data = _data()
    split = split_data(data, 0.1)
    assert split.train_pairs, "the sim data should yield preference pairs"
    student = tiny_student([{"messages": r.messages, "tools": r.tools} for r in split.train_sft], TINY)
    before = _snapshot(student.model)
    sft = run_sft(student, sft_rows(split.train_sft), SFTSection(max_steps=6, batch_size=4, logging_steps=2),
                  tmp_path / "sft", progress=False)
    assert sft.steps == 6 and len(sft.losses) >= 3 and all(e["loss"] > 0 for e in sft.losses)
    after_sft = _snapshot(student.model)
    assert any(not torch.equal(before[k], after_sft[k]) for k in before)
    assert (tmp_path / "sft" / "model.safetensors").exists() and (tmp_path / "sft" / "tokenizer.json").exists()

    dpo = run_dpo(student, tmp_path / "sft", dpo_rows(split.train_pairs),
                  DPOSection(max_steps=4, batch_size=2, logging_steps=1, min_pairs=1), tmp_path / "dpo", progress=False)
    assert dpo.skipped is None and dpo.steps == 4 and dpo.losses
    assert any("rewards/chosen" in k or "rewards/margins" in k for k in dpo.losses[-1])
    after_dpo = _snapshot(student.model)
    assert any(not torch.equal(after_sft[k], after_dpo[k]) for k in after_sft)
    # the reference on disk is untouched
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft"))
    assert all(torch.equal(ref.state_dict()[k], after_sft[k]) for k in ref.state_dict())


def test_from_pretrained_on_a_saved_directory_and_lora(tmp_path: Path) -> None:
    from trainer.evaluate import StudentRuntime
    from trainer.sft import save_student
    from trainer.student import pretrained_student, tiny_student

    data = _data(10)
    student = tiny_student([{"messages": r.messages, "tools": r.tools} for r in data.sft], TINY)
    save_student(student.model, student.tokenizer, tmp_path / "saved")
    loaded = pretrained_student(str(tmp_path / "saved"))
    assert loaded.source == str(tmp_path / "saved") and loaded.tokenizer.chat_template
    gen = StudentRuntime(loaded.model, loaded.tokenizer).generate(data.sft[0].messages[:2], data.sft[0].tools, 5)
    assert gen.completion_tokens <= 5 and all(lp <= 0 for lp in gen.logprobs)
    with_lora = pretrained_student(str(tmp_path / "saved"), TINY.model_copy(update={
        "lora": TINY.lora.model_copy(update={"enabled": True, "r": 4, "alpha": 8})}))
    assert with_lora.lora
    trainable = sum(p.numel() for p in with_lora.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in with_lora.model.parameters())
    assert 0 < trainable < total
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        pretrained_student(str(tmp_path / "no-such-model"))


def test_whole_job_registers_a_version_with_every_figure(tmp_path: Path) -> None:
    from stillflow.registry import ModelRegistry
    from trainer.data import load_jsonl
    from trainer.job import TrainingJob

    examples, pairs, _ = generate_sim_data(n_tasks=60, runs_per_task=2, seed=4)
    write_export(tmp_path / "export", examples, pairs)
    section = TrainerSection(
        registry_dir=tmp_path / "registry",
        student=TINY,
        sft=SFTSection(max_steps=4, batch_size=4),
        dpo=DPOSection(max_steps=2, batch_size=2, min_pairs=1),
        eval=TrainerSection().eval.model_copy(update={"tasks": 4, "offline_examples": 2, "max_turns": 2,
                                                      "max_new_tokens": 24}),
        gate=TrainerSection().gate.model_copy(update={"min_eval_tasks": 2}),
    )
    settings = TrainerSettings(trainer=section)
    result = TrainingJob(settings, progress=False).run(load_jsonl(tmp_path / "export"), run_id="run-test")
    assert result.version == "v0001" and result.status == "rejected"  # a 4-step student is not good enough
    assert [e.status for e in result.events] == ["candidate", "rejected"] and result.events[1].reasons
    reg = ModelRegistry(tmp_path / "registry", "student")
    info = reg.open("v0001")  # verified against the manifest
    assert {"model.safetensors", "config.json", "tokenizer.json", "eval_report.json", "data_manifest.json",
            "training.json"} <= set(info.manifest["files"])
    report = json.loads((info.path / "eval_report.json").read_text())
    for key in ("quality_ratio", "failure_rate", "student", "teacher", "by_family", "worst_failures", "offline",
                "confidence", "gate"):
        assert key in report
    assert set(report["student"]["failures"]) == {"wrong_tool", "unsafe_action", "crash", "wrong_answer"}
    assert report["student"]["tokens_per_task"] > 0 and report["student"]["latency_s_per_task"]["mean"] > 0
    assert report["offline"]["turns"] > 0
    assert info.manifest["confidence_threshold"] == report["confidence"]["threshold"]
    assert info.manifest["data"]["counts"]["train_sft"] > 0
    training = json.loads((info.path / "training.json").read_text())
    assert training["sft"]["losses"] and training["dpo"]["steps"] == 2
