"""`stillflow demo`: the pipeline end to end on the embedded defaults, with live progress and a report.

Embedded broker → streams worker → a simulated teacher fleet publishing live through the SDK →
scored traces, gate verdicts, SFT examples, preference pairs, closed windows → an export of the
dataset → one quick training job of the tiny student on it (when the trainer is installed) → a
report (`report.md`, `report.json`) in the output directory. Every service runs as its own process
(`stillflow.supervisor`); their logs are in `<out>/demo.log`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stillflow.contracts import ContractError, DatasetWindowClosed, ScoredTrace, SFTExample, decode
from stillflow.settings import StillflowSettings

__all__ = ["register", "run_demo", "DemoReport"]


@dataclass
class DemoReport:
    traces_scored: int = 0
    traces_passed: int = 0
    gate_rejections: dict[str, int] = field(default_factory=dict)
    error_modes: dict[str, int] = field(default_factory=dict)
    sft_examples: int = 0
    windows_closed: int = 0
    pairs: int = 0
    teacher_cost_usd: float = 0.0
    teacher_tokens: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def markdown(self) -> str:
        rate = self.traces_passed / self.traces_scored if self.traces_scored else 0.0
        lines = [
            "# stillflow demo report",
            "",
            f"- traces scored: **{self.traces_scored}**, passed every gate: **{self.traces_passed}** ({rate:.1%})",
            f"- SFT examples: **{self.sft_examples}**, preference pairs: **{self.pairs}**, "
            f"windows closed: **{self.windows_closed}**",
            f"- teacher cost of the traffic: ${self.teacher_cost_usd:.4f} ({self.teacher_tokens:,} tokens)",
            f"- wall time: {self.wall_seconds:.0f} s",
            "",
            "## Gate rejections",
            "",
            "| gate | traces |",
            "| --- | --- |",
            *[f"| {g} | {n} |" for g, n in sorted(self.gate_rejections.items(), key=lambda kv: -kv[1])],
            "",
            "## Injected teacher error modes (simulator labels)",
            "",
            "| mode | traces |",
            "| --- | --- |",
            *[f"| {m} | {n} |" for m, n in sorted(self.error_modes.items(), key=lambda kv: -kv[1])],
            "",
            "## Training",
            "",
        ]
        if self.training:
            lines += [f"- {k}: {v}" for k, v in self.training.items()]
        else:
            lines.append("- not run")
        return "\n".join(lines) + "\n"


class _Watcher:
    """Follows the output topics and keeps the demo's counts."""

    def __init__(self, settings: StillflowSettings) -> None:
        self.settings = settings
        self.report = DemoReport()
        self._sft_ids: set[str] = set()
        self._scored_ids: set[str] = set()
        self._windows: dict[str, DatasetWindowClosed] = {}
        self._gates: Counter[str] = Counter()
        self._modes: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer

        t = self.settings.topics
        consumer = AIOKafkaConsumer(t.traces_scored, t.dataset_sft, t.dataset_windows,
                                    **self.settings.kafka.client_kwargs(), group_id=None,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=300, max_records=2000)
                for records in batch.values():
                    for rec in records:
                        self._take(rec.topic, rec.value)
        finally:
            await consumer.stop()

    def _take(self, topic: str, value: bytes | None) -> None:
        t, r = self.settings.topics, self.report
        try:
            if topic == t.traces_scored:
                s = decode(value or b"", ScoredTrace)
                if s.trace.trace_id in self._scored_ids:
                    return
                self._scored_ids.add(s.trace.trace_id)
                r.traces_scored += 1
                r.traces_passed += s.passed
                r.teacher_cost_usd += s.trace.cost_usd
                r.teacher_tokens += s.trace.total_tokens
                self._gates.update(s.rejected_by)
                self._modes[s.trace.metadata.get("error_mode", "unlabelled")] += 1
            elif topic == t.dataset_sft:
                self._sft_ids.add(decode(value or b"", SFTExample).example_id)
                r.sft_examples = len(self._sft_ids)
            else:
                w = decode(value or b"", DatasetWindowClosed)
                self._windows[w.window_id] = w
                r.windows_closed = len(self._windows)
                r.pairs = sum(x.n_pairs for x in self._windows.values())
        except ContractError:
            pass  # the streams worker dead-letters bad input; the watcher only counts results
        r.gate_rejections = dict(self._gates)
        r.error_modes = dict(self._modes)

    def line(self) -> str:
        r = self.report
        return (f"scored {r.traces_scored:5d} | passed {r.traces_passed:5d} | SFT {r.sft_examples:5d} | "
                f"pairs {r.pairs:4d} | windows closed {r.windows_closed:3d}")


