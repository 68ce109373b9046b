"""The student factory: what gets trained.

Exports
- `Student` (model + tokenizer + where they came from + its value-slot codec, `stillflow.slots`);
- `tiny_student(conversations, section, seed=0)`: a small Llama- or Qwen2-shaped model built from the
  settings' dims, with a byte-level BPE tokenizer trained on `conversations` (`trainer.tokenizer`);
- `pretrained_student(path_or_id, section)`: `from_pretrained` for a real model and its tokenizer (local
  files only: nothing is downloaded); the tokenizer's own chat template is kept when it has one and
  gets `trainer.chat_template` otherwise;
- `make_student(conversations, section)`: one of the two, by `section.pretrained`;
- `apply_lora(model, lora)` (peft) and `merge_lora(model)`;
- `pick_device(setting)`: "auto" → cuda, else mps, else cpu;
- `load_student(path, device)`: a saved student (a registry version or a checkpoint) for inference.

Heavy imports (torch, transformers, peft) happen inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stillflow.chatformat import IM_END
from stillflow.slots import SlotCodec, load_format
from trainer.chat_template import build_chat_template
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
    "count_parameters",
]


@dataclass
class Student:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # "tiny:<arch>" or the pretrained path/id
    lora: bool = False
    codec: SlotCodec | None = None  # value slots (tiny students): conversations are encoded with it

    def encode_rows(self, rows: list[dict[str, Any]], kind: str = "sft") -> list[dict[str, Any]]:
        """Training rows as this student reads them (unchanged without value slots)."""
        if self.codec is None:
            return rows
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
            "value_slots": self.codec.n if self.codec else 0,
            "slot_cells": bool(self.codec and self.codec.cells),
        }


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


def pretrained_student(path_or_id: str, section: StudentSection | None = None) -> Student:
    """A real model and its tokenizer, from a local directory or the local hub cache (never downloads)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = section or StudentSection()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path_or_id, local_files_only=True, use_safetensors=True)
    except OSError as exc:
        raise FileNotFoundError(
            f"cannot load {path_or_id!r} from local files (nothing is downloaded): {exc}"
        ) from None
    if not tokenizer.chat_template:
        tokenizer.chat_template = build_chat_template(tool_descriptions=s.tool_descriptions)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    student = Student(model, tokenizer, path_or_id)
    if s.lora.enabled:
        student.model = apply_lora(model, s.lora)
        student.lora = True
    return student


def make_student(
    conversations: Iterable[dict[str, Any]], section: StudentSection | None = None, *, seed: int = 0
) -> Student:
    s = section or StudentSection()
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


def load_student(path: str | Path, device: str = "cpu") -> Student:
    """A saved student (safetensors + tokenizer) ready for generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    model.to(device)
    model.eval()
    return Student(model, tokenizer, str(path), codec=load_format(path))
