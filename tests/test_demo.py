"""`stillflow demo` end to end through the CLI, in a tiny configuration.

The whole flywheel on the session broker (topics of its own): fleet → router → streams → the trainer
(a tiny student, seconds per run) → a version in the registry → promoted → the router switches → a
student phase → the report. A student trained for two steps never passes the gate, so the test plays
the operator once the trainer has registered (and rejected) v0001: `stillflow models promote v0001`,
the same `promoted` event the trainer publishes when its gate passes; it serves every workload v0001 was
evaluated on (the two families the test runs). The figures of the report are
the unit tests' business (tests/test_demo_report.py); here: the phases are read from what really
happened, and every file of the report is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stillflow.broker import die_with_parent
from stillflow.registry import ModelRegistry
from stillflow.settings import TopicNames

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# A tiny student and a two-task evaluation: a training run takes seconds (as in tests/test_fault_trainer.py).
TINY = {"STUDENT__HIDDEN_SIZE": "32", "STUDENT__NUM_LAYERS": "1", "STUDENT__NUM_HEADS": "2",
        "STUDENT__INTERMEDIATE_SIZE": "64", "STUDENT__VOCAB_SIZE": "400", "STUDENT__COPY_WARMUP_STEPS": "2",
        "SFT__MAX_STEPS": "2", "SFT__BATCH_SIZE": "4", "DPO__MAX_STEPS": "1", "DPO__BATCH_SIZE": "2",
        "DPO__MIN_PAIRS": "1", "EVAL__TASKS": "2", "EVAL__OFFLINE_EXAMPLES": "1", "EVAL__MAX_TURNS": "1",
        "EVAL__MAX_NEW_TOKENS": "8", "GATE__MIN_EVAL_TASKS": "1", "THREADS": "1", "POLL_TIMEOUT_S": "0.5"}


def _env(broker: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLFLOW_")}
    env["STILLFLOW_KAFKA__BOOTSTRAP_SERVERS"] = broker
    for role, name in TopicNames().with_prefix(f"t{os.urandom(5).hex()}.").model_dump().items():
        env[f"STILLFLOW_TOPICS__{role.upper()}"] = name
    env.update({f"STILLFLOW_TRAINER__{k}": v for k, v in TINY.items()})
    env["STILLFLOW_ROUTER__MAX_NEW_TOKENS"] = "32"  # the untrained student's turns are cut off sooner
    env["STILLFLOW_STATE_DIR"] = str(tmp_path / "state")
    env["TMPDIR"] = str(tmp_path)
    return env


def test_demo_runs_the_flywheel_through_the_router_and_reports_its_phases(broker: str, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = _env(broker, tmp_path)
    cmd = [sys.executable, "-m", "stillflow.cli", "demo", "--out", str(out), "--trainer-profile", "settings",
           "--teacher-phase-s", "100", "--student-phase-s", "12", "--retrain-wait-s", "0", "--final-phase-s", "5",
           "--max-seconds", "150", "--rate", "4", "--window", "3", "--retrain-threshold", "20",
           "--teacher-latency-ms", "50", "--teacher-jitter-ms", "10", "--progress-interval", "3",
           "--families", "lookup,recovery"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=die_with_parent)
    try:
        registry = ModelRegistry(out / "models", "student")
        deadline = time.monotonic() + 140
        while time.monotonic() < deadline and proc.poll() is None:
            if "v0001" in registry.versions() and registry.status("v0001") in ("rejected", "promoted"):
                break
            time.sleep(1)
        else:
            pytest.fail("no v0001 registered by the demo's trainer")
        if registry.status("v0001") == "rejected":
            promote = subprocess.run([sys.executable, "-m", "stillflow.cli", "models", "promote", "v0001",
                                      "--registry", str(out / "models"), "--reason", "e2e: the operator"],
                                     env=env, capture_output=True, text=True, timeout=60)
            assert promote.returncode == 0, promote.stdout + promote.stderr
        output, _ = proc.communicate(timeout=170)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, 3), output[-4000:]  # 3: it ran to its end and a check failed
    assert "stopping: the student phase ran" in output or "stopping: the retrain" in output, output[-4000:]

    report = json.loads((out / "report.json").read_text())
    phases = report["phases"]
    assert [p["label"] for p in phases][:2] == ["teacher-only", "student v0001"], phases
    teacher, student = phases[0], phases[1]
    assert teacher["requests"] > 0 and teacher["student_requests"] == 0 and teacher["episodes"] > 0
    assert student["requests"] > 0 and student["start_s"] >= teacher["start_s"]
    assert student["reasons"] and "no_student" not in student["reasons"]  # the router consulted v0001
    promoted = [v for v in report["versions"] if v["status"] == "promoted"]
    assert promoted[0]["version"] == "v0001" and promoted[0]["live_s"] == student["start_s"]
    assert promoted[0]["switch_seconds"] >= 0
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == {"promoted_workload", "student_share_last_phase", "task_success_vs_teacher",
                           "cost_per_task_down", "flywheel_turns_again"}
    assert checks["promoted_workload"]["result"] == "PASS"
    all_pass = all(c["result"] == "PASS" for c in checks.values())
    assert (proc.returncode == 0) == all_pass and (all_pass or "acceptance checks failed (exit status 3)" in output)
    # the operator's promotion of a version the gate rejected serves every workload it was evaluated on
    assert set(promoted[0]["workloads"]) == {"lookup", "recovery"}, promoted[0]
    assert "workload_not_served" not in student["reasons"]
    assert report["sweep"]["version"] == "v0001"  # from the registry's eval_report.json
    assert report["totals"]["scored"] > 0 and report["totals"]["sft_examples"] >= 20

    md = (out / "report.md").read_text()
    assert "## Acceptance checks" in md and "student v0001" in md
    for name in ("share_quality.png", "quality_cost.png", "gate_rejections.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (out / "demo.log").read_text()
    for service in ("streams", "trainer", "teacher", "router", "fleet"):
        assert f"[{service}]" in log
