"""Run `stillflow streams` as a real subprocess for tests (so kill -9 is a real kill)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stillflow.broker import die_with_parent, free_port
from stillflow.settings import StillflowSettings


def streams_env(settings: StillflowSettings, app_id: str, **streams: object) -> dict[str, str]:
    """The environment a worker needs to use this test's broker, topics and short timings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLFLOW_")}
    env["STILLFLOW_KAFKA__BOOTSTRAP_SERVERS"] = settings.kafka.bootstrap_servers or ""
    for role, name in settings.topics.model_dump().items():
        env[f"STILLFLOW_TOPICS__{role.upper()}"] = name
    defaults: dict[str, object] = {
        "app_id": app_id,
        "session_timeout_s": 6,
        "window_size_s": 5,
        "window_grace_s": 1,
        "window_idle_close_s": 3,
        "window_tick_interval_s": 1,
        "expiry_check_interval_s": 1,
        "standby_replicas": 0,
        "data_dir": os.path.join(tempfile.gettempdir(), "stillflow-test-streams"),
    }
    defaults.update(streams)
    for k, v in defaults.items():
        env[f"STILLFLOW_STREAMS__{k.upper()}"] = str(v)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class StreamsWorker:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.web_port = 0

    def start(self) -> StreamsWorker:
        self.web_port = free_port()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stillflow.cli", "streams", "--web-port", str(self.web_port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
        log.close()
        return self

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
