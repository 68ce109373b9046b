"""`stillflow demo`'s flags → the services it plans and the budgets it runs on (nothing started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillflow.cli import build_parser
from stillflow.demo import _budgets, _defaults, _service_env, _up_args
from stillflow.demo_phases import Budgets
from stillflow.up import plan_services

PORTS = {"router": 18200, "streams": 16066, "trainer": 19108, "teacher": 18100}


def _plan(*argv: str, tmp_path: Path) -> tuple[dict[str, list[str]], Budgets]:
    args = build_parser().parse_args(["demo", *argv])
    _defaults(args)
    budgets = _budgets(args)
    plan = plan_services(_up_args(args, PORTS, budgets), tmp_path)
    for s in plan:  # every planned command is one the CLI accepts
        build_parser().parse_args(s.args)
    return {s.name: s.args for s in plan}, budgets


def test_quick_demo_plans_the_flywheel_through_the_router(tmp_path: Path) -> None:
    by, budgets = _plan("--quick", tmp_path=tmp_path)
    assert list(by) == ["streams", "trainer", "teacher", "router", "fleet"]
    fleet = by["fleet"]
    assert "--report-to-router" in fleet and f"http://127.0.0.1:{PORTS['router']}/v1" in fleet
    assert fleet[fleet.index("--task-pool") + 1] == "2000"  # varied training data
    assert float(fleet[fleet.index("--duration") + 1]) > budgets.max_s  # the demo, not the fleet, ends the run
    # the 5-minute run: the narrow job (a full run's default is all six families, six workloads)
    assert fleet[fleet.index("--families") + 1] == "lookup,recovery"
    trainer = by["trainer"]
    assert trainer[trainer.index("--eval-tasks") + 1] == "40"  # held-out tasks per workload
    assert "--quick" in trainer and trainer[trainer.index("--sft-steps") + 1] == "800"
    assert trainer[trainer.index("--threshold") + 1] == trainer[trainer.index("--min-examples") + 1] == "150"
    router = by["router"]
    assert router[router.index("--teacher-url") + 1] == f"http://127.0.0.1:{PORTS['teacher']}/v1"
    assert "--ready-without-student" in router  # teacher-only until a student is promoted
    assert budgets == Budgets.quick()


def test_full_demo_budgets_and_overrides(tmp_path: Path) -> None:
    by, _ = _plan(tmp_path=tmp_path)
    assert "--families" not in by["fleet"]  # all six families, six workloads
    by, budgets = _plan("--student-phase-s", "7", "--trainer-profile", "settings", "--retrain-threshold", "40",
                        tmp_path=tmp_path)
    assert budgets.student_phase_s == 7 and budgets.max_s == Budgets.full().max_s
    assert "--quick" not in by["trainer"]  # the trainer's settings come from STILLFLOW_TRAINER__...
    assert "--sft-steps" not in by["trainer"]
    assert {"--threshold", "40", "--min-examples"} <= set(by["trainer"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--max-seconds", "0"])


def test_the_job_and_the_training_budget_are_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    by, _ = _plan(tmp_path=tmp_path)  # full: more steps than the quick profile's (six workloads to learn)
    assert by["trainer"][by["trainer"].index("--sft-steps") + 1] == "1200"
    by, _ = _plan("--quick", "--families", "all", tmp_path=tmp_path)
    assert "--families" not in by["fleet"]  # a quick run of the whole mix, when asked for
    by, _ = _plan("--families", "lookup,recovery", "--sft-steps", "300", tmp_path=tmp_path)
    assert by["fleet"][by["fleet"].index("--families") + 1] == "lookup,recovery"  # the narrow job, as a flag
    assert by["trainer"][by["trainer"].index("--sft-steps") + 1] == "300"
    by, _ = _plan("--families", " lookup, multi_hop ", tmp_path=tmp_path)
    assert by["fleet"][by["fleet"].index("--families") + 1] == "lookup,multi_hop"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--families", "lookup,bogus"])
    assert "unknown task family bogus; families: lookup," in capsys.readouterr().err


def test_service_env_prices_the_teacher_and_keeps_settings_given_in_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLFLOW_STREAMS__WINDOW_GRACE_S", "9")
    args = build_parser().parse_args(["demo", "--teacher-price-per-1k", "0.02"])
    env = _service_env("127.0.0.1:9092", tmp_path, args)
    assert env["STILLFLOW_KAFKA__BOOTSTRAP_SERVERS"] == "127.0.0.1:9092"
    assert env["STILLFLOW_SIM__PRICE_PER_1K_TOKENS"] == "0.02"  # the cost model's teacher price is the bill
    assert env["STILLFLOW_STREAMS__WINDOW_GRACE_S"] == "9"
    assert env["STILLFLOW_STREAMS__WINDOW_IDLE_CLOSE_S"] == "4"


def test_the_gate_judges_what_the_router_would_serve_unless_told_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def scope(*argv: str) -> str:
        args = build_parser().parse_args(["demo", *argv])
        _defaults(args)
        return _service_env("127.0.0.1:9092", tmp_path, args)["STILLFLOW_TRAINER__GATE__SCOPE"]

    monkeypatch.delenv("STILLFLOW_TRAINER__GATE__SCOPE", raising=False)
    assert scope() == "routed"
    assert scope("--gate-scope", "all") == "all"
    monkeypatch.setenv("STILLFLOW_TRAINER__GATE__SCOPE", "all")
    assert scope() == "all"  # a setting given in the environment wins over the demo's default


def test_a_pretrained_student_scales_the_budgets_and_trains_that_base(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import stillflow.demo as demo

    by, budgets = _plan("--quick", "--student", "gemma3-270m", tmp_path=tmp_path)
    scale = demo._PRETRAINED_SCALE[demo._device()]
    assert budgets.teacher_phase_s == Budgets.quick().teacher_phase_s * scale > Budgets.quick().teacher_phase_s
    assert "--quick" in by["trainer"] and "--sft-steps" not in by["trainer"]  # the base's own quick profile
    assert f"budget is scaled x{scale:g}" in capsys.readouterr().out  # and the demo says why
    args = build_parser().parse_args(["demo", "--student", "gemma3-270m"])
    _defaults(args)
    env = _service_env("127.0.0.1:9092", tmp_path, args)
    assert env["STILLFLOW_TRAINER__STUDENT__BASE"] == "gemma3-270m"
    assert env["STILLFLOW_TRAINER__STUDENT__LORA__ENABLED"] == "true"
    assert "STILLFLOW_TRAINER__STUDENT__BASE" not in _service_env("127.0.0.1:9092", tmp_path,
                                                                  build_parser().parse_args(["demo"]))


def test_retrains_train_the_latest_version_further_unless_told_not_to(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STILLFLOW_TRAINER__WARM_START", raising=False)
    monkeypatch.delenv("STILLFLOW_TRAINER__WARM_START_SFT_STEPS", raising=False)

    def env_of(*argv: str) -> dict[str, str]:
        args = build_parser().parse_args(["demo", *argv])
        _defaults(args)
        return _service_env("127.0.0.1:9092", tmp_path, args)

    full, quick = env_of(), env_of("--quick")
    assert full["STILLFLOW_TRAINER__WARM_START"] == quick["STILLFLOW_TRAINER__WARM_START"] == "latest"
    assert (full["STILLFLOW_TRAINER__WARM_START_SFT_STEPS"], quick["STILLFLOW_TRAINER__WARM_START_SFT_STEPS"]) == \
        ("300", "200")
    assert env_of("--warm-start-steps", "150")["STILLFLOW_TRAINER__WARM_START_SFT_STEPS"] == "150"
    assert "STILLFLOW_TRAINER__WARM_START" not in env_of("--warm-start-steps", "0")
    monkeypatch.setenv("STILLFLOW_TRAINER__WARM_START", "live")  # the environment wins
    assert env_of()["STILLFLOW_TRAINER__WARM_START"] == "live"
    args = build_parser().parse_args(["demo", "--trainer-profile", "settings"])  # the settings as they are
    _defaults(args)
    assert "STILLFLOW_TRAINER__WARM_START" not in _service_env("127.0.0.1:9092", tmp_path, args)