async def _until(pred: Any, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(interval)
    return bool(pred())


async def run_demo(args: argparse.Namespace) -> int:
    from stillflow.kafka import bootstrap_or_embedded, ensure_topics
    from stillflow.supervisor import Supervisor

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    duration = args.duration or (20 if args.quick else 60)
    rate = args.rate or 15.0
    started = time.monotonic()
    settings, broker = bootstrap_or_embedded(StillflowSettings(), out / "broker.log")
    bootstrap = settings.kafka.bootstrap_servers or ""
    await ensure_topics(settings)
    env = {
        "STILLFLOW_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "STILLFLOW_STREAMS__APP_ID": f"demo-{uuid.uuid4().hex[:6]}",
        "STILLFLOW_STREAMS__DATA_DIR": str(out / "streams-data"),
        "STILLFLOW_STREAMS__WINDOW_SIZE_S": str(args.window),
        "STILLFLOW_STREAMS__WINDOW_GRACE_S": "2",
        "STILLFLOW_STREAMS__WINDOW_IDLE_CLOSE_S": "4",
        "STILLFLOW_STREAMS__WINDOW_TICK_INTERVAL_S": "1",
        "STILLFLOW_STREAMS__SESSION_TIMEOUT_S": "6",
        "STILLFLOW_STREAMS__STANDBY_REPLICAS": "0",
    }
    sup = Supervisor(out / "demo.log")
    watcher = _Watcher(settings)
    stop = asyncio.Event()
    watch_task = asyncio.create_task(watcher.run(stop))
    code = 0
    try:
        sup.start("streams", ["streams", "--loglevel", "warning"], env=env)
        fleet = sup.start("fleet", ["sim", "fleet", "--agents", "8", "--rate", str(rate), "--duration", str(duration),
                                    "--seed", str(args.seed), "--progress-interval", "10",
                                    "--task-pool", str(args.task_pool)], env=env)
        print(f"fleet: {rate:g} traces/s for {duration:g} s; logs in {out / 'demo.log'}", flush=True)
        last = 0.0
        while fleet.running:
            await asyncio.sleep(0.5)
            if time.monotonic() - last >= 2:
                print(f"  {watcher.line()}", flush=True)
                last = time.monotonic()
            if sup.failed():
                raise RuntimeError(_failure(sup))
        if fleet.proc.returncode != 0:
            raise RuntimeError(_failure(sup))
        # Let the stream finish the tail: every trace scored, then the idle close of the last windows.
        await _until(lambda: watcher.report.traces_scored > 0 and
                     watcher.report.sft_examples <= sum(w.n_sft for w in watcher._windows.values()), 60)
        print(f"  {watcher.line()}", flush=True)
        if args.train and importlib.util.find_spec("trainer.cli") is not None:
            watcher.report.training = await _train(sup, env, out, quick=args.quick)
        elif args.train:
            watcher.report.training = {"skipped": "the trainer is not installed (pip install 'stillflow[trainer]')"}
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        stop.set()
        await watch_task
        sup.stop_all()
        if broker is not None:
            broker.stop()
    report = watcher.report
    report.wall_seconds = time.monotonic() - started
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2))
    (out / "report.md").write_text(report.markdown())
    print(report.markdown())
    print(f"report: {out / 'report.md'} (and report.json)")
    return code


async def _train(sup: Any, env: dict[str, str], out: Path, *, quick: bool) -> dict[str, Any]:
    dataset = out / "dataset"
    export = sup.start("export", ["export", "--out", str(dataset), "--format", "trl"], env=env)
    while export.running:
        await asyncio.sleep(0.5)
    if export.proc.returncode != 0:
        return {"failed": "export: " + "".join(export.lines[-5:]).strip()}
    args = ["train", "--from-jsonl", str(dataset), "--registry", str(out / "registry")]
    if quick:
        args.append("--quick")
    t0 = time.monotonic()
    train = sup.start("train", args, env=env)
    while train.running:
        await asyncio.sleep(1)
    result: dict[str, Any] = {"exit_status": train.proc.returncode, "seconds": round(time.monotonic() - t0, 1),
                              "registry": str(out / "registry")}
    tail = [ln.strip() for ln in train.lines[-12:] if ln.strip()]
    result["last_lines"] = " / ".join(tail[-4:])
    return result


def _failure(sup: Any) -> str:
    bad = sup.failed()
    if not bad:
        return "a service stopped early"
    c = bad[0]
    return f"{c.name} exited with {c.proc.returncode}: " + "".join(c.lines[-8:]).strip()


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_demo(args))
    except KeyboardInterrupt:
        return 130


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the pipeline end to end on the embedded defaults, with a report")
    p.add_argument("--quick", action="store_true", help="a short run (20 s of traffic, quick training)")
    p.add_argument("--duration", type=float, default=None, help="seconds of fleet traffic (default 60; quick 20)")
    p.add_argument("--rate", type=float, default=None, help="traces started per second (default 15)")
    p.add_argument("--window", type=float, default=10.0, help="dataset window size in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task-pool", type=int, default=40,
                   help="tasks the fleet draws from (they recur, so pairs of the same task can be mined)")
    p.add_argument("--out", default="demo-out", help="directory for the report, logs and the model registry")
    p.add_argument("--no-train", dest="train", action="store_false", help="stop after the dataset")
    p.set_defaults(func=cmd_demo)
