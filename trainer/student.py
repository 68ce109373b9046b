"""The student factory: what gets trained.

Exports
- `Student` (model + tokenizer + where they came from + its value-slot codec, `stillflow.slots`);
- `tiny_student(conversations, section, seed=0)`: a small Llama- or Qwen2-shaped model built from the
  settings' dims, with a byte-level BPE tokenizer trained on `conversations` (`trainer.tokenizer`);
- `pretrained_student(path_or_id, section)`: `from_pretrained` for a real model and its tokenizer (local
  files only: nothing is downloaded); its turn format is the directory's `stillflow_turns.json` (a named
  base has one), else its own template when that writes Hermes tool calls, else stillflow's
  (`trainer.chat_template.choose_template`); with LoRA the base's sha256 is taken for the registry;
- `make_student(conversations, section)`: tiny, a named base (`section.base`, `trainer.bases`) or a
  pretrained directory (`section.pretrained`);
- `apply_lora(model, lora)` (peft) and `merge_lora(model)`;
- `pick_device(setting)`: "auto" → cuda, else mps, else cpu;
- `load_student(path, device)`: a saved student (a registry version or a checkpoint) for inference;
- `resume_student(path, device)` and `warm_start_mismatch(recorded, section)`: a registered version to train
  on further (the trainer's `warm_start`), and why one cannot be.

Heavy imports (torch, transformers, peft) happen inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stillflow.chatformat import CHATML, IM_END, IM_START, TURN_FORMAT_FILE, TurnFormat, load_turn_format
from stillflow.slots import SlotCodec, load_format
from trainer.settings import LoraSection, StudentSection

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "Student",
    "tiny_student",
    "pretrained_student",
    "make_student",
    "apply_lora",
    "merge_lora",
    "pick_device",
    "load_student",
    "resume_student",
    "warm_start_mismatch",
    "count_parameters",
]


@dataclass
class Student:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # "tiny:<arch>" or the pretrained path/id
    lora: bool = False
    codec: SlotCodec | None = None  # value slots (tiny students): conversations are encoded with it
    fmt: TurnFormat = CHATML  # how its turns end and mark tool calls (saved with every checkpoint)
    base: dict[str, Any] | None = None  # LoRA on a pretrained base: stillflow.bases.base_ref (name, sha256, path)
    home: Path | None = None  # a pretrained student's directory: its licence files travel into every version

    def encode_rows(self, rows: list[dict[str, Any]], kind: str = "sft") -> list[dict[str, Any]]:
        """Training rows as this student reads them (unchanged without value slots)."""
        if self.codec is None:
            return rows if self.fmt.template != "own" else [_object_arguments(r) for r in rows]
        enc = self.codec.encode_sft_row if kind == "sft" else self.codec.encode_dpo_row
        return [enc(r) for r in rows]

    def describe(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "source": self.source,
            "arch": getattr(cfg, "model_type", "?"),
            "parameters": count_parameters(self.model),
            "hidden_size": getattr(cfg, "hidden_size", None),
            "num_layers": getattr(cfg, "num_hidden_layers", None),
            "vocab_size": len(self.tokenizer),
            "lora": self.lora,
            "turn_format": self.fmt.template,
            "base": {k: v for k, v in self.base.items() if k in ("name", "sha256")} if self.base else None,
            "value_slots": self.codec.n if self.codec else 0,
            "slot_cells": bool(self.codec and self.codec.cells),
        }


def _object_arguments(row: dict[str, Any]) -> dict[str, Any]:
    """Tool-call arguments as objects: a model's own template (Qwen's) renders JSON text as a quoted
    string, objects as the JSON it should write."""
    import contextlib
    import json

    def fix(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for m in messages:
            if m.get("tool_calls"):
                calls = []
                for tc in m["tool_calls"]:
                    fn = dict(tc.get("function") or {})
                    if isinstance(fn.get("arguments"), str):
                        with contextlib.suppress(json.JSONDecodeError):
                            fn["arguments"] = json.loads(fn["arguments"])
                    calls.append({**tc, "function": fn})
                m = {**m, "tool_calls": calls}
            out.append(m)
        return out

    return {k: fix(v) if k in ("messages", "prompt", "chosen", "rejected") and isinstance(v, list) else v
            for k, v in row.items()}


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def pick_device(setting: str = "auto") -> str:
    import torch

    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def tiny_student(
    conversations: Iterable[dict[str, Any]],
    section: StudentSection | None = None,
    *,
    seed: int = 0,
    extra_texts: Iterable[str] = (),
) -> Student:
    """A small model from config with a tokenizer trained on `conversations` (trl rows)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from trainer.tokenizer import train_tokenizer

    s = section or StudentSection()
    codec = SlotCodec(s.value_slots, typed=s.typed_slots, cells=s.slot_cells) if s.value_slots else None
    if codec is not None:  # the tokenizer learns the text the model will read
        conversations = ({**c, "messages": codec.encode(c.get("messages") or [])[0]} for c in conversations)
    tokenizer = train_tokenizer(
        conversations, vocab_size=s.vocab_size, tool_descriptions=s.tool_descriptions, extra_texts=extra_texts,
        pretokenize=s.pretokenize, extra_tokens=codec.tokens if codec else (),
    )
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_kv_heads or s.num_heads,
        max_position_embeddings=s.max_position_embeddings,
        rope_theta=s.rope_theta,
        tie_word_embeddings=s.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        bos_token_id=None,
        use_cache=True,
    )
    torch.manual_seed(seed)
    if s.arch == "qwen2":
        model: Any = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, attention_bias=False, mlp_bias=False))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return Student(model, tokenizer, f"tiny:{s.arch}", codec=codec)


