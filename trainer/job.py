"""One training job: data → student → SFT → DPO → evaluation → gate → registry.

Exports `TrainingJob` (built once from `TrainerSettings`; `run(data, run_id=..., watermark=...)` →
`JobResult`) and `JobResult`. Synchronous and CPU/GPU-bound: the retrain consumer runs it in a worker
thread, `stillflow train` directly. Kafka is not touched here: the result carries the
`ModelVersionEvent`s (candidate, then promoted or rejected) for the caller to publish.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stillflow.contracts import ModelVersionEvent
from stillflow.registry import ModelRegistry, VersionInfo
from stillflow.slots import save_format
from trainer.data import DataError, DataSplit, TrainingData, data_manifest, dpo_rows, sft_rows, split_data
from trainer.environment import EvalEnvironment
from trainer.gate import GateDecision, decide_workloads
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSection, TrainerSettings

__all__ = ["JobResult", "TrainingJob", "load_general_rows"]

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    run_id: str
    version: str
    status: str  # promoted | rejected
    decision: GateDecision
    report: dict[str, Any]
    metrics: dict[str, float]
    path: Path
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    events: list[ModelVersionEvent] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "version": self.version,
            "status": self.status,
            "reasons": self.decision.reasons,
            "path": str(self.path),
            "seconds": round(self.seconds, 1),
            "stages": {k: round(v, 1) for k, v in self.stages.items()},
            "quality_ratio": self.report.get("quality_ratio"),
            "failure_rate": self.report.get("failure_rate"),
            "confidence_threshold": (self.report.get("confidence") or {}).get("threshold"),
            "workloads": self.decision.verdicts,
            "promoted_workloads": self.decision.thresholds,
        }


def load_general_rows(path: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` rows of a general-purpose chat dataset (JSONL of `{"messages": [...]}`), sampled with `seed`."""
    rows = []
    with path.open(encoding="utf-8") as fp:
        for line in fp:
            if line.strip():
                obj = json.loads(line)
                if isinstance(obj.get("messages"), list):
                    rows.append({"messages": obj["messages"], "tools": json.dumps(obj.get("tools") or [])})
    random.Random(seed).shuffle(rows)
    return rows[:n]


