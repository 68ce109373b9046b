"""Preference tuning of the SFT student with trl's `DPOTrainer`.

Exports `run_dpo(student, reference_dir, rows, section, out_dir, ...)` → `trainer.sft.StageResult`.

The reference model is the SFT checkpoint as saved on disk (`reference_dir`), loaded separately and
frozen; the policy starts from the same weights. A LoRA student keeps training its adapter, and trl
copies the SFT adapter as the reference (the base is loaded once). Rows are trl's conversational preference rows
`{"prompt", "chosen", "rejected", "tools"}`. With `sft_weight > 0` the loss is trl's
`["sigmoid", "sft"]` combination (DPO plus an NLL term on the chosen continuation, which keeps a small
student from drifting away from the good traces while it learns what not to do).
With `decision_point` (default) each pair is cut to the first assistant turn of either side
(`decision_point`). Fewer pairs than `min_pairs`: the stage is skipped and the SFT checkpoint stands.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.settings import DPOSection
from trainer.sft import LossRecorder, StageResult, common_training_args, length_filter, train_and_save

if TYPE_CHECKING:
    from trainer.student import Student

__all__ = ["run_dpo", "decision_point"]

log = logging.getLogger(__name__)


def decision_point(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Pairs cut to the first assistant turn of each side: the step where the two traces part ways
    (a safe call vs an unsafe one, the right tool vs a made-up one, the right answer vs a wrong one).
    What follows that turn — tool results, later turns — is consequence, not choice, and would
    otherwise enter the DPO likelihoods (trl's DPO has no assistant mask). Pairs whose first turns
    are the same are dropped (returned count)."""
    out, same = [], 0
    for row in rows:
        chosen = next((m for m in row["chosen"] if m.get("role") == "assistant"), None)
        rejected = next((m for m in row["rejected"] if m.get("role") == "assistant"), None)
        if chosen is None or rejected is None or chosen == rejected:
            same += 1
            continue
        out.append({**row, "chosen": [chosen], "rejected": [rejected]})
    return out, same


def run_dpo(
    student: Student,
    reference_dir: Path,
    rows: list[dict[str, Any]],
    section: DPOSection,
    out_dir: Path,
    *,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    precision: str = "auto",
) -> StageResult:
    """Train `student.model` in place with DPO against the saved SFT reference; save to `out_dir`."""
    t0 = time.perf_counter()
    if not section.enabled:
        return StageResult("dpo", None, skipped="disabled")
    same = 0
    if section.decision_point:
        rows, same = decision_point(rows)
    kept, dropped = length_filter(student.tokenizer, rows, section.max_length)
    dropped += same
    if len(kept) < section.min_pairs:
        why = f"{len(kept)} usable preference pairs < min_pairs {section.min_pairs}"
        log.info("DPO skipped: %s", why)
        return StageResult("dpo", None, examples=len(kept), dropped=dropped, skipped=why)

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    ref = None  # a LoRA student: trl copies its SFT adapter as the frozen reference (no second model)
    if not student.lora:
        ref = AutoModelForCausalLM.from_pretrained(str(reference_dir), local_files_only=True)
        ref.eval()
    loss_type = ["sigmoid", "sft"] if section.sft_weight > 0 else ["sigmoid"]
    weights = [1.0, section.sft_weight] if section.sft_weight > 0 else None
    losses: list[dict[str, float]] = []
    config = DPOConfig(
        **common_training_args(section, out_dir, max_steps=section.max_steps, seed=seed, progress=progress,
                               device=device, precision=precision),
        beta=section.beta,
        loss_type=loss_type,
        loss_weights=weights,
    )
    trainer = DPOTrainer(
        model=student.model,
        ref_model=ref,
        args=config,
        train_dataset=Dataset.from_list(kept),
        processing_class=student.tokenizer,
        callbacks=[LossRecorder.make("dpo", losses)],
    )
    return train_and_save("dpo", trainer, student, out_dir, t0, examples=len(kept), dropped=dropped, losses=losses)
