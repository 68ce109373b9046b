"""The tiny student vs a pretrained base with LoRA, side by side: the same gated data, the same held-out tasks.

Each column is the trainer's own job (`trainer.job.TrainingJob`: SFT, DPO, evaluation against the teacher,
gate, registry) on the same `TrainingData`, so the split, the held-out tasks and the teacher baseline are
the same for every student; only the student and its training profile differ:

- `tiny`           — the `--quick` profile's student from config (value slots, its own tokenizer);
- `gemma3-270m`    — Gemma 3 270M + LoRA (`--base gemma3-270m --lora`, the pretrained profile);
- `tiny-large`     — with `--device cuda`: a larger student from config (for GPU machines where the base
                     model cannot be installed).

Jobs: `demo` (the demo's job: lookup + recovery) and `all` (the six sim families). Reported per student and
job: quality ratio, failure rate, task success (the student's, and the teacher's on the same tasks), the
gate's verdict, training time and training tokens/s, evaluation time.

    python -m benchmarks.student_bases [--budget cpu|gpu] [--device auto|cpu|cuda] [--jobs demo,all]

`--budget cpu` is sized to finish within 45 minutes on 2 cores (short training runs: the columns compare
what each student reaches on the same small budget, not what it reaches at convergence).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import emit_result, progress, quiet_training

JOBS = {"demo": "lookup,recovery", "all": None}

# per budget: sim tasks per job, held-out tasks, tiny SFT steps, pretrained SFT steps (its profile's batch), DPO steps
BUDGETS = {
    "cpu": {"tasks": 240, "eval_tasks": 16, "tiny_steps": 800, "pretrained_steps": 20, "dpo_steps": 4},
    "gpu": {"tasks": 600, "eval_tasks": 60, "tiny_steps": 1600, "pretrained_steps": 300, "dpo_steps": 40},
}


def _sections(budget: dict[str, int], device: str, eval_tasks: int) -> dict[str, Any]:
    from trainer.settings import LoraSection, StudentSection, TrainerSection, pretrained_profile

    def with_eval(section: TrainerSection) -> TrainerSection:
        ev = section.eval.model_copy(update={"tasks": eval_tasks, "offline_examples": 0, "mode": "online"})
        return section.model_copy(update={"eval": ev, "device": device})

    quick = TrainerSection().quick()
    tiny = quick.model_copy(update={"sft": quick.sft.model_copy(update={"max_steps": budget["tiny_steps"]})})
    out = {"tiny": with_eval(tiny)}
    gemma = TrainerSection().model_copy(update={"student": StudentSection(base="gemma3-270m",
                                                                          lora=LoraSection(enabled=True))})
    gemma = pretrained_profile(gemma, quick=True)
    gemma = gemma.model_copy(update={
        "sft": gemma.sft.model_copy(update={"max_steps": budget["pretrained_steps"]}),
        "dpo": gemma.dpo.model_copy(update={"max_steps": budget["dpo_steps"]}),
        "eval": quick.eval.model_copy(update={"max_new_tokens": gemma.eval.max_new_tokens})})
    out["gemma3-270m"] = with_eval(gemma)
    if device == "cuda":
        large = TrainerSection().model_copy(update={"student": StudentSection(
            hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048, vocab_size=8192)})
        out["tiny-large"] = with_eval(large.model_copy(update={
            "sft": large.sft.model_copy(update={"max_steps": budget["tiny_steps"] * 2, "learning_rate": 1e-3})}))
    return out


def _column(name: str, result: Any, tokens: float | None) -> dict[str, Any]:
    rep = result.report
    student, teacher = rep.get("student") or {}, rep.get("teacher") or {}
    sft = (result.stages or {}).get("sft")
    return {
        "status": result.status,
        "reasons": result.decision.reasons,
        "quality_ratio": rep.get("quality_ratio"),
        "failure_rate": rep.get("failure_rate"),
        "task_success": student.get("success_rate"),
        "teacher_task_success": teacher.get("success_rate"),
        "eval_tasks": student.get("episodes"),
        "train_seconds": round(sum(v for k, v in result.stages.items() if k in ("copy_warmup", "sft", "dpo")), 1),
        "sft_seconds": round(sft, 1) if sft else None,
        "sft_tokens": tokens,
        "sft_tokens_per_s": round(tokens / sft, 1) if tokens and sft else None,
        "eval_seconds": round(result.stages.get("evaluate", 0.0), 1),
        "total_seconds": round(result.seconds, 1),
    }


def _sft_tokens(path: Path) -> float | None:
    """Tokens trl counted over the SFT run (its `num_tokens` log), from the version's training.json."""
    try:
        training = json.loads((path / "training.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    logged = [e.get("num_tokens") for e in training.get("sft", {}).get("losses", []) if e.get("num_tokens")]
    return float(logged[-1]) if logged else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=tuple(BUDGETS), default="cpu")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--jobs", default="demo,all", help=f"comma-separated: {', '.join(JOBS)}")
    ap.add_argument("--students", default=None, help="comma-separated subset of the columns (default: all)")
    ap.add_argument("--tasks", type=int, default=None, help="sim tasks per job (default: the budget's)")
    ap.add_argument("--eval-tasks", type=int, default=None, help="held-out tasks (default: the budget's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the registries and reports here")
    args = ap.parse_args(argv)
    quiet_training()

    from stillflow.settings import StillflowSettings
    from tests.trainer_data import generate_sim_data
    from trainer.data import from_events
    from trainer.job import TrainingJob
    from trainer.settings import with_trainer
    from trainer.student import pick_device

    budget = dict(BUDGETS[args.budget])
    device = pick_device(args.device)
    tasks = args.tasks or budget["tasks"]
    eval_tasks = args.eval_tasks or budget["eval_tasks"]
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    unknown = sorted(set(jobs) - set(JOBS))
    if unknown:
        ap.error(f"unknown job(s) {unknown}; jobs: {', '.join(JOBS)}")
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="stillflow-bench-bases-"))
    work.mkdir(parents=True, exist_ok=True)
    sections = _sections(budget, device, eval_tasks)
    if args.students:
        wanted = [s.strip() for s in args.students.split(",") if s.strip()]
        sections = {k: v for k, v in sections.items() if k in wanted}
    t_all = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    data_counts: dict[str, Any] = {}
    for job in jobs:
        families = JOBS[job].split(",") if JOBS[job] else None
        examples, pairs, counts = generate_sim_data(n_tasks=tasks, runs_per_task=2, seed=args.seed, families=families)
        data = from_events(examples, pairs)
        data_counts[job] = {"sft": len(data.sft), "pairs": len(data.pairs), "teacher_traces": counts}
        progress(f"[{job}] {len(data.sft)} gated examples, {len(data.pairs)} pairs from {tasks} tasks")
        results[job] = {}
        for name, section in sections.items():
            section = section.model_copy(update={"registry_dir": work / job / name, "seed": args.seed})
            settings = with_trainer(StillflowSettings(), **section.model_dump())
            t0 = time.perf_counter()
            progress(f"[{job}] {name}: training")
            try:
                res = TrainingJob(settings, progress=False, echo=lambda m: progress(f"    {m}")).run(
                    data, run_id=f"bench-{job}-{name}")
            except Exception as exc:  # a column that cannot run (e.g. the base is not installed) says why
                results[job][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                progress(f"[{job}] {name}: {results[job][name]['error']}")
                continue
            col = _column(name, res, _sft_tokens(res.path))
            results[job][name] = col
            progress(f"[{job}] {name}: {col['status']}, quality ratio {col['quality_ratio']}, failure rate "
                     f"{col['failure_rate']}, success {col['task_success']} in {time.perf_counter() - t0:.0f} s")
    emit_result("student_bases", {
        "config": {"budget": args.budget, "device": device, "jobs": {j: JOBS[j] or "all" for j in jobs},
                   "sim_tasks": tasks, "eval_tasks": eval_tasks, "budget_steps": budget,
                   "students": {k: v.student.model_dump(exclude={"lora"}) | {"lora": v.student.lora.enabled}
                                for k, v in sections.items()}},
        "data": data_counts,
        "results": results,
        "seconds": round(time.perf_counter() - t_all, 1),
        "work_dir": str(work),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
