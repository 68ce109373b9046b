"""`stillflow up`: the service plan, and the whole thing started through the CLI with the sim fleet."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stillflow.cli import build_parser
from stillflow.up import plan_services
from tests.up_process import metric_total, running_up, wait_for_scored


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["up", *argv])


def test_plan_without_sim_needs_only_the_services(tmp_path: Path) -> None:
    plan = plan_services(_args("--teacher-url", "http://teacher:9000/v1"), tmp_path)
    assert [s.name for s in plan] == ["streams", "otlp", "trainer", "router"]
    router = plan[-1].args
    assert router[router.index("--teacher-url") + 1] == "http://teacher:9000/v1"
    assert router[router.index("--registry") + 1] == str(tmp_path / "models")
    trainer = plan[2].args
    assert trainer[trainer.index("--registry") + 1] == str(tmp_path / "models")  # one registry for both
    otlp = plan[1].args
    assert otlp[otlp.index("--port") + 1] == "4318"  # OTLP/HTTP's standard port
    for s in plan:  # every planned command is one the CLI accepts
        build_parser().parse_args(s.args)


def test_plan_with_sim_points_the_fleet_at_the_router(tmp_path: Path) -> None:
    plan = plan_services(_args("--sim", "--quick", "--router-port", "8201", "--teacher-port", "8101",
                               "--retrain-threshold", "50", "--min-examples", "20"), tmp_path)
    names = [s.name for s in plan]
    assert names == ["streams", "otlp", "trainer", "teacher", "router", "fleet"]
    by = {s.name: s.args for s in plan}
    assert by["router"][by["router"].index("--teacher-url") + 1] == "http://127.0.0.1:8101/v1"
    assert "--report-to-router" in by["fleet"] and "http://127.0.0.1:8201/v1" in by["fleet"]
    assert {"--quick", "--threshold", "50", "--min-examples", "20"} <= set(by["trainer"])
    assert "--families" not in by["fleet"] and "--sft-steps" not in by["trainer"]
    for s in plan:
        build_parser().parse_args(s.args)
    by = {s.name: s.args for s in plan_services(_args("--sim", "--fleet-families", "lookup", "--sft-steps", "64"),
                                                tmp_path)}
    assert by["fleet"][by["fleet"].index("--families") + 1] == "lookup"
    assert by["trainer"][by["trainer"].index("--sft-steps") + 1] == "64"


def test_up_without_a_teacher_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLFLOW_")}
    proc = subprocess.run([sys.executable, "-m", "stillflow.cli", "up", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "--teacher-url" in proc.stderr and "--sim" in proc.stderr


@pytest.mark.slow
@pytest.mark.e2e
def test_up_with_the_sim_turns_traffic_into_scored_traces(tmp_path: Path) -> None:
    with running_up(tmp_path) as up:
        scored, served = wait_for_scored(up)
        assert up.proc.poll() is None, up.proc.stdout.read() if up.proc.stdout else ""
        assert served > 0, "the fleet's requests did not go through the router"
        assert scored >= 10, f"only {scored} traces scored from the router's events"
        assert metric_total(up.metrics_url("streams"), "stillflow_streams_dead_letters_total") == 0
    out = up.output[-1]
    assert up.proc.returncode == 0, out[-3000:]
    assert "stillflow is up" in out and "stopping" in out
    log = (up.out_dir / "up.log").read_text()
    for name in ("streams", "trainer", "teacher", "router", "fleet"):
        assert f"started {name}" in log
