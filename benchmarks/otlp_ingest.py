"""OTLP ingest bench: traces/s from an instrumented fleet's spans through `stillflow otlp` + the streams worker,
vs the same episodes through the SDK path (`TraceEmitter`), on the same broker and worker kind, in one run.

The spans are real: the sim fleet instrumented with `opentelemetry-instrumentation-genai-openai` (content on),
encoded by the OTLP exporter library's own encoder (`tests.otel_fleet --record-file`), then grouped into
export requests of up to 512 spans as the BatchSpanProcessor sends them. Each round replays them under fresh
trace ids: the requests go to the receiver (a `stillflow otlp` process) from 4 concurrent clients, each
episode's outcome is reported to it by trace id as an agent would, and the round ends when the worker has
published every trace's ScoredTrace. The SDK round emits the SDK-recorded traces of the same episodes (steps +
outcome). Round 0 of each warms up and is not counted; the median round is reported. Target: otel / sdk >= 0.5.

    python -m benchmarks.otlp_ingest [--episodes 40 --copies 50 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from benchmarks.common import bench_broker, children_cpu_seconds, cpu_seconds, emit_result, progress
from stillflow.broker import die_with_parent, free_port
from stillflow.contracts import AgentTrace
from stillflow.kafka import ensure_topics, with_bootstrap
from stillflow.sdk import TraceEmitter
from stillflow.settings import StillflowSettings, TopicNames

ROOT = Path(__file__).resolve().parent.parent
BATCH_SPANS = 512  # the BatchSpanProcessor's max_export_batch_size


def _tree_cpu(pid: int) -> float:
    """A process's CPU plus its live children's (the worker's scoring process)."""
    return cpu_seconds(pid) + children_cpu_seconds(pid)


def _record(tmp: Path, episodes: int) -> tuple[list[Any], list[dict[str, Any]]]:
    """(the recorded spans, the episodes as the SDK recorded them)."""
    from opentelemetry.proto.trace.v1 import trace_pb2

    from tests.otel_fleet import read_record_file

    rec, out = tmp / "spans.records", tmp / "episodes.json"
    subprocess.run([sys.executable, "-m", "tests.otel_fleet", "--instrumentation", "genai", "--endpoint", "none",
                    "--episodes", str(episodes), "--errors", "--record-file", str(rec), "--out", str(out)],
                   cwd=str(ROOT), check=True, stdout=subprocess.DEVNULL)
    datas = []
    for _key, raw in read_record_file(rec):
        td = trace_pb2.TracesData()
        td.ParseFromString(raw)
        datas.append(td)
    return datas, json.loads(out.read_text())


def _new_id(old: bytes, salt: str) -> bytes:
    return hashlib.blake2b(old + salt.encode(), digest_size=16).digest()


def _requests(datas: list[Any], salt: str) -> tuple[list[bytes], dict[str, str]]:
    """Export requests (serialized) of the recorded spans under fresh trace ids; old hex -> new hex."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    ids: dict[str, str] = {}
    bodies, req, n = [], trace_service_pb2.ExportTraceServiceRequest(), 0
    for td in datas:
        for rs in td.resource_spans:
            r = req.resource_spans.add()
            r.resource.CopyFrom(rs.resource)
            for ss in rs.scope_spans:
                s = r.scope_spans.add()
                s.scope.CopyFrom(ss.scope)
                for span in ss.spans:
                    new = s.spans.add()
                    new.CopyFrom(span)
                    new.trace_id = _new_id(span.trace_id, salt)
                    ids[span.trace_id.hex()] = new.trace_id.hex()
                    n += 1
        if n >= BATCH_SPANS:
            bodies.append(req.SerializeToString())
            req, n = trace_service_pb2.ExportTraceServiceRequest(), 0
    if n:
        bodies.append(req.SerializeToString())
    return bodies, ids


class _Counter:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                         auto_offset_reset="earliest", fetch_max_wait_ms=10)
        self.seen = 0

    async def wait_for(self, total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.seen < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.seen} of {total} scored traces after {timeout}s")
            batch = await self.consumer.getmany(timeout_ms=20, max_records=5000)
            self.seen += sum(len(v) for v in batch.values())


async def _ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
            try:
                if (await http.get(url, timeout=1)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-otlp-"))
    progress(f"recording {args.episodes} instrumented episodes (genai instrumentation, OTLP encoder)")
    datas, episodes = _record(tmp, args.episodes)
    sdk_traces = [AgentTrace.model_validate(ep["trace"]) for ep in episodes]
    by_hex = {ep["otel_trace_id"]: ep["trace"] for ep in episodes}
    n_traces = len(episodes) * args.copies
    with bench_broker() as bootstrap:
        s = with_bootstrap(StillflowSettings(topics=TopicNames().with_prefix(f"b{uuid.uuid4().hex[:6]}.")), bootstrap)
        await ensure_topics(s)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STILLFLOW_")}
        env["STILLFLOW_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
        for role, name in s.topics.model_dump().items():
            env[f"STILLFLOW_TOPICS__{role.upper()}"] = name
        wport, rport = free_port(), free_port()
        env.update(STILLFLOW_STREAMS__APP_ID=f"bench-otlp-{uuid.uuid4().hex[:6]}",
                   STILLFLOW_STREAMS__SESSION_TIMEOUT_S="6",
                   STILLFLOW_STREAMS__STANDBY_REPLICAS="0", STILLFLOW_STREAMS__DATA_DIR=str(tmp / "data"),
                   STILLFLOW_STREAMS__OTEL__SETTLE_S="0.5", STILLFLOW_STREAMS__OTEL__CHECK_INTERVAL_S="0.25",
                   STILLFLOW_STREAMS__OTEL__OUTCOME_WAIT_S="60")
        with open(tmp / "worker.log", "wb") as wlog, open(tmp / "receiver.log", "wb") as rlog:
            wcmd = [sys.executable, "-m", "stillflow.cli", "streams", "--web-port", str(wport), "--loglevel", "warning"]
            if os.environ.get("BENCH_PROFILE"):  # cProfile the worker (written when it stops)
                wcmd = [sys.executable, "-m", "cProfile", "-o", os.environ["BENCH_PROFILE"], *wcmd[1:]]
            worker = subprocess.Popen(wcmd, env=env, stdout=wlog, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
            rcmd = [sys.executable, "-m", "stillflow.cli", "otlp", "--port", str(rport), "--loglevel", "warning"]
            if os.environ.get("BENCH_PROFILE_RECEIVER"):
                rcmd = [sys.executable, "-m", "cProfile", "-o", os.environ["BENCH_PROFILE_RECEIVER"], *rcmd[1:]]
            receiver = subprocess.Popen(rcmd, env=env, stdout=rlog, stderr=subprocess.STDOUT,
                                        preexec_fn=die_with_parent)
        counter = _Counter(bootstrap, s.topics.traces_scored)
        await counter.consumer.start()
        base = f"http://127.0.0.1:{rport}"
        rates: dict[str, list[float]] = {"otel": [], "sdk": []}
        cpu: dict[str, list[float]] = {"otel": [], "sdk": [], "receiver": []}
        try:
            await _ready(f"http://127.0.0.1:{wport}/", worker)
            await _ready(f"{base}/readyz", receiver)
            await asyncio.sleep(4)  # the worker's partitions are assigned after its web server is up
            async with httpx.AsyncClient(base_url=base, timeout=60,
                                         limits=httpx.Limits(max_connections=args.clients)) as http, \
                    TraceEmitter(s, agent_id="bench") as em:
                for rnd in range(args.rounds + 1):
                    for kind in ("sdk", "otel"):
                        salt = f"{kind}-{rnd}-{uuid.uuid4().hex[:6]}"
                        prepared = []
                        if kind == "otel":
                            for c in range(args.copies):
                                prepared.append(_requests(datas, f"{salt}-{c}"))
                        t0, c0, r0 = time.perf_counter(), _tree_cpu(worker.pid), cpu_seconds(receiver.pid)
                        t_sent = t0
                        end = counter.seen + n_traces
                        if kind == "sdk":
                            for c in range(args.copies):
                                for i, t in enumerate(sdk_traces):
                                    await em.emit_trace(t.model_copy(update={"trace_id": f"{salt}-{c}-{i}"}))
                            await em.flush()
                        else:
                            async def post(path: str, sem: asyncio.Semaphore = asyncio.Semaphore(args.clients),
                                           **kw: Any) -> None:
                                async with sem:
                                    r = await http.post(path, **kw)
                                    r.raise_for_status()

                            jobs = []
                            for bodies, ids in prepared:
                                jobs += [post("/v1/traces", content=b,
                                              headers={"content-type": "application/x-protobuf"}) for b in bodies]
                                jobs += [post("/v1/stillflow/outcome", json={
                                    "trace_id": ids[old], "success": tr["success"], "ground_truth": tr["ground_truth"],
                                    "expected_steps": tr["expected_steps"]}) for old, tr in by_hex.items()]
                            await asyncio.gather(*jobs)
                        t_sent = time.perf_counter()
                        await counter.wait_for(end, timeout=600)
                        dt = time.perf_counter() - t0
                        if rnd == 0:
                            progress(f"warm-up {kind}: {n_traces / dt:.0f} traces/s")
                            continue
                        rates[kind].append(n_traces / dt)
                        cpu[kind].append(1e6 * (_tree_cpu(worker.pid) - c0) / n_traces)
                        if kind == "otel":
                            cpu["receiver"].append(1e6 * (cpu_seconds(receiver.pid) - r0) / n_traces)
                        progress(f"round {rnd} {kind}: {n_traces / dt:.0f} traces/s (sent in {t_sent - t0:.2f} s)")
        finally:
            await counter.consumer.stop()
            for p in (receiver, worker):
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    otel, sdk = statistics.median(rates["otel"]), statistics.median(rates["sdk"])
    n_spans = sum(len(ss.spans) for td in datas for rs in td.resource_spans for ss in rs.scope_spans)
    return {
        "traces_per_round": n_traces, "spans_per_trace": round(n_spans / len(episodes), 2), "rounds": args.rounds,
        "otel_traces_per_s": round(otel, 1), "sdk_traces_per_s": round(sdk, 1),
        "ratio_otel_over_sdk": round(otel / sdk, 3), "target_ratio": 0.5,
        "worker_cpu_us_per_trace": {k: round(statistics.median(v)) for k, v in cpu.items() if k != "receiver"},
        "receiver_cpu_us_per_trace": round(statistics.median(cpu["receiver"])),
        "rounds_traces_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.otlp_ingest", description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=40, help="instrumented episodes recorded (then replayed)")
    p.add_argument("--copies", type=int, default=50, help="copies of them per round, under fresh trace ids")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=4, help="agents sending to the receiver at once")
    args = p.parse_args(argv)
    emit_result("otlp_ingest", asyncio.run(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
