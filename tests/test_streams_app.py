"""The streams worker through the real broker: sim teacher traces in, scored traces and datasets out."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from sim.policies import make_policy
from sim.runner import iter_offline
from stillflow.contracts import (
    DatasetWindowClosed,
    DeadLetter,
    PreferencePair,
    ScoredTrace,
    SFTExample,
    TraceStep,
    TraceStepEvent,
    decode,
    encode,
)
from stillflow.kafka import read_to_end
from stillflow.sdk import TraceEmitter
from streams.score_stage import decode_window_record
from tests.helpers import as_scored, read_topics
from tests.streams_worker import StreamsWorker, streams_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# error mode -> the gate that owns it (DESIGN step 4, sim's error modes)
OWNER = {
    "hallucinated_tool": "tool_validity",
    "schema_invalid_args": "tool_validity",
    "wrong_tool": "ground_truth",
    "wandering": "step_budget",
    "wrong_answer": "ground_truth",
    "unsafe_action": "safety",
    "crash": "success",
}


def _topic_env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLFLOW_")}
    for role, name in settings.topics.model_dump().items():
        env[f"STILLFLOW_TOPICS__{role.upper()}"] = name
    return env


def _traces(n: int, seed: int = 0, *, policy: str = "teacher", start: datetime | None = None):
    start = start or datetime.now(UTC) - timedelta(seconds=30)
    return list(iter_offline(n, make_policy(policy), seed=seed, start=start, rate=40.0))


def _rivals(n: int, *, every: int, start: datetime, seed: int = 0):
    """Random-policy runs of every `every`-th task of `_traces(n, seed, start=start)`, at the same event times
    (same task and arrival draws) under their own trace ids. The sim's task ids hardly repeat (517 distinct
    in 520), so without these a run held 0 or 1 best-vs-worst pair: these make pairs certain."""
    runs = _traces(n, seed, policy="random", start=start)[::every]
    return [t.model_copy(update={"trace_id": f"{t.trace_id}-rival"}) for t in runs]


async def _scored(settings, expected: int, timeout: float = 120) -> list[ScoredTrace]:
    recs = await read_topics(settings, [settings.topics.traces_scored], expected=expected, timeout=timeout)
    return [decode(r.value, ScoredTrace) for r in recs]


async def _decoded(settings, topic: str, model, expected: int | None = None, timeout: float = 5):
    """`expected`: wait up to `timeout` for that many; None: everything written so far (end offsets)."""
    if expected is None:
        return [decode(raw, model) for raw in await read_to_end(settings, topic)]
    return [decode(r.value, model) for r in await read_topics(settings, [topic], expected=expected, timeout=timeout)]


async def _wait_sft(settings, n_unique: int, timeout: float = 60) -> list[SFTExample]:
    """SFT examples are written by the window agent, a step behind the scored traces: poll until the
    expected number of distinct examples is there (or the timeout), then return all of them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        sft = await _decoded(settings, settings.topics.dataset_sft, SFTExample)
        if len({e.example_id for e in sft}) >= n_unique or loop.time() > deadline:
            return sft
        await asyncio.sleep(0.5)


async def _wait_windows_cover(settings, n_sft_unique: int, timeout: float = 60) -> list[DatasetWindowClosed]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    closed: list[DatasetWindowClosed] = []
    while loop.time() < deadline:
        closed = await _decoded(settings, settings.topics.dataset_windows, DatasetWindowClosed)
        if sum(w.n_sft for w in {w.window_id: w for w in closed}.values()) >= n_sft_unique:
            return closed
        await asyncio.sleep(1)
    return closed


