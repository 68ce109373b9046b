"""`stillflow trainer | train | models`: registered, light, and the registry commands end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stillflow.cli import build_parser, main
from stillflow.registry import ModelRegistry


def _registered(tmp_path: Path, n: int = 2) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "registry", "student")
    for i in range(n):
        src = tmp_path / f"src{i}"
        src.mkdir()
        (src / "model.safetensors").write_bytes(b"w" * (i + 10))
        (src / "config.json").write_text("{}")
        reg.register(src, metrics={"quality_ratio": 0.9 + i / 100, "failure_rate": 0.01}, confidence_threshold=0.7)
    return reg


def test_commands_are_registered() -> None:
    parser = build_parser()
    args = parser.parse_args(["train", "--from-jsonl", "x", "--quick"])
    assert args.func.__name__ == "cmd_train" and args.quick
    assert parser.parse_args(["trainer"]).func.__name__ == "cmd_trainer"
    assert parser.parse_args(["models", "list"]).action == "list"
    with pytest.raises(SystemExit):
        parser.parse_args(["train"])  # a source is required


def test_models_list_show_promote_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _registered(tmp_path)
    reg_args = ["--registry", str(tmp_path / "registry")]
    assert main(["models", "list", *reg_args]) == 0
    out = capsys.readouterr().out
    assert "v0001" in out and "v0002" in out and "candidate" in out

    assert main(["models", "promote", "v0001", "--offline", *reg_args]) == 0
    assert json.loads(capsys.readouterr().out)["event"] == "promoted"
    assert main(["models", "promote", "v0002", "--offline", *reg_args]) == 0
    assert json.loads(capsys.readouterr().out)["previous_version"] == "v0001"
    assert main(["models", "rollback", "--offline", *reg_args]) == 0
    rolled = json.loads(capsys.readouterr().out)
    assert rolled == {"event": "rolled_back", "version": "v0002", "previous_version": "v0001", "published": False}

    assert main(["models", "list", "--json", *reg_args]) == 0
    rows = {r["version"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["v0001"]["live"] and rows["v0002"]["status"] == "rolled_back"
    assert main(["models", "show", "v0001", *reg_args]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["integrity"] == "ok" and shown["manifest"]["files"]


def test_a_tampered_version_is_refused_with_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = _registered(tmp_path, 1)
    (reg.path("v0001") / "model.safetensors").write_bytes(b"evil")
    reg_args = ["--registry", str(tmp_path / "registry")]
    assert main(["models", "promote", "v0001", "--offline", *reg_args]) == 2
    err = capsys.readouterr().err
    assert "refusing student v0001" in err and "model.safetensors" in err and "Traceback" not in err
    assert main(["models", "show", "v0001", *reg_args]) == 1
    assert "sha256" in json.loads(capsys.readouterr().out)["integrity"]


def test_promote_without_a_broker_needs_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _registered(tmp_path, 1)
    monkeypatch.delenv("STILLFLOW_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setattr("stillflow.kafka.resolve_bootstrap", lambda settings: None)
    assert main(["models", "promote", "v0001", "--registry", str(tmp_path / "registry")]) == 2
    assert "--offline" in capsys.readouterr().err
    assert ModelRegistry(tmp_path / "registry", "student").live() is None


def test_train_on_a_missing_export_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--from-jsonl", str(tmp_path / "nope"), "--no-publish",
                 "--registry", str(tmp_path / "registry")]) == 2
    assert "sft.jsonl" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.integration
def test_train_from_topics_publishes_run_and_version_events(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio
    import uuid

    from stillflow.contracts import ModelVersionEvent, TrainingRunEvent, decode, encode
    from stillflow.kafka import ensure_topics, make_producer, with_bootstrap
    from stillflow.settings import KafkaSettings, StillflowSettings, TopicNames
    from tests.helpers import read_topics
    from tests.trainer_data import generate_sim_data

    topics = TopicNames().with_prefix(f"t{uuid.uuid4().hex[:10]}.")
    settings = with_bootstrap(StillflowSettings(kafka=KafkaSettings(), topics=topics), broker)
    examples, pairs, _ = generate_sim_data(n_tasks=40, runs_per_task=2, seed=9)

    async def setup() -> None:
        await ensure_topics(settings)
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            for e in examples:
                await producer.send_and_wait(topics.dataset_sft, encode(e), key=e.example_id.encode())
            for p in pairs:
                await producer.send_and_wait(topics.dataset_dpo, encode(p), key=p.pair_id.encode())
        finally:
            await producer.stop()

    asyncio.run(setup())
    for role, name in topics.model_dump().items():
        monkeypatch.setenv(f"STILLFLOW_TOPICS__{role.upper()}", name)
    tiny = {"STUDENT__HIDDEN_SIZE": "32", "STUDENT__NUM_LAYERS": "1", "STUDENT__NUM_HEADS": "2",
            "STUDENT__INTERMEDIATE_SIZE": "64", "STUDENT__VOCAB_SIZE": "400", "STUDENT__COPY_WARMUP_STEPS": "2",
            "SFT__MAX_STEPS": "2", "SFT__BATCH_SIZE": "4", "DPO__MAX_STEPS": "1", "DPO__BATCH_SIZE": "2",
            "DPO__MIN_PAIRS": "1", "EVAL__TASKS": "2", "EVAL__OFFLINE_EXAMPLES": "1", "EVAL__MAX_TURNS": "1",
            "EVAL__MAX_NEW_TOKENS": "8", "GATE__MIN_EVAL_TASKS": "1"}
    for k, v in tiny.items():
        monkeypatch.setenv(f"STILLFLOW_TRAINER__{k}", v)
    code = main(["train", "--from-topics", "--bootstrap", broker, "--registry", str(tmp_path / "reg"),
                 "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["version"] == "v0001" and summary["status"] in ("promoted", "rejected")
    records = asyncio.run(read_topics(settings, [topics.training_runs, topics.model_versions], expected=5,
                                      timeout=20))
    runs = [decode(r.value, TrainingRunEvent).status for r in records if r.topic == topics.training_runs]
    versions = [decode(r.value, ModelVersionEvent).status for r in records if r.topic == topics.model_versions]
    assert runs == ["requested", "started", "finished"]
    assert versions == ["candidate", summary["status"]]
    manifest = json.loads((tmp_path / "reg" / "student" / "v0001" / "manifest.json").read_text())
    assert manifest["data_watermark"]["offsets"][f"{topics.dataset_sft}:0"] >= 0
    assert manifest["data"]["counts"]["train_sft"] + manifest["data"]["counts"]["heldout_sft"] == len(examples)


def test_training_precision_follows_the_hardware_unless_forced(monkeypatch) -> None:
    import trainer.sft as sft

    monkeypatch.setattr(sft, "cpu_bf16_supported", lambda: True)
    assert sft.training_device_args("cpu") == {"bf16": True, "fp16": False, "use_cpu": True}
    assert sft.training_device_args("cpu", "fp32")["bf16"] is False
    monkeypatch.setattr(sft, "cpu_bf16_supported", lambda: False)
    assert sft.training_device_args("cpu")["bf16"] is False  # a CPU without bf16: fp32
    assert sft.training_device_args("cpu", "bf16")["bf16"] is True
    assert sft.training_device_args("mps") == {"bf16": False, "fp16": False, "use_cpu": False}


def test_sft_steps_apply_over_the_profile(capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.cli import _settings
    from trainer.settings import TrainerSection

    quick = TrainerSection().quick()
    args = build_parser().parse_args(["train", "--from-jsonl", "x", "--quick", "--sft-steps", "1600"])
    section = _settings(args).trainer
    assert section.sft.max_steps == 1600
    assert section.student.hidden_size == quick.student.hidden_size  # the rest of the quick profile stays
    assert _settings(build_parser().parse_args(["train", "--from-jsonl", "x", "--quick"])).trainer.sft.max_steps == (
        quick.sft.max_steps)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["trainer", "--sft-steps", "0"])
    assert "must be > 0" in capsys.readouterr().err


def test_a_pretrained_student_gets_its_own_training_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.cli import _settings

    def section(*argv: str) -> object:
        return _settings(build_parser().parse_args(["train", "--from-jsonl", "x", *argv])).trainer

    lora = section("--base", "gemma3-270m", "--lora", "--quick")
    assert lora.student.base == "gemma3-270m" and lora.student.lora.enabled and lora.student.pretrained is None
    assert lora.sft.learning_rate == 1e-3 and lora.sft.augment_copies == 0 and lora.sft.min_steps == 0
    assert 0 < lora.sft.max_steps < 800  # the quick profile's step count is for tiny students
    full = section("--pretrained", "/models/x")
    assert full.sft.learning_rate == 2e-5 and full.sft.max_steps == -1 and full.student.base is None
    assert section("--base", "gemma3-270m", "--sft-steps", "7").sft.max_steps == 7  # flags still win
    assert section().sft.learning_rate == 2e-3  # the tiny student keeps its own
    # the same from the environment (the retrain consumer), an explicit setting kept
    monkeypatch.setenv("STILLFLOW_TRAINER__STUDENT__BASE", "gemma3-270m")
    monkeypatch.setenv("STILLFLOW_TRAINER__STUDENT__LORA__ENABLED", "true")
    monkeypatch.setenv("STILLFLOW_TRAINER__SFT__BATCH_SIZE", "2")
    env = _settings(build_parser().parse_args(["trainer", "--quick"])).trainer
    assert env.sft.learning_rate == 1e-3 and env.sft.batch_size == 2 and env.student.base == "gemma3-270m"
    monkeypatch.setenv("STILLFLOW_TRAINER__SFT__LEARNING_RATE", "1e-4")
    assert _settings(build_parser().parse_args(["trainer"])).trainer.sft.learning_rate == 1e-4
    assert main(["train", "--from-jsonl", "x", "--base", "a", "--pretrained", "b"]) != 0


def test_the_gate_scope_is_a_flag() -> None:
    from trainer.cli import _settings

    args = build_parser().parse_args(["train", "--from-jsonl", "x", "--quick", "--gate-scope", "routed"])
    assert _settings(args).trainer.gate.scope == "routed"
    assert _settings(build_parser().parse_args(["train", "--from-jsonl", "x"])).trainer.gate.scope == "all"
