"""LoRA versions in the router, on a tiny base (seconds, no download): two versions share one loaded base,
each generates with its own adapter whatever ran before it, and a base that changed on disk is refused."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.router_student import CONVERSATIONS, OPENING, TOOLS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stillflow.bases import describe_base
    from trainer.settings import StudentSection
    from trainer.student import tiny_student

    student = tiny_student(CONVERSATIONS * 4, StudentSection(hidden_size=64, num_layers=1, num_heads=2,
                                                             intermediate_size=128, vocab_size=320, value_slots=0))
    out = tmp_path_factory.mktemp("bases") / "tinybase"
    student.model.save_pretrained(str(out), safe_serialization=True)
    student.tokenizer.save_pretrained(str(out))
    (out / "LICENSE").write_text("terms of the tiny base\n")
    describe_base(out, "tinybase", {"from": "config"})
    return out


def _lora_version(base_dir: Path, out: Path, seed: int | None) -> Path:
    """A LoRA student on the base, saved as the registry stores it; `seed`: random adapter weights (None: the
    untrained adapter, which leaves the base as it is)."""
    import torch

    from trainer.settings import LoraSection, StudentSection
    from trainer.sft import save_student
    from trainer.student import pretrained_student

    student = pretrained_student(str(base_dir), StudentSection(lora=LoraSection(enabled=True, r=4, alpha=8)))
    assert student.base is not None and student.fmt.end_of_turn == "<|im_end|>"
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in student.model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return save_student(student.model, student.tokenizer, out, fmt=student.fmt, base=student.base,
                        licences_from=student.home)


def _registry(tmp_path: Path, base_dir: Path, seeds: list[int | None]) -> Any:
    from stillflow.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "registry", "student")
    for i, seed in enumerate(seeds):
        reg.register(_lora_version(base_dir, tmp_path / f"v{i}", seed), confidence_threshold=0.0)
    return reg


def test_versions_share_one_base_and_each_generates_with_its_own_adapter(tmp_path: Path, base_dir: Path) -> None:
    from router.runtime import load_version
    from stillflow.bases import REF_FILE

    reg = _registry(tmp_path, base_dir, [None, 1, 2])
    files = set(reg.manifest("v0001")["files"])
    assert {"adapter_model.safetensors", REF_FILE, "LICENSE"} <= files and "model.safetensors" not in files
    plain, one, two = (load_version(reg, v) for v in ("v0001", "v0002", "v0003"))
    assert plain.shared is one.shared is two.shared  # the base is loaded once
    assert plain.base == "tinybase" and len(plain.shared.adapters) >= 3

    def turn(model: Any) -> tuple[str, tuple[float, ...]]:
        t = model.generate(OPENING, TOOLS, 12)
        return t.text, t.logprobs

    alone = {m.version: turn(m) for m in (plain, one, two)}
    assert alone["v0002"] != alone["v0001"] != alone["v0003"] != alone["v0002"]
    for m in (two, plain, one, plain, two):  # whatever ran before, the same turn
        assert turn(m) == alone[m.version]


def test_a_changed_base_is_refused_and_the_loaded_versions_keep_serving(tmp_path: Path, base_dir: Path) -> None:
    from router.runtime import LoadRefused, load_version

    reg = _registry(tmp_path, base_dir, [1, 2])
    live = load_version(reg, "v0001")
    before = live.generate(OPENING, TOOLS, 8).text
    moved = base_dir.with_name("tinybase-moved")
    shutil.copytree(base_dir, moved)
    try:
        (base_dir / "config.json").write_text((base_dir / "config.json").read_text() + " ")
        with pytest.raises(LoadRefused) as refused:
            load_version(reg, "v0002")
        assert refused.value.kind == "base_mismatch" and "changed since it was converted" in str(refused.value)
        assert live.generate(OPENING, TOOLS, 8).text == before
    finally:
        shutil.rmtree(base_dir)
        moved.rename(base_dir)