def pretrained_student(path_or_id: str, section: StudentSection | None = None, *,
                       base_name: str | None = None) -> Student:
    """A real model and its tokenizer, from a local directory or the local hub cache (never downloads)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.chat_template import choose_template

    s = section or StudentSection()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path_or_id, local_files_only=True, use_safetensors=True)
    except OSError as exc:
        raise FileNotFoundError(
            f"cannot load {path_or_id!r} from local files (nothing is downloaded): {exc}"
        ) from None
    local = Path(path_or_id)
    if (local / TURN_FORMAT_FILE).is_file():
        fmt = load_turn_format(local)  # a named base, or a stillflow checkpoint: its template is stillflow's
    else:
        fmt = choose_template(tokenizer, gemma=getattr(model.config, "model_type", "").startswith("gemma"),
                              tool_descriptions=True)
    if fmt == CHATML and tokenizer.convert_tokens_to_ids(IM_END) in (None, tokenizer.unk_token_id):
        if s.lora.enabled:
            raise ValueError(f"{path_or_id}: its chat template does not write Hermes tool calls and its vocabulary has "
                             f"no ChatML markers; stillflow's template would add tokens that a LoRA adapter cannot "
                             f"carry. Use full fine-tuning (no --lora), or a base whose template writes "
                             f"<tool_call> (Qwen 2.5/3, Hermes) or a Gemma base")
        tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.response_template = fmt.response_template()
    stop = fmt.stop_ids(tokenizer)
    model.generation_config.eos_token_id = stop
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    student = Student(model, tokenizer, base_name or path_or_id, fmt=fmt, home=local if local.is_dir() else None)
    if s.lora.enabled:
        from stillflow.bases import base_ref, read_base, verify_base

        if not local.is_dir():
            raise ValueError(f"LoRA needs a base in a local directory (its sha256 goes into every version); "
                             f"{path_or_id!r} is not one")
        doc = read_base(local)
        digest = verify_base(local, expect=doc["sha256"] if doc else None)
        student.base = base_ref(local, name=base_name or (doc or {}).get("name") or local.name, digest=digest)
        student.model = apply_lora(model, s.lora)
        student.lora = True
    return student


def make_student(
    conversations: Iterable[dict[str, Any]], section: StudentSection | None = None, *, seed: int = 0,
    progress: Any = None,
) -> Student:
    s = section or StudentSection()
    if s.base:
        from trainer.bases import install_base

        directory = install_base(s.base, progress=progress or print)
        return pretrained_student(str(directory), s, base_name=s.base)
    if s.pretrained:
        return pretrained_student(s.pretrained, s)
    student = tiny_student(conversations, s, seed=seed)
    if s.lora.enabled:  # odd for a model trained from scratch, but allowed
        student.model = apply_lora(student.model, s.lora)
        student.lora = True
    return student


def apply_lora(model: Any, lora: LoraSection) -> Any:
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in lora.target_modules if t in present]
    if not targets:
        raise ValueError(f"none of the LoRA target modules {list(lora.target_modules)} exist in this model")
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def merge_lora(model: Any) -> Any:
    """The plain model with LoRA weights merged in (a no-op for a model without adapters)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def warm_start_mismatch(recorded: dict[str, Any] | None, section: StudentSection) -> str | None:
    """Why a version whose student is `recorded` (its manifest's `student`, `Student.describe()`) cannot be
    trained on as the student `section` describes; None when it can."""
    if not recorded:
        return "its manifest does not describe its student"
    base = (recorded.get("base") or {}).get("name")
    want_lora = bool(section.lora.enabled)
    if section.base or section.pretrained:
        want = section.base or section.pretrained
        have = base or recorded.get("source")
        if have != want:
            return f"it was trained from {have!r}, the settings name {want!r}"
        if bool(recorded.get("lora")) != want_lora:
            return f"it was trained {'with' if recorded.get('lora') else 'without'} LoRA, the settings say otherwise"
        return None
    if base or not str(recorded.get("source", "")).startswith("tiny:"):
        return f"it was trained from {base or recorded.get('source')!r}, the settings describe a tiny student"
    checks = {"arch": section.arch, "hidden_size": section.hidden_size, "num_layers": section.num_layers,
              "value_slots": section.value_slots, "lora": want_lora}
    for key, want_value in checks.items():
        if recorded.get(key) != want_value:
            return f"its {key} is {recorded.get(key)!r}, the settings' {want_value!r}"
    return None


