"""The CLI end to end: `stillflow broker`, `topics`, `tail`, as a user runs them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from stillflow.contracts import TraceStep
from stillflow.kafka import with_bootstrap
from stillflow.sdk import TraceEmitter
from stillflow.settings import StillflowSettings
from stillflow.topics import catalogue

pytestmark = pytest.mark.e2e


def _run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stillflow.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLFLOW_")}
    env["STILLFLOW_STATE_DIR"] = str(tmp_path / "state")
    return env


def test_broker_topics_tail_and_clean_shutdown(cli_env) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "stillflow.cli", "broker"], env=cli_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        bootstrap = proc.stdout.readline().strip()
        assert bootstrap.startswith("127.0.0.1:"), proc.stderr.read()
        # Other commands find the running broker through the state file, no env needed.
        created = _run("topics", "create", env=cli_env)
        assert created.returncode == 0, created.stderr
        assert "stillflow.trace.steps" in created.stdout and "created" in created.stdout
        again = _run("topics", "create", env=cli_env)
        assert again.returncode == 0 and "created" not in again.stdout and again.stdout.count("exists") == len(catalogue())
        listed = _run("topics", "list", env=cli_env)
        assert listed.returncode == 0, listed.stderr
        assert "stillflow.dlq" in listed.stdout and "DeadLetter" in listed.stdout
        assert "stillflow.otlp.spans" in listed.stdout and "OTLP otlp_proto" in listed.stdout
        # the OTLP topics hold protobuf, not JSON events: tail says so instead of printing garbage
        otlp = _run("tail", "stillflow.otlp.spans", "--max", "1", "--timeout", "1", env=cli_env)
        assert otlp.returncode == 2 and "OTLP protobuf" in otlp.stderr

        async def emit() -> None:
            settings = with_bootstrap(StillflowSettings(), bootstrap)
            async with TraceEmitter(settings) as em:
                await em.emit_step(trace_id="cli-1", task_id="k", seq=0,
                                   step=TraceStep(step_type="reasoning", content="visible in tail"))
                await em.send_raw(settings.topics.trace_steps, b"cli-1", b"\x00garbage", None)

        asyncio.run(emit())
        tail = _run("tail", "stillflow.trace.steps", "--from-beginning", "--max", "2", "--timeout", "20",
                    env=cli_env)
        assert tail.returncode == 0, tail.stderr
        assert '"content": "visible in tail"' in tail.stdout
        assert "undecodable (invalid_json)" in tail.stdout
        unknown = _run("tail", "no.such.topic", "--max", "1", env=cli_env)
        assert unknown.returncode == 2 and "unknown topic 'no.such.topic'" in unknown.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "broker stopped" in err
    assert not (cli_env and os.path.exists(os.path.join(cli_env["STILLFLOW_STATE_DIR"], "broker.json")))


def test_commands_without_a_broker_say_what_to_do(cli_env) -> None:
    res = _run("topics", "list", env=cli_env)
    assert res.returncode == 2
    assert "no Kafka broker" in res.stderr and "stillflow broker" in res.stderr
    assert "Traceback" not in res.stderr


def test_sigint_stops_the_broker(cli_env) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "stillflow.cli", "broker", "--create-topics"], env=cli_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("127.0.0.1:")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode == 0 and time.monotonic() - t0 < 10


def test_second_broker_does_not_take_over_the_state_file(cli_env) -> None:
    first = subprocess.Popen([sys.executable, "-m", "stillflow.cli", "broker"], env=cli_env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        addr1 = first.stdout.readline().strip()
        second = subprocess.Popen([sys.executable, "-m", "stillflow.cli", "broker"], env=cli_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        addr2 = second.stdout.readline().strip()
        assert addr1 != addr2
        second.send_signal(signal.SIGTERM)
        _, err2 = second.communicate(timeout=20)
        assert f"another `stillflow broker` is running on {addr1}" in err2
        state = os.path.join(cli_env["STILLFLOW_STATE_DIR"], "broker.json")
        with open(state) as fh:
            assert addr1 in fh.read()  # still the first one's, after the second stopped
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.communicate(timeout=20)