async def test_pipeline_gates_every_error_mode(settings, tmp_path) -> None:
    start = datetime.now(UTC) - timedelta(seconds=30)
    traces = _traces(520, start=start)
    emitted = sorted([*traces, *_rivals(520, every=10, start=start)], key=lambda t: t.timestamp)
    worker = StreamsWorker(streams_env(settings, f"sf-{uuid.uuid4().hex[:8]}"), tmp_path / "worker.log").start()
    try:
        async with TraceEmitter(settings) as em:
            for t in emitted:
                await em.emit_trace(t)
        scored = await _scored(settings, len(emitted))
        by_id = {s.trace.trace_id: s for s in scored}
        assert len(by_id) == len(emitted), worker.log()[-3000:]
        # every trace arrives whole and unaltered
        assert all(by_id[t.trace_id].trace == as_scored(t) for t in emitted)

        table: dict[str, Counter[str]] = defaultdict(Counter)
        for t in traces:
            mode = t.metadata["error_mode"]
            s = by_id[t.trace_id]
            if mode == "none":
                table[mode]["passed" if s.passed else f"rejected:{','.join(s.rejected_by)}"] += 1
            else:
                table[mode][OWNER[mode] if OWNER[mode] in s.rejected_by else f"MISSED:{s.rejected_by}"] += 1
        print("\nerror mode -> gate -> count")
        for mode in sorted(table):
            print(f"  {mode:20s} {dict(table[mode])}")
        for mode, owner in OWNER.items():
            assert table[mode] and set(table[mode]) == {owner}, (mode, table[mode])
        clean = table["none"]
        assert clean["passed"] >= 0.95 * sum(clean.values())

        sft = await _wait_sft(settings, sum(s.passed for s in scored))
        unique = {e.example_id: e for e in sft}
        assert unique, "no SFT example written"
        for ex in unique.values():
            assert by_id[ex.trace_id].passed, f"{ex.trace_id} became training data without passing every gate"
        assert len(unique) == sum(s.passed for s in scored)

        windows = await _wait_windows_cover(settings, len(unique))
        latest = {w.window_id: w for w in windows}
        assert sum(w.n_sft for w in latest.values()) == len(unique)
        assert sum(w.n_traces for w in latest.values()) == len(emitted)
        pairs = await _decoded(settings, settings.topics.dataset_dpo, PreferencePair)  # written before the windows
        assert pairs, "no preference pair, though 52 tasks ran twice (teacher and random policy)"
        assert sum(w.n_pairs for w in latest.values()) == len({p.pair_id for p in pairs})
        for p in pairs:
            assert p.chosen_score - p.rejected_score > 0.2 or p.metadata.get("rule") == "teacher_student"
        assert any(w.offsets for w in latest.values())

        # `stillflow export`: the same records, deduplicated, in both formats
        for fmt in ("trl", "openai"):
            res = subprocess.run([sys.executable, "-m", "stillflow.cli", "export", "--format", fmt, "--out",
                                  str(tmp_path / fmt), "--bootstrap", settings.kafka.bootstrap_servers],
                                 env=_topic_env(settings), capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
            rows = [json.loads(line) for line in (tmp_path / fmt / "sft.jsonl").read_text().splitlines()]
            assert len(rows) == len(unique)
            assert all(r["messages"][-1]["role"] == "assistant" and r["tools"] for r in rows)
            calls = [m for r in rows for m in r["messages"] if m.get("tool_calls")]
            assert calls and all(isinstance(c["function"]["arguments"], str) for m in calls for c in m["tool_calls"])
            pair_rows = [json.loads(line) for line in (tmp_path / fmt / "dpo.jsonl").read_text().splitlines()]
            assert len(pair_rows) == len({p.pair_id for p in pairs})
            manifest = json.loads((tmp_path / fmt / "manifest.json").read_text())
            assert manifest["counts"]["sft"] == len(unique) and len(manifest["sft_ids"]) == len(unique)
        _exported_data_trains_in_trl(tmp_path / "trl", tmp_path / "train")
    finally:
        assert worker.stop() == 0 or worker.log()  # a clean stop; the log explains otherwise


def _exported_data_trains_in_trl(export_dir, work) -> None:
    """The exported trl JSONL trains a tiny student a few steps in trl's SFTTrainer (assistant-only
    loss) and its pairs in DPOTrainer: losses logged, weights changed."""
    import torch

    from trainer.data import dpo_rows, load_jsonl, sft_rows
    from trainer.dpo import run_dpo
    from trainer.settings import DPOSection, SFTSection, StudentSection
    from trainer.sft import run_sft
    from trainer.student import tiny_student

    data = load_jsonl(export_dir)
    assert data.sft and data.pairs
    tiny = StudentSection(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=400)
    student = tiny_student([{"messages": r.messages, "tools": r.tools} for r in data.sft], tiny)
    before = {k: v.detach().clone() for k, v in student.model.state_dict().items()}
    sft = run_sft(student, sft_rows(data.sft), SFTSection(max_steps=4, batch_size=4, logging_steps=1),
                  work / "sft", progress=False)
    assert sft.steps == 4 and sft.losses and all(e["loss"] > 0 for e in sft.losses)
    after = {k: v.detach().clone() for k, v in student.model.state_dict().items()}
    assert any(not torch.equal(before[k], after[k]) for k in before)
    dpo = run_dpo(student, work / "sft", dpo_rows(data.pairs),
                  DPOSection(max_steps=2, batch_size=2, logging_steps=1, min_pairs=1), work / "dpo", progress=False)
    assert dpo.skipped is None and dpo.steps == 2 and dpo.losses


async def test_bad_input_is_dead_lettered_and_valid_traffic_untouched(settings, tmp_path) -> None:
    traces = _traces(30, seed=3)
    env = streams_env(settings, f"sf-{uuid.uuid4().hex[:8]}", assembly_timeout_s=4)
    env["STILLFLOW_LIMITS__MAX_EVENT_BYTES"] = "200000"
    worker = StreamsWorker(env, tmp_path / "worker.log").start()
    try:
        good_step = TraceStepEvent(trace_id="bad-1", task_id="k", seq=0, step=TraceStep(step_type="reasoning"))
        wrong_type = json.loads(encode(good_step))
        wrong_type["step"]["step_type"] = "telepathy"
        async with TraceEmitter(settings) as em:
            for i, t in enumerate(traces):
                await em.emit_trace(t)
                if i == 5:
                    await em.send_raw(settings.topics.trace_steps, b"bad-1", b"\xde\xad\xbe\xef garbage", None)
                    await em.send_raw(settings.topics.trace_outcomes, b"bad-2",
                                      json.dumps({"trace_id": "bad-2", "hello": 1}).encode(), None)
                    await em.send_raw(settings.topics.trace_steps, b"bad-3",
                                      b'{"x": "' + b"y" * 300_000 + b'"}', None)
                    await em.send_raw(settings.topics.trace_steps, b"bad-1", json.dumps(wrong_type).encode(), None)
                    # a valid step whose trace never completes: expires to the DLQ as incomplete
                    await em.send_raw(settings.topics.trace_steps, b"bad-1", encode(good_step), None)
        scored = await _scored(settings, len(traces))
        assert {s.trace.trace_id for s in scored} == {t.trace_id for t in traces}
        assert all({s.trace.trace_id: s for s in scored}[t.trace_id].trace == as_scored(t) for t in traces)
        letters = await _decoded(settings, settings.topics.dlq, DeadLetter, expected=5, timeout=30)
        kinds = Counter(le.kind for le in letters)
        assert kinds == {"invalid_json": 1, "schema": 2, "oversize": 1, "incomplete": 1}, letters
        for le in letters:
            assert le.reason and le.service == "streams"
        schema = [le for le in letters if le.kind == "schema"]
        assert any("step.step_type" in le.reason for le in schema)
        assert any("Field required" in le.reason for le in schema)
        assert "1 steps (seq 0..0) in" in next(le for le in letters if le.kind == "incomplete").reason
        assert worker.alive()
    finally:
        worker.stop()


async def _explain_sft_gap(settings, app_id: str, passing: set[str], got: set[str], scored: list[ScoredTrace],
                           workers: list[StreamsWorker | None]) -> str:
    """Why passing traces have no SFT example (or the reverse): what the windows topic, the scored topic, the
    DLQ and the workers' logs say about them. A failure here is rare and timing-bound: it has to explain itself."""
    missing, extra = passing - got, got - passing
    lines = [f"{len(missing)} passing traces without an SFT example: {sorted(missing)}",
             f"{len(extra)} SFT examples of traces that did not pass: {sorted(extra)}"]
    odd = missing | extra
    records = await read_to_end(settings, f"{app_id}-windows")
    for i, raw in enumerate(records):
        if raw == b"tick":
            continue
        try:
            items = decode_window_record(raw)
        except ValueError as exc:
            lines.append(f"window record {i}: undecodable ({exc})")
            continue
        seen = [(item.candidate.trace_id, item.passed, ex is not None) for item, ex in items
                if item.candidate.trace_id in odd]
        if seen:
            lines.append(f"window record {i} of {len(records)} ({len(items)} items): {seen}")
    lines.append("scored records: " + str([(s.trace.trace_id, s.passed) for s in scored if s.trace.trace_id in odd]))
    letters = [decode(raw, DeadLetter) for raw in await read_to_end(settings, settings.topics.dlq)]
    lines += [f"dead letter: {d.kind} {d.source_topic} {d.reason[:200]}" for d in letters]
    for n, w in enumerate(workers, 1):
        if w is not None:
            notes = [ln for ln in w.log().splitlines() if any(k in ln for k in
                     ("WARNING", "ERROR", "Traceback", "rror:", "crash", "generation", "Revoking", "DROPPED"))]
            lines.append(f"worker {n} log ({len(notes)} notable lines):\n" + "\n".join(notes[-60:]))
    return "\n".join(lines)


# Small batches put many batches in flight when the worker dies, and give the restarted worker a backlog
# of window records to read while it recovers (the race in streams.flow_control dropped some of them).
@pytest.mark.parametrize("batch_max_events", [None, 60], ids=["default-batches", "small-batches"])
async def test_kill9_midway_and_restart_loses_nothing(settings, tmp_path, batch_max_events) -> None:
    traces = _traces(300, seed=7)
    app_id = f"sf-{uuid.uuid4().hex[:8]}"
    env = streams_env(settings, app_id, **({} if batch_max_events is None else {"batch_max_events": batch_max_events}))
    first = StreamsWorker(env, tmp_path / "worker1.log").start()
    second = None
    try:
        async with TraceEmitter(settings) as em:
            for t in traces[:200]:
                await em.emit_trace(t)
        # kill -9 once it is visibly midway through the first batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while loop.time() < deadline:
            n = len(await read_topics(settings, [settings.topics.traces_scored], expected=40, timeout=1))
            if n >= 40:
                break
            await asyncio.sleep(0.2)
        first.kill9()
        second = StreamsWorker(env, tmp_path / "worker2.log").start()
        async with TraceEmitter(settings) as em:
            for t in traces[200:]:
                await em.emit_trace(t)
        ids = {t.trace_id for t in traces}
        deadline = loop.time() + 150
        scored: list[ScoredTrace] = []
        while loop.time() < deadline:
            scored = await _scored(settings, 10**9, timeout=2)
            if ids <= {s.trace.trace_id for s in scored}:
                break
        latest = {s.trace.trace_id: s for s in scored}
        assert ids <= set(latest), f"missing after restart: {len(ids - set(latest))}\n{second.log()[-2000:]}"
        passing = {tid for tid, s in latest.items() if s.passed}
        sft = await _wait_sft(settings, len(passing))
        # every passing trace appears exactly once after dedupe by id, and nothing else does
        got = {e.trace_id for e in {e.example_id: e for e in sft}.values()}
        if got != passing:
            pytest.fail(await _explain_sft_gap(settings, app_id, passing, got, scored, [first, second]))
        assert len({e.example_id for e in sft}) == len(passing)
        # the redelivered records are identical (ids and content derive from the trace)
        by_id: dict[str, SFTExample] = {}
        for e in sft:
            if e.example_id in by_id:
                assert by_id[e.example_id].messages == e.messages
            by_id[e.example_id] = e
        windows = await _wait_windows_cover(settings, len(passing), timeout=60)
        latest_w = {w.window_id: w for w in windows}
        assert sum(w.n_sft for w in latest_w.values()) >= len(passing)  # at-least-once counts
    finally:
        first.stop()
        if second is not None:
            second.stop()


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_two_workers_share_partitions_and_serve_metrics(settings, tmp_path) -> None:
    import httpx

    traces = _traces(150, seed=11)
    env = streams_env(settings, f"sf-{uuid.uuid4().hex[:8]}")
    workers = [StreamsWorker(env, tmp_path / f"worker{i}.log").start() for i in range(2)]
    try:
        await asyncio.sleep(8)  # both join before traffic, so the group has two members from the start
        async with TraceEmitter(settings) as em:
            for t in traces:
                await em.emit_trace(t)
        scored = await _scored(settings, len(traces))
        assert {s.trace.trace_id for s in scored} == {t.trace_id for t in traces}
        async with httpx.AsyncClient() as client:
            texts = [(await client.get(f"http://127.0.0.1:{w.web_port}/metrics")).text for w in workers]
        steps = [_metric(t, 'stillflow_streams_events_total{result="ok",topic="steps"}') for t in texts]
        assert all(n > 0 for n in steps), f"a worker got no partition: {steps}"
        assert sum(steps) >= sum(len(t.steps) for t in traces)
        assert sum(_metric(t, "stillflow_streams_traces_completed_total") for t in texts) >= len(traces)
        assert "stillflow_streams_gate_rejections_total" in "".join(texts)
    finally:
        for w in workers:
            w.stop()