def resume_student(path: str | Path, device: str = "cpu", *, source: str | None = None) -> Student:
    """A registered version as a student to train on (warm start): its weights, tokenizer, value slots and
    turn format; a LoRA version keeps its base and trains its own adapter further. `source`: what the
    version's manifest says it was trained from (`describe()["source"]`)."""
    student = _load_saved(Path(path), device, trainable=True)
    if student.base is not None:
        student.source = source or str(student.base["name"])
    else:
        student.source = source or f"tiny:{getattr(student.model.config, 'model_type', 'llama')}"
    if not student.source.startswith("tiny:") and getattr(student.tokenizer, "response_template", None) is None:
        student.tokenizer.response_template = student.fmt.response_template()  # as pretrained_student sets it
    return student


def load_student(path: str | Path, device: str = "cpu") -> Student:
    """A saved student (safetensors + tokenizer, or a LoRA adapter and the base it names) for inference."""
    return _load_saved(Path(path), device, trainable=False)


def _load_saved(path: Path, device: str, *, trainable: bool) -> Student:
    """A saved student's model (a LoRA version: on the base it names, verified), tokenizer, value slots and
    turn format; in train mode (`trainable`: a LoRA adapter's weights trainable) or eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stillflow.bases import read_ref, resolve_base

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    ref = read_ref(path)
    home: Path | None = None
    if ref is not None:
        from peft import PeftModel

        home = resolve_base(ref)
        base = AutoModelForCausalLM.from_pretrained(str(home), local_files_only=True, use_safetensors=True)
        model = PeftModel.from_pretrained(base, str(path), is_trainable=trainable)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    model.to(device)
    model.train(trainable)
    return Student(model, tokenizer, str(path), lora=ref is not None, codec=load_format(path),
                   fmt=load_turn_format(path), base=ref, home=home if trainable else None)
