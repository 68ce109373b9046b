"""A tiny student that has learnt two turns by heart, for the router's tests and bench (a few seconds on CPU).

`train_memorised_student(out_dir)` writes a saved student (safetensors + tokenizer with the chat
template) that, for `OPENING` with `TOOLS`, calls `lookup(key="alpha")`, and after the tool result
answers `ANSWER`, with a confidence near 1. `registry_with(root, source, n)` registers `n` copies as
versions v0001.. of model "student" (v0001 promoted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stillflow.registry import ModelRegistry

SYSTEM = "You look things up with tools."
QUESTION = "What is the code for alpha?"
ANSWER = "The code is 42."
TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "look a key up",
    "parameters": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}}}]
OPENING = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
CALL = {"role": "assistant", "content": "",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "lookup", "arguments": json.dumps({"key": "alpha"})}}]}
AFTER_CALL = [*OPENING, CALL, {"role": "tool", "tool_call_id": "call_1", "content": "alpha=42"}]
CONVERSATIONS = [
    {"messages": [*OPENING, CALL], "tools": TOOLS},
    {"messages": [*AFTER_CALL, {"role": "assistant", "content": ANSWER}], "tools": TOOLS},
]


def train_memorised_student(out_dir: Path, *, steps: int = 150, seed: int = 0, slots: bool = False) -> Path:
    """`slots`: trained on value-slot-encoded conversations (stillflow.slots) and saved with the format
    file, so the answer's "42" is learnt as "copy the first value of the tool result"."""
    import torch

    from stillflow.slots import save_format
    from trainer.settings import StudentSection
    from trainer.sft import save_student
    from trainer.student import tiny_student

    section = StudentSection(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, vocab_size=320,
                             value_slots=4 if slots else 0)
    student = tiny_student(CONVERSATIONS * 4, section, seed=seed)
    tok, model = student.tokenizer, student.model
    rows = []
    for conv in CONVERSATIONS:
        if student.codec is not None:
            conv = {**conv, "messages": student.codec.encode(conv["messages"])[0]}
        enc = tok.apply_chat_template(conv["messages"], tools=conv["tools"], tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        ids = torch.tensor(enc["input_ids"])
        mask = torch.tensor(enc["assistant_masks"], dtype=torch.bool)
        labels = torch.where(mask, ids, torch.full_like(ids, -100))
        rows.append((ids, labels))
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss: Any = 0
        for ids, labels in rows:
            loss = loss + model(input_ids=ids[None], labels=labels[None]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = save_student(model, tok, out_dir)
    save_format(path, student.codec)
    return path


_TRAINED: dict[str, Path] = {}


def memorised_student() -> Path:
    """`train_memorised_student` once per test process (a temporary directory)."""
    if "path" not in _TRAINED:
        import atexit
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="stillflow-router-student-"))
        atexit.register(shutil.rmtree, tmp, True)
        _TRAINED["path"] = train_memorised_student(tmp / "student")
    return _TRAINED["path"]


def registry_with(root: Path, source: Path, n: int = 2, *, threshold: float | None = 0.5) -> ModelRegistry:
    reg = ModelRegistry(root, "student")
    for _ in range(n):
        reg.register(source, confidence_threshold=threshold, metrics={"quality_ratio": 0.95})
    reg.promote("v0001")
    return reg
