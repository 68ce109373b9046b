"""`stillflow up --sim --quick` as a subprocess on free ports, for the end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from stillflow.broker import die_with_parent, free_port


@dataclass
class Up:
    proc: subprocess.Popen[str]
    out_dir: Path
    ports: dict[str, int]
    output: list[str] = field(default_factory=list)

    def metrics_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}/metrics"


def metric_total(url: str, name: str) -> float:
    """The sum of a metric's samples on a /metrics page (0 when the page does not answer)."""
    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@contextmanager
def running_up(tmp_path: Path, *extra: str) -> Iterator[Up]:
    """Start it, yield once it has scored traffic from the router, SIGINT it at the end (the exit status and
    output are left in `Up.proc.returncode` / `Up.output`)."""
    ports = {k: free_port() for k in ("router", "streams", "trainer", "teacher", "otlp")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLFLOW_")}
    env.update(STILLFLOW_STATE_DIR=str(tmp_path / "state"), STILLFLOW_STREAMS__SESSION_TIMEOUT_S="6",
               STILLFLOW_SIM__LATENCY_MS="50", STILLFLOW_SIM__LATENCY_JITTER_MS="10")
    out_dir = tmp_path / "up"
    cmd = [sys.executable, "-m", "stillflow.cli", "up", "--sim", "--quick", "--out", str(out_dir),
           "--router-port", str(ports["router"]), "--streams-port", str(ports["streams"]),
           "--trainer-metrics-port", str(ports["trainer"]), "--teacher-port", str(ports["teacher"]),
           "--otlp-port", str(ports["otlp"]), "--fleet-rate", "4", "--window", "5", "--quiet", *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=die_with_parent)
    up = Up(proc, out_dir, ports)
    try:
        yield up
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        up.output.append(out or "")


def wait_for_scored(up: Up, n: int = 10, timeout: float = 150) -> tuple[float, float]:
    """(traces scored by the stream, requests served by the router) once at least `n` are scored."""
    deadline = time.monotonic() + timeout
    scored = served = 0.0
    while time.monotonic() < deadline and up.proc.poll() is None:
        scored = metric_total(up.metrics_url("streams"), "stillflow_streams_traces_scored_total")
        served = metric_total(up.metrics_url("router"), "stillflow_router_requests_total")
        if scored >= n:
            break
        time.sleep(1)
    return scored, served
