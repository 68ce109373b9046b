"""Fault: `kill -9` of a router replica under load (issue 8).

Two real `stillflow router` processes (teacher-only, publishing to this test's topics) in front of the
sim teacher server. A client spreads requests over both, as a load balancer does: round robin, and a
request whose connection fails (refused, reset, closed mid-response) is retried once on the other
replica. One replica is killed with SIGKILL mid-load: the other keeps serving, and no request fails
after its one retry.

Events: every request the survivor answered has its `RouteDecision` on the topic. The killed replica
publishes in the background after answering (`router.emit`: publishing never delays a request), so
the events of the requests it answered in its last few milliseconds can be lost with it; the test
measures how many (printed) and bounds them by what it answered in its last second.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from sim.tasks import SYSTEM_PROMPT, get_suite
from sim.tools import TOOL_SPECS
from stillflow.broker import die_with_parent, free_port
from stillflow.contracts import RouteDecision, decode
from stillflow.kafka import read_to_end
from stillflow.settings import StillflowSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]

# What a load balancer retries on: the connection failed, or closed before a response came.
CONNECTION_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
                     httpx.ConnectTimeout)


def _env(settings: StillflowSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLFLOW_")}
    env["STILLFLOW_KAFKA__BOOTSTRAP_SERVERS"] = settings.kafka.bootstrap_servers or ""
    env["STILLFLOW_KAFKA__SESSION_TIMEOUT_MS"] = "6000"
    env["STILLFLOW_KAFKA__HEARTBEAT_INTERVAL_MS"] = "1000"
    for role, name in settings.topics.model_dump().items():
        env[f"STILLFLOW_TOPICS__{role.upper()}"] = name
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([sys.executable, "-m", "stillflow.cli", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    log.close()
    return proc


async def _ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1) as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} not ready (rc {proc.poll()}):\n{log_path.read_text(errors='replace')[-3000:]}")


class Balancer:
    """Round robin over the replicas; a connection error is retried once on the next replica."""

    def __init__(self, urls: list[str], body: dict, workers: int = 6) -> None:
        self.urls = urls
        self.body = body
        self.workers = workers
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10, connect=2))
        self.log: list[dict] = []  # one entry per request: when, replica that answered, status, retried
        self.stop = False
        self.n = 0

    async def _one(self, trace: str) -> None:
        first = self.n % len(self.urls)
        t0 = time.monotonic()
        entry = {"t": t0, "trace": trace, "retried": False, "status": 0, "replica": None, "error": None}
        for attempt in range(2):  # the request, then one retry on the other replica
            i = (first + attempt) % len(self.urls)
            try:
                r = await self.http.post(f"{self.urls[i]}/chat/completions", json=self.body,
                                         headers={"X-Stillflow-Trace-Id": trace})
                entry.update(status=r.status_code, replica=i, t_done=time.monotonic())
                break
            except CONNECTION_ERRORS as exc:
                entry.update(retried=attempt == 0, error=f"{type(exc).__name__}: {exc}")
        self.log.append(entry)

    async def _worker(self, w: int) -> None:
        while not self.stop:
            self.n += 1
            await self._one(f"fr-{w}-{self.n}")

    async def run(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._worker(w)) for w in range(self.workers)]


async def test_router_replica_killed_under_load_the_other_keeps_serving(settings: StillflowSettings,
                                                                         tmp_path: Path) -> None:
    env = _env(settings)
    tport, ports = free_port(), [free_port(), free_port()]
    teacher = f"http://127.0.0.1:{tport}/v1"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_spawn(["sim", "teacher-server", "--port", str(tport), "--policy", "perfect", "--latency-ms",
                             "20", "--jitter-ms", "0"], env, tmp_path / "teacher.log"))
        for i, port in enumerate(ports):
            procs.append(_spawn(["router", "--port", str(port), "--teacher-url", teacher, "--teacher-only"],
                                {**env, "STILLFLOW_ROUTER__REPLICA_ID": f"fault-{i}"}, tmp_path / f"router{i}.log"))
        await _ready(f"http://127.0.0.1:{tport}/readyz", procs[0], tmp_path / "teacher.log")
        for i, port in enumerate(ports):
            await _ready(f"http://127.0.0.1:{port}/readyz", procs[1 + i], tmp_path / f"router{i}.log")
        victim, survivor = procs[1], procs[2]

        task = get_suite(0).instance("lookup", 10)
        body = {"model": "teacher", "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                                 {"role": "user", "content": task.question}],
                "tools": [t.to_openai() for t in TOOL_SPECS]}
        lb = Balancer([f"http://127.0.0.1:{p}/v1" for p in ports], body)
        for port in ports:  # warm each replica (its first request connects to the teacher and the broker)
            for _ in range(3):
                r = await lb.http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
        tasks = await lb.run()
        try:
            await asyncio.sleep(1.5)
            t_kill = time.monotonic()
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            await asyncio.sleep(3.0)
        finally:
            lb.stop = True
            await asyncio.gather(*tasks)
            await lb.http.aclose()
        assert survivor.poll() is None, "the surviving replica is still up"
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{ports[1]}/readyz")).status_code == 200
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    log = lb.log
    failed = [e for e in log if e["status"] != 200]
    before = [e for e in log if e.get("t_done", t_kill) < t_kill]
    after = [e for e in log if e["t"] > t_kill + 0.05]
    retried = [e for e in log if e["retried"]]
    print(f"\n{len(log)} requests ({len(before)} before the kill, {len(after)} after), {len(retried)} retried on "
          f"the other replica ({dict(Counter(e['error'].split(':')[0] for e in retried))}), {len(failed)} failed; "
          f"served by {dict(Counter(e['replica'] for e in log))}")
    assert failed == [], failed[:5]
    assert {e["replica"] for e in before} == {0, 1}, "both replicas served before the kill"
    assert after and {e["replica"] for e in after} == {1}, "only the survivor serves after the kill"
    assert retried, "the kill was seen by the client (and absorbed by its one retry)"
    assert len(after) / 3.0 >= 10, "the survivor kept serving under load"

    decisions = [decode(v, RouteDecision) for v in await read_to_end(settings, settings.topics.router_decisions)]
    by_trace = Counter(d.trace_id for d in decisions)
    survivor_traces = {e["trace"] for e in log if e["replica"] == 1}
    assert survivor_traces <= set(by_trace), "every request the survivor answered has its decision"
    victim_answered = [e for e in log if e["replica"] == 0]
    lost = [e for e in victim_answered if e["trace"] not in by_trace]
    print(f"decisions: {len(by_trace)} traces; the killed replica answered {len(victim_answered)}, the decisions "
          f"of {len(lost)} of them died with it")
    assert all(e["t_done"] > t_kill - 1.0 for e in lost), "only events of its last second can be lost"
