"""Settings of the trainer: `TrainerSettings` = the shared `StillflowSettings` + a `trainer` section.

Everything is read from the environment (`STILLFLOW_TRAINER__...`, nested with `__`), e.g.
`STILLFLOW_TRAINER__REGISTRY_DIR=/models`, `STILLFLOW_TRAINER__RETRAIN_THRESHOLD=2000`,
`STILLFLOW_TRAINER__STUDENT__PRETRAINED=/models/qwen2.5-0.5b`, `STILLFLOW_TRAINER__SFT__MAX_STEPS=400`,
`STILLFLOW_TRAINER__GATE__QUALITY_RATIO_MIN=0.9`, `STILLFLOW_TRAINER__HOLDOUT_FAMILIES='["recovery"]'`.

Sections (all frozen): `StudentSection` (what is trained: a tiny model from config, or a pretrained
one, optionally with LoRA), `SFTSection`, `DPOSection`, `EvalSection`, `GateSection`, and
`TrainerSection` around them. `TrainerSection.quick()` is the `--quick` profile: fewer steps and a
smaller evaluation, so that a whole job finishes in minutes on two CPU cores.

Light: pydantic only (the CLI imports this module to build its parser).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stillflow.contracts import NAME_PATTERN
from stillflow.settings import StillflowSettings

__all__ = [
    "LoraSection",
    "StudentSection",
    "SFTSection",
    "DPOSection",
    "EvalSection",
    "GateSection",
    "TrainerSection",
    "TrainerSettings",
    "with_trainer",
    "pretrained_profile",
]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoraSection(_Section):
    """LoRA adapters (peft) instead of full fine-tuning; merged into the weights before registering."""

    enabled: bool = False
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class StudentSection(_Section):
    """The student: `base` set → a named pretrained base (`trainer.bases`, e.g. `gemma3-270m`, converted once
    into a cached directory); `pretrained` set → that model and its tokenizer (a local path or a hub id
    already in the local cache: nothing is downloaded); neither → a tiny model built from the dims below,
    with a byte-level BPE tokenizer trained on the training corpus."""

    base: str | None = Field(default=None, description="a named base (trainer.bases.NAMED_BASES), e.g. gemma3-270m")
    pretrained: str | None = Field(default=None, description="path or id for from_pretrained; None = tiny")
    arch: Literal["llama", "qwen2"] = "llama"
    hidden_size: int = Field(default=256, ge=16)
    num_layers: int = Field(default=4, ge=1)
    num_heads: int = Field(default=8, ge=1)
    num_kv_heads: int | None = Field(default=None, ge=1, description="None = num_heads (no GQA)")
    intermediate_size: int = Field(default=704, ge=16)
    vocab_size: int = Field(default=3072, ge=300, description="target size of the trained BPE vocabulary")
    pretokenize: Literal["words", "phrases"] = Field(
        default="phrases", description="BPE merges within words, or across spaces with identifiers kept apart"
    )
    max_position_embeddings: int = Field(default=2048, ge=64)
    rope_theta: float = Field(default=10_000.0, gt=0)
    tie_word_embeddings: bool = True
    value_slots: int = Field(
        default=32, ge=0, le=1000,
        description="tiny students: ids, paths, numbers tagged with slot tokens it copies (stillflow.slots); 0 = off",
    )
    # measured once (quick dims, 1 600 steps, 150 held-out tasks): typed 15% success vs untyped 22%
    typed_slots: bool = Field(default=False, description="one slot numbering per kind of value (<i0>, <p0>, <n0>...)")
    slot_cells: bool = Field(
        default=True,
        description="value slots also for short cells of tool results (`bronze`, `2`, `Anya Fischer`): what "
                    "answers copy (stillflow.slots)",
    )
    copy_warmup_steps: int = Field(
        default=800, ge=0,
        description="tiny students without value slots: at most this many associative-recall steps before SFT",
    )
    copy_warmup_lr: float = Field(default=1e-3, gt=0)
    copy_warmup_target_loss: float = Field(default=0.3, ge=0, description="the warm-up stops below this loss")
    tool_descriptions: bool = Field(
        default=False, description="tiny student's template: render each tool's description, not only its signature"
    )
    lora: LoraSection = LoraSection()

    @property
    def is_pretrained(self) -> bool:
        return bool(self.base or self.pretrained)

    @model_validator(mode="after")
    def _dims(self) -> StudentSection:
        if self.base and self.pretrained:
            raise ValueError("set base (a named base) or pretrained (a directory), not both")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {kv}")
        return self


class SFTSection(_Section):
    """Supervised fine-tuning (trl `SFTTrainer`, loss on assistant turns only)."""

    epochs: float = Field(default=6.0, gt=0)
    min_steps: int = Field(default=1000, ge=0, description="at least this many steps (small datasets: more epochs)")
    max_steps: int = Field(default=-1, description="> 0: exactly this many steps (overrides epochs and min_steps)")
    learning_rate: float = Field(default=2e-3, gt=0, description="tiny students like it high; ~2e-5 for real models")
    batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_length: int = Field(default=1024, ge=32, description="longer conversations are dropped, not truncated")
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    lr_scheduler: str = "cosine"
    augment_copies: int = Field(
        default=1, ge=0, description="identifier-swapped copies of each conversation (trainer.augment)"
    )
    logging_steps: int = Field(default=10, ge=1)


class DPOSection(_Section):
    """Preference tuning (trl `DPOTrainer`) on the pairs, from the SFT checkpoint, which is the reference."""

    enabled: bool = True
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=-1, description="> 0 overrides epochs")
    learning_rate: float = Field(default=5e-5, gt=0)
    beta: float = Field(default=0.1, gt=0)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_length: int = Field(default=1024, ge=32)
    sft_weight: float = Field(
        default=0.2, ge=0, description="weight of an NLL term on the chosen turn (trl loss 'sft'; 0 = pure DPO)"
    )
    decision_point: bool = Field(
        default=True, description="cut chosen/rejected to their first assistant turn (where they diverge)"
    )
    min_pairs: int = Field(default=8, ge=1, description="fewer pairs than this: DPO is skipped")
    logging_steps: int = Field(default=5, ge=1)


class EvalSection(_Section):
    """Evaluation of the student against the teacher on held-out tasks."""

    environment: str | None = Field(
        default="sim.environment:SimEvalEnvironment",
        description="module:attribute of the EvalEnvironment factory; None = offline replay only",
    )
    environment_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for it")
    mode: Literal["online", "offline", "both"] = "both"
    tasks: int = Field(default=40, ge=1, description="held-out tasks the student runs online, per workload")
    offline_examples: int = Field(default=40, ge=0, description="held-out teacher conversations replayed offline")
    max_turns: int = Field(default=8, ge=1)
    batch_size: int = Field(default=16, ge=1, description="held-out episodes run in lockstep, each turn of theirs "
                                                          "generated in one batch (1: one episode at a time)")
    max_new_tokens: int = Field(default=160, ge=8)
    worst: int = Field(default=5, ge=0, description="worst failures listed in the report")
    seed: int = 0


class GateSection(_Section):
    """Promotion gate: quality_ratio >= quality_ratio_min and catastrophic-failure rate < failure_rate_max,
    over every held-out task (`scope="all"`), or over the tasks the router would send the student at its
    calibrated confidence threshold (`scope="routed"`, which also needs `routed_min_coverage` of them)."""

    scope: Literal["all", "routed"] = Field(
        default="all", description="all: the student alone on every task; routed: the student behind the router"
    )
    routed_min_coverage: float = Field(
        default=0.5, ge=0, le=1, description="scope=routed: share of held-out tasks the student must take"
    )
    quality_ratio_min: float = Field(default=0.90, ge=0)
    failure_rate_max: float = Field(default=0.05, ge=0, le=1)
    min_eval_tasks: int = Field(default=10, ge=1, description="fewer evaluated tasks than this: rejected")
    confidence_min_coverage: float = Field(
        default=0.05, ge=0, le=1, description="the calibrated threshold must let at least this share through"
    )


class TrainerSection(_Section):
    """Everything the trainer service is tuned with (`STILLFLOW_TRAINER__...`)."""

    registry_dir: Path = Path("models")
    model_name: str = Field(default="student", pattern=NAME_PATTERN)
    retrain_threshold: int = Field(default=500, ge=1, description="new SFT examples (from window events) per run")
    min_training_examples: int = Field(default=200, ge=1, description="and at least this many in total")
    retrain_after_promotion: int | None = Field(
        default=None, ge=1,
        description="after a run that promoted a version: the next run waits for this many new examples from "
                    "windows that closed after the promotion (the new student's traffic and its teacher fallbacks); "
                    "unset: retrain_threshold of them")
    warm_start: Literal["off", "live", "latest"] = Field(
        default="off",
        description="start each run from a registered version's weights and tokenizer instead of a new student: "
                    "`live` the promoted one, `latest` the newest registered (promoted or not: a rejected version "
                    "was still trained); skipped, with the reason logged, when there is none or its student is "
                    "not the one the settings describe (architecture, size, base, LoRA, value slots)")
    warm_start_sft_steps: int | None = Field(
        default=None, ge=1, description="SFT steps of a warm-started run (unset: the sft section's)")
    heldout_fraction: float = Field(default=0.1, gt=0, lt=1, description="share of task ids held out")
    holdout_families: tuple[str, ...] = Field(
        default=(), description="task families held out whole (distribution shift); needs family labels"
    )
    general_dataset: Path | None = Field(
        default=None, description="JSONL of general chat conversations ({'messages': [...]}) blended into SFT"
    )
    general_fraction: float = Field(default=0.0, ge=0, lt=1, description="share of SFT rows drawn from it")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="training precision: auto = bf16 mixed precision where the hardware has it"
    )
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads (None = torch's default)")
    seed: int = 0
    metrics_port: int = Field(default=9108, ge=0, le=65535, description="`stillflow trainer` /metrics port; 0 = off")
    poll_timeout_s: float = Field(default=1.0, gt=0)
    student: StudentSection = StudentSection()
    sft: SFTSection = SFTSection()
    dpo: DPOSection = DPOSection()
    eval: EvalSection = EvalSection()
    gate: GateSection = GateSection()

    @field_validator("holdout_families")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(x.strip() for x in v if x.strip()))

    def model_dir(self) -> Path:
        return self.registry_dir / self.model_name

    def quick(self) -> TrainerSection:
        """The `--quick` profile: a whole job (data → SFT → DPO → evaluation → registry) in a few
        minutes on two CPU cores. Smaller student, fewer steps, a smaller evaluation."""
        return self.model_copy(
            update={
                "student": self.student.model_copy(
                    update={"hidden_size": 192, "num_layers": 4, "num_heads": 6, "intermediate_size": 512,
                            "vocab_size": 2048, "copy_warmup_steps": 200, "copy_warmup_lr": 2e-3}
                ),
                # measured with value slots on 503 examples: 640 steps of 8 at 3e-3 beat 320 of 16 at 2e-3
                # in the same time (held-out success 8% vs 6%, SFT loss 0.73 vs 0.83); bf16 on a CPU that
                # has it made 640 steps 157 s → 126 s, spent on more steps (1 600 steps: 22%)
                "sft": self.sft.model_copy(update={"max_steps": 800, "batch_size": 8, "learning_rate": 3e-3}),
                "dpo": self.dpo.model_copy(update={"max_steps": 15, "batch_size": 8}),
                "eval": self.eval.model_copy(update={"tasks": 24, "offline_examples": 16, "max_turns": 5,
                                                     "max_new_tokens": 96}),
            }
        )


def _pretrained_updates(section: TrainerSection, quick: bool) -> dict[str, Any]:
    """What a pretrained student is trained with, in place of the tiny student's defaults: learning rates
    for a model that already reads text (LoRA 1e-3, full 2e-5), small batches (a 262k-token output head
    is most of a step), no minimum step count and no identifier-swapped copies (those teach a model from
    scratch to copy), longer turns. `quick`: a short CPU run."""
    lora = section.student.lora.enabled
    # measured (gemma3-270m, LoRA r=16, 20 steps of 2 sim conversations): at 2e-4 it never wrote its
    # <end_of_turn> (every turn ran to the token cap); at 1e-3 the loss went 1.60 → 0.29 and turns ended
    sft = {"learning_rate": 1e-3 if lora else 2e-5, "batch_size": 4, "grad_accum": 1, "min_steps": 0,
           "epochs": 2.0, "augment_copies": 0, "max_length": 2048, "logging_steps": 5, "warmup_ratio": 0.1}
    dpo = {"learning_rate": 5e-5 if lora else 5e-6, "batch_size": 2, "max_length": 2048}
    # generation is the slow part of an evaluation on a CPU (gemma3-270m: ~14 tokens/s, ~30 s a task):
    # fewer offline replays (each replays every turn of a conversation)
    ev = {"max_new_tokens": 192, "offline_examples": 16}
    if quick:
        # measured on 2 cores (bf16): ~22 s a step of 2 sim conversations; 30 steps + evaluation ≈ 25 min
        sft.update({"max_steps": 30, "batch_size": 2})
        dpo.update({"max_steps": 8})
        ev.update({"max_new_tokens": 160, "offline_examples": 4})
    return {"sft": sft, "dpo": dpo, "eval": ev}


def pretrained_profile(section: TrainerSection, *, quick: bool = False,
                       explicit: TrainerSection | None = None) -> TrainerSection:
    """`section` with the pretrained student's training defaults (see `_pretrained_updates`); the fields
    set explicitly in `explicit` (the settings as read from the environment) keep their values there.
    A no-op for a tiny student."""
    if not section.student.is_pretrained:
        return section
    updates = {}
    for name, fields in _pretrained_updates(section, quick).items():
        if explicit is not None:
            given = getattr(explicit, name)
            fields = {**fields, **{k: getattr(given, k) for k in given.model_fields_set}}
        updates[name] = getattr(section, name).model_copy(update=fields)
    return section.model_copy(update=updates)


class TrainerSettings(StillflowSettings):
    """Settings of the trainer service (`STILLFLOW_TRAINER__...`)."""

    trainer: TrainerSection = TrainerSection()


def with_trainer(settings: StillflowSettings, **updates: Any) -> TrainerSettings:
    """A copy of `settings` as `TrainerSettings` with `trainer` fields replaced (validated)."""
    base = settings if isinstance(settings, TrainerSettings) else TrainerSettings(
        **{k: getattr(settings, k) for k in type(settings).model_fields}
    )
    section = TrainerSection.model_validate({**base.trainer.model_dump(), **updates})
    return base.model_copy(update={"trainer": section})