class TrainingJob:
    """Runs one job with the settings' `trainer` section (see the module docstring)."""

    def __init__(
        self,
        settings: TrainerSettings,
        *,
        section: TrainerSection | None = None,
        env: EvalEnvironment | None = None,
        metrics: TrainerMetrics | None = None,
        progress: bool = True,
        echo: Callable[[str], None] | None = None,
        work_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.section = section or settings.trainer
        self.env = env
        self.metrics = metrics
        self.progress = progress
        self.echo = echo or (lambda msg: log.info("%s", msg))
        self.work_dir = work_dir
        self.registry = ModelRegistry(self.section.registry_dir, self.section.model_name)

    def run(self, data: TrainingData, *, run_id: str, watermark: str | None = None) -> JobResult:
        import torch

        from trainer.dpo import run_dpo
        from trainer.evaluate import DistillationEvaluator, StudentRuntime
        from trainer.sft import StageResult, run_sft
        from trainer.student import make_student, pick_device, resume_student
        from trainer.warmup import copy_warmup

        s = self.section
        t_start = time.perf_counter()
        stages: dict[str, float] = {}
        if s.threads:
            torch.set_num_threads(s.threads)
        device = pick_device(s.device)
        torch.manual_seed(s.seed)
        random.seed(s.seed)

        t0 = time.perf_counter()
        split = split_data(data, s.heldout_fraction, s.holdout_families)
        if not split.train_sft:
            raise DataError(f"no training examples after the split ({len(data.sft)} examples, "
                            f"{len(split.heldout_sft)} held out)")
        train_rows = sft_rows(split.train_sft)
        general: list[dict[str, Any]] = []
        if s.general_dataset and s.general_fraction > 0:
            n_general = round(len(train_rows) * s.general_fraction / (1 - s.general_fraction))
            general = load_general_rows(Path(s.general_dataset), n_general, s.seed)
            train_rows = train_rows + general
            random.Random(s.seed).shuffle(train_rows)
        self.echo(f"[{run_id}] data: {len(split.train_sft)} train / {len(split.heldout_sft)} held-out SFT examples "
                  f"({len(split.train_tasks)} / {len(split.heldout_tasks)} tasks), {len(split.train_pairs)} train "
                  f"pairs, {len(general)} general rows; device {device}")
        stages["data"] = time.perf_counter() - t0

        own_tmp = self.work_dir is None
        work = Path(tempfile.mkdtemp(prefix=f"stillflow-{run_id}-")) if own_tmp else Path(self.work_dir)  # type: ignore[arg-type]
        work.mkdir(parents=True, exist_ok=True)
        try:
            t0 = time.perf_counter()
            parent, recorded = self._warm_start_parent(run_id)
            if parent is not None:
                student = resume_student(self.registry.path(parent), device, source=recorded.get("source"))
                self.echo(f"[{run_id}] warm start from {parent}")
            else:
                conversations = [{"messages": r["messages"], "tools": json.loads(r["tools"])} for r in train_rows]
                student = make_student(conversations, s.student, seed=s.seed, progress=self.echo)
            student.model.to(device)
            self.echo(f"[{run_id}] student: {student.describe()}")
            train_rows = student.encode_rows(train_rows)
            stages["student"] = time.perf_counter() - t0
            warm = StageResult("copy_warmup", None, skipped="pretrained student")
            if parent is not None:
                warm = StageResult("copy_warmup", None, skipped=f"warm start from {parent}")
            elif student.codec is not None:
                # measured: with value slots the synthetic recall stage only raised the SFT loss (1.77 vs 0.83)
                warm = StageResult("copy_warmup", None, skipped="value slots: a copy is one slot token")
            elif not (s.student.pretrained or s.student.base):
                warm = copy_warmup(student, steps=s.student.copy_warmup_steps, learning_rate=s.student.copy_warmup_lr,
                                   device=device, seed=s.seed, target_loss=s.student.copy_warmup_target_loss)
                stages["copy_warmup"] = warm.seconds
                self.echo(f"[{run_id}] copy warm-up: {warm.steps} steps in {warm.seconds:.0f} s, loss "
                          f"{warm.first_loss} → {warm.final_loss}")

            sft_section = s.sft
            if parent is not None and s.warm_start_sft_steps is not None:
                sft_section = s.sft.model_copy(update={"max_steps": s.warm_start_sft_steps})
            sft = run_sft(student, train_rows, sft_section, work / "sft", device=device, seed=s.seed,
                          precision=s.precision, progress=self.progress)
            stages["sft"] = sft.seconds
            self.echo(f"[{run_id}] SFT: {sft.steps} steps in {sft.seconds:.0f} s, "
                      f"loss {sft.first_loss} → {sft.final_loss}")
            final_dir = sft.checkpoint
            pair_rows = student.encode_rows(dpo_rows(split.train_pairs), "dpo")
            dpo = run_dpo(student, sft.checkpoint, pair_rows, s.dpo, work / "dpo", device=device, precision=s.precision,
                          seed=s.seed, progress=self.progress)  # type: ignore[arg-type]
            stages["dpo"] = dpo.seconds
            if dpo.checkpoint is not None:
                final_dir = dpo.checkpoint
                self.echo(f"[{run_id}] DPO: {dpo.steps} steps in {dpo.seconds:.0f} s, loss {dpo.first_loss} → "
                          f"{dpo.final_loss}")
            else:
                self.echo(f"[{run_id}] DPO skipped: {dpo.skipped}")

            t0 = time.perf_counter()
            from trainer.student import merge_lora

            model = merge_lora(student.model)
            model.eval()
            evaluator = DistillationEvaluator(self.settings, s.eval, s.gate, env=self.env, progress=self.echo)
            version_hint = self.registry.next_version()
            runtime = StudentRuntime(model, student.tokenizer, device, student.codec, student.fmt)
            report = evaluator.evaluate(runtime, split, model_id=f"{s.model_name}-{version_hint}")
            stages["evaluate"] = time.perf_counter() - t0
            decision = self._decide(report)
            metrics = report.metrics()
            report_dict = report.to_dict()
            report_dict["gate"] = decision.to_dict()
            stages["total"] = time.perf_counter() - t_start

            training = {
                "run_id": run_id,
                "device": device,
                "student": student.describe(),
                "stages": {k: round(v, 2) for k, v in stages.items()},
                "copy_warmup": warm.summary(),
                "sft": sft.summary(),
                "dpo": dpo.summary(),
                "general_rows": len(general),
                "warm_start": {"from": parent, "sft_steps": sft.steps} if parent is not None else None,
                "settings": json.loads(s.model_dump_json()),
            }
            save_format(final_dir, student.codec)  # the router encodes requests the same way
            manifest_data = data_manifest(data, split)
            t0 = time.perf_counter()
            info, candidate = self.registry.register(
                final_dir,  # type: ignore[arg-type]
                data_watermark=json.loads(watermark) if watermark else data.watermark,
                metrics=metrics,
                confidence_threshold=(report.confidence or {}).get("threshold"),
                documents={"eval_report.json": report_dict, "data_manifest.json": manifest_data,
                           "training.json": training},
                extra={
                    "run_id": run_id,
                    "status_at_registration": decision.status,
                    "gate": decision.to_dict(),
                    "confidence_function": (report.confidence or {}).get("function"),
                    "data": {"source": data.source, "counts": manifest_data["counts"],
                             "sha256": manifest_data["sha256"]},
                    "student": student.describe(),
                    **({"warm_start_from": parent} if parent is not None else {}),
                    **({"workloads": decision.thresholds, "workload_verdicts": decision.verdicts}
                       if decision.workloads else {}),
                },
            )
            events = [candidate]
            if decision.promoted:
                why = ("passed the evaluation gate" if not decision.workloads else
                       f"passed the evaluation gate for {', '.join(decision.thresholds)}")
                events.append(self.registry.promote(info.version, reason=why))
            else:
                events.append(self.registry.reject(info.version, decision.reasons))
            stages["register"] = time.perf_counter() - t0
        finally:
            if own_tmp:
                shutil.rmtree(work, ignore_errors=True)
        seconds = time.perf_counter() - t_start
        if self.metrics is not None:
            self.metrics.observe_run(decision.status, seconds, {k: v for k, v in stages.items() if k != "total"})
            self.metrics.observe_version(s.model_name, info.version, metrics)
            self.metrics.training_examples.labels(part="train_sft").set(len(split.train_sft))
            self.metrics.training_examples.labels(part="train_pairs").set(len(split.train_pairs))
            if sft.final_loss is not None:
                self.metrics.final_loss.labels(stage="sft").set(sft.final_loss)
            if dpo.final_loss is not None:
                self.metrics.final_loss.labels(stage="dpo").set(dpo.final_loss)
        self.echo(f"[{run_id}] {info.version}: {decision.status} (quality_ratio {report.quality_ratio}, failure rate "
                  f"{report.failure_rate}) in {seconds:.0f} s"
                  + (f"; {'; '.join(decision.reasons)}" if decision.reasons else ""))
        for w, d in decision.workloads.items():
            sub = report.workloads.get(w) or {}
            ok = (sub.get("student_success") or {})
            self.echo(f"[{run_id}]   {w}: {d.status} (quality_ratio {sub.get('quality_ratio')}, failure rate "
                      f"{sub.get('failure_rate')}, success {ok.get('count')}/{ok.get('of')}, threshold "
                      f"{(sub.get('confidence') or {}).get('threshold')})")
        return JobResult(run_id, info.version, decision.status, decision, report_dict, metrics,
                         self.registry.path(info.version), seconds, stages, events)

    def _warm_start_parent(self, run_id: str) -> tuple[str | None, dict[str, Any]]:
        """The version this run trains on further (`warm_start`) and its manifest's `student`, or (None, {}):
        off, no version to start from, or one whose student is not the settings' (the reason is logged)."""
        mode = self.section.warm_start
        if mode == "off":
            return None, {}
        versions = self.registry.versions()
        parent = self.registry.live() if mode == "live" else (versions[-1] if versions else None)
        if parent is None:
            self.echo(f"[{run_id}] warm start ({mode}): no version yet, a new student")
            return None, {}
        try:
            recorded = self.registry.manifest(parent).get("student")
        except Exception as exc:  # an unreadable version: start afresh rather than fail the run
            self.echo(f"[{run_id}] warm start from {parent} skipped: {exc}")
            return None, {}
        from trainer.student import warm_start_mismatch

        why = warm_start_mismatch(recorded, self.section.student)
        if why is not None:
            self.echo(f"[{run_id}] warm start from {parent} skipped: {why}; a new student")
            return None, {}
        return parent, recorded

    def _decide(self, report: Any) -> GateDecision:
        """The gate per workload, against what the live version serves (its regressions are named)."""
        live = self.registry.live()
        previous: dict[str, float] | None = None
        serves_all = False
        if live is not None:
            try:
                previous = self.registry.info(live).workloads
            except Exception:  # an unreadable live version: nothing to compare with
                previous = {}
            serves_all = previous is None
        return decide_workloads(report, self.section.gate, previous=previous, previous_version=live,
                                previous_serves_all=serves_all)

    @staticmethod
    def describe_split(split: DataSplit) -> dict[str, int]:
        return {"train_sft": len(split.train_sft), "heldout_sft": len(split.heldout_sft),
                "train_pairs": len(split.train_pairs), "heldout_pairs": len(split.heldout_pairs)}

    def registry_info(self, version: str) -> VersionInfo:
        return self.registry.info(version)
