"""Does filtering matter, and does DPO help? Students trained side by side on the same budget.

From the same simulated teacher traces (default error modes), two datasets: *gated* (what the stream
keeps: every quality gate passed) and *ungated* (every teacher trace with a final answer). Same student
config, same initial weights (one tokenizer trained on all the traces, one copy warm-up, shared), same
number of SFT steps, same held-out tasks, same teacher baseline:

- `gated_sft`      — SFT on gated data (the checkpoint DPO starts from);
- `gated_sft_dpo`  — then DPO on the mined preference pairs (the stream's pairs);
- `ungated_sft`    — SFT on ungated data;
- `ungated_sft_dpo` (with --dpo-ungated) — the same DPO budget on the ungated run.

Reported per student: quality_ratio (vs the teacher on the same held-out tasks), catastrophic-failure
rate and its kinds, each score dimension (safety and tool_selection among them), per family.
Claims checked: gated beats ungated on quality_ratio; SFT+DPO >= SFT on safety and tool_selection.

    python -m benchmarks.trainer_quality [--tasks 1500 --steps 1200 --eval-tasks 60]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import emit_result, progress, quiet_training


def _summ(report: dict[str, Any]) -> dict[str, Any]:
    s = report["student"]
    return {
        "quality_ratio": report["quality_ratio"],
        "student_quality": s["quality"],
        "failure_rate": report["failure_rate"],
        "failures": s["failures"],
        "dimensions": s["dimensions"],
        "success_rate": s["success_rate"],
        "tokens_per_task": s["tokens_per_task"],
        "latency_s_per_task": s["latency_s_per_task"]["mean"],
        "by_family": {f: {"quality_ratio": v["quality_ratio"], "failure_rate": v["student_failure_rate"]}
                      for f, v in report["by_family"].items()},
        "confidence_threshold": report["confidence"]["threshold"],
        "confidence_coverage": report["confidence"]["coverage"],
        "routed": {k: (report.get("routed") or {}).get(k) for k in ("coverage", "quality_ratio", "failure_rate",
                                                                     "system_quality_ratio")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1500, help="sim tasks (each run twice by the teacher)")
    ap.add_argument("--steps", type=int, default=1200, help="SFT steps per student (the shared budget)")
    ap.add_argument("--dpo-steps", type=int, default=60)
    ap.add_argument("--warmup-steps", type=int, default=800,
                    help="copy warm-up steps at most (trainer.warmup; skipped with value slots)")
    ap.add_argument("--slots", type=int, default=32, help="value slots (stillflow.slots); 0 = plain text")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--augment", type=int, default=1, help="identifier-swapped copies per example (trainer.augment)")
    ap.add_argument("--eval-tasks", type=int, default=60)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--pretokenize", default="phrases", choices=["words", "phrases"])
    ap.add_argument("--no-redact", action="store_true", help="keep emails in the data (the stream redacts them)")
    ap.add_argument("--dpo-ungated", action="store_true", help="also DPO the ungated student")
    ap.add_argument("--families", default=None,
                    help="sim task families, comma-separated (default all six; the demo's job: lookup,recovery)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the students and reports here")
    args = ap.parse_args(argv)
    quiet_training()

    import torch

    from sim.environment import SimEvalEnvironment
    from stillflow.settings import StillflowSettings
    from tests.trainer_data import generate_sim_data
    from trainer.data import dpo_rows, from_events, sft_rows, split_data
    from trainer.dpo import run_dpo
    from trainer.evaluate import DistillationEvaluator, StudentRuntime
    from trainer.settings import DPOSection, EvalSection, GateSection, SFTSection, StudentSection
    from trainer.sft import run_sft
    from trainer.student import tiny_student
    from trainer.warmup import copy_warmup

    torch.manual_seed(args.seed)
    t_all = time.perf_counter()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="stillflow-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    progress(f"generating data: {args.tasks} tasks × 2 teacher runs")
    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
    common = dict(n_tasks=args.tasks, runs_per_task=2, seed=args.seed, redact=not args.no_redact, families=families)
    gated_ex, pairs, counts = generate_sim_data(gated=True, **common)
    ungated_ex, _, _ = generate_sim_data(gated=False, **common)
    gated = split_data(from_events(gated_ex, pairs), 0.1)
    ungated = split_data(from_events(ungated_ex, pairs), 0.1)
    progress(f"gated: {len(gated.train_sft)} train examples; ungated: {len(ungated.train_sft)}; "
             f"{len(gated.train_pairs)} preference pairs; teacher traces {counts}")

    student_cfg = StudentSection(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                                 intermediate_size=args.hidden * 8 // 3 // 16 * 16, vocab_size=3072,
                                 pretokenize=args.pretokenize, value_slots=args.slots)
    sft_cfg = SFTSection(max_steps=args.steps, batch_size=args.batch, learning_rate=args.lr, logging_steps=100,
                         augment_copies=args.augment)
    dpo_cfg = DPOSection(max_steps=args.dpo_steps, batch_size=8, logging_steps=20)
    env = SimEvalEnvironment()
    eval_cfg = EvalSection(tasks=args.eval_tasks, offline_examples=0, mode="online", seed=args.seed + 1)
    trained = sorted({r.family for r in gated.train_sft if r.family})
    tasks = env.sample_tasks(args.eval_tasks, seed=args.seed + 1, families=trained,
                             exclude=gated.train_tasks | ungated.train_tasks)
    evaluator = DistillationEvaluator(StillflowSettings(), eval_cfg, GateSection(), env=env)
    evaluator.pick_tasks = lambda split: (tasks, {"sampled_from_environment": len(tasks)})  # same tasks for all

    def evaluate(name: str, student: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        student.model.eval()
        runtime = StudentRuntime(student.model, student.tokenizer, codec=student.codec)
        report = evaluator.evaluate(runtime, None, model_id=name).to_dict()
        (work / f"{name}.report.json").write_text(json.dumps(report, indent=1))
        out = _summ(report)
        out["eval_seconds"] = round(time.perf_counter() - t0, 1)
        progress(f"{name}: quality_ratio {out['quality_ratio']}, failure rate {out['failure_rate']}, "
                 f"dims {out['dimensions']}")
        return out

    results: dict[str, Any] = {}
    teacher: dict[str, Any] | None = None
    # one starting point for both: the tokenizer learns from every trace (the ungated set holds them all)
    base = tiny_student([{"messages": r.messages, "tools": r.tools} for r in ungated.train_sft], student_cfg,
                        seed=args.seed)
    warm_steps = 0 if base.codec is not None else args.warmup_steps  # as the job: slots replace it
    warm = copy_warmup(base, steps=warm_steps, seed=args.seed)
    progress(f"copy warm-up: {warm.steps} steps in {warm.seconds:.0f} s, loss {warm.final_loss}")
    initial = {k: v.detach().clone() for k, v in base.model.state_dict().items()}
    for name, split in (("gated", gated), ("ungated", ungated)):
        t0 = time.perf_counter()
        student = base
        student.model.load_state_dict(initial)
        student.model.train()
        sft = run_sft(student, student.encode_rows(sft_rows(split.train_sft)), sft_cfg, work / name / "sft",
                      seed=args.seed, progress=False)
        progress(f"{name} SFT: {sft.steps} steps in {sft.seconds:.0f} s, "
                 f"loss {sft.first_loss:.3f} → {sft.final_loss:.3f}")
        results[f"{name}_sft"] = {**evaluate(f"{name}_sft", student), "train_examples": sft.examples,
                                  "sft_seconds": round(sft.seconds, 1), "final_loss": sft.final_loss}
        if teacher is None:
            rep = json.loads((work / f"{name}_sft.report.json").read_text())
            teacher = {"quality": rep["teacher"]["quality"], "failure_rate": rep["teacher"]["failure_rate"],
                       "failures": rep["teacher"]["failures"], "dimensions": rep["teacher"]["dimensions"]}
        if name == "gated" or args.dpo_ungated:
            student.model.train()
            dpo = run_dpo(student, work / name / "sft", student.encode_rows(dpo_rows(split.train_pairs), "dpo"),
                          dpo_cfg, work / name / "dpo", seed=args.seed, progress=False)
            progress(f"{name} DPO: {dpo.steps} steps in {dpo.seconds:.0f} s ({dpo.skipped or 'ok'})")
            results[f"{name}_sft_dpo"] = {**evaluate(f"{name}_sft_dpo", student), "dpo_seconds": round(dpo.seconds, 1),
                                          "dpo_final_loss": dpo.final_loss}
        progress(f"{name}: done in {time.perf_counter() - t0:.0f} s")

    g, u = results["gated_sft"], results["ungated_sft"]
    gd = results["gated_sft_dpo"]
    claims = {
        "gated_beats_ungated_quality_ratio": (g["quality_ratio"] or 0) > (u["quality_ratio"] or 0),
        "gated_fewer_failures_than_ungated": (g["failure_rate"] or 0) <= (u["failure_rate"] or 0),
        "dpo_safety_at_least_sft": gd["dimensions"]["safety"] >= g["dimensions"]["safety"],
        "dpo_tool_selection_at_least_sft": gd["dimensions"]["tool_selection"] >= g["dimensions"]["tool_selection"],
        "best_quality_ratio": max(v["quality_ratio"] or 0 for v in results.values()),
        "target_quality_ratio_0_90_reached": max(v["quality_ratio"] or 0 for v in results.values()) >= 0.90,
    }
    emit_result("trainer_quality", {
        "config": {"tasks": args.tasks, "families": families or "all", "sft_steps": args.steps,
                   "dpo_steps": args.dpo_steps, "warmup_steps": warm.steps, "augment_copies": args.augment,
                   "value_slots": args.slots, "batch_size": args.batch,
                   "eval_tasks": args.eval_tasks, "student": student_cfg.model_dump(), "lr": args.lr,
                   "redacted": not args.no_redact},
        "data": {"gated_train": len(gated.train_sft), "ungated_train": len(ungated.train_sft),
                 "pairs": len(gated.train_pairs), "teacher_traces": counts},
        "teacher": teacher,
        "students": results,
        "claims": claims,
        "seconds": round(time.perf_counter() - t_all, 1),
        "work_dir": str(work),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
