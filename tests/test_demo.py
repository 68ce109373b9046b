"""`stillflow demo` end to end through the CLI (short traffic, no training: the trainer has its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_runs_the_pipeline_and_reports(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLFLOW_")}
    env["STILLFLOW_STATE_DIR"] = str(tmp_path / "state")  # no `stillflow broker` to find: embedded
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "stillflow.cli", "demo", "--quick", "--no-train", "--duration", "6", "--rate", "20",
         "--window", "3", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["traces_scored"] >= 60
    assert 0 < report["traces_passed"] < report["traces_scored"]  # the teacher's mistakes are caught
    assert report["sft_examples"] == report["traces_passed"]
    assert report["windows_closed"] >= 1
    assert report["pairs"] >= 1  # tasks recur (--task-pool), so best-vs-worst pairs are mined
    assert sum(report["gate_rejections"].values()) > 0
    assert "| gate | traces |" in (out / "report.md").read_text()
    log = (out / "demo.log").read_text()
    assert "[streams]" in log and "[fleet]" in log
