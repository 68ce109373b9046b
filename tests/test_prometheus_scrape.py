"""A real Prometheus (Debian's `prometheus`) scrapes every service that `stillflow up --sim` starts.

Prometheus is started by the test; when it is not installed the test installs it with apt-get (as root,
where apt-get exists) or skips saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from stillflow.broker import die_with_parent, free_port
from tests.up_process import running_up, wait_for_scored

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.integration]

# one metric each service always exports, and what scrapes it
EXPECTED = {
    "streams": "stillflow_streams_traces_scored_total",
    "trainer": "stillflow_trainer_pending_examples",
    "router": "stillflow_router_requests_total",
}


def _prometheus() -> str:
    found = shutil.which("prometheus")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("no `prometheus` binary, and apt-get is unavailable or this is not root to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:  # stale package lists: refresh once
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    found = shutil.which("prometheus")
    if not found:
        pytest.skip(f"`apt-get install prometheus` failed: {(res.stderr or res.stdout)[-300:]}")
    return found


def _api(port: int, path: str, **params: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


def test_prometheus_scrapes_every_service(tmp_path: Path) -> None:
    binary = _prometheus()
    with running_up(tmp_path) as up:
        scored, _ = wait_for_scored(up, n=5)
        assert scored >= 5, up.proc.stdout.read() if up.proc.poll() is not None and up.proc.stdout else scored
        config = tmp_path / "prometheus.yml"
        jobs = "\n".join(
            f"  - job_name: {name}\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{up.ports[name]}']"
            for name in EXPECTED
        )
        config.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}\n")
        port = free_port()
        prom = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"), preexec_fn=die_with_parent,
        )
        try:
            deadline = time.monotonic() + 60
            health: dict[str, str] = {}
            while time.monotonic() < deadline:
                try:
                    targets = _api(port, "targets")["data"]["activeTargets"]
                    health = {t["labels"]["job"]: t["health"] for t in targets}
                except OSError:
                    health = {}
                if len(health) == len(EXPECTED) and all(h == "up" for h in health.values()):
                    break
                time.sleep(1)
            assert health == {name: "up" for name in EXPECTED}, (health, (tmp_path / "prometheus.log").read_text()[-2000:])
            for job, metric in EXPECTED.items():
                deadline = time.monotonic() + 20
                result: list = []
                while time.monotonic() < deadline and not result:
                    result = _api(port, "query", query=f'{metric}{{job="{job}"}}')["data"]["result"]
                    time.sleep(0.5)
                assert result, f"{metric} not scraped from {job}"
        finally:
            prom.terminate()
            prom.wait(20)
