"""The live stream and `stillflow dataset build` agree, and real-shaped traces go through the stream.

- One set of sim traces (teacher and random policy on the same tasks, so gates fail and pairs exist), sent
  in event-time order to single-partition topics, gives the same verdicts, the same SFT examples and the same
  pairs through a real streams worker as through `dataset build` on the same rows with the same settings.
- A trace as real agents record it (namespaced and unicode ids, object / list / null tool results, null
  optional fields) and a 200-step 1 MB trace go SDK → broker → stream → scored and SFT topics; the SFT
  example's tool messages are the rendered results.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sim.policies import make_policy
from sim.runner import iter_offline
from stillflow.contracts import AgentTrace, PreferencePair, ScoredTrace, SFTExample, decode
from stillflow.kafka import ensure_topics, read_to_end, with_bootstrap
from stillflow.sdk import TraceEmitter
from stillflow.settings import KafkaSettings, StillflowSettings, TopicNames
from streams.dataset_build import build_dataset
from streams.settings import StreamsSettings
from tests.helpers import big_trace, real_shaped_row
from tests.streams_worker import StreamsWorker, streams_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _one_partition_settings(broker: str) -> StillflowSettings:
    s = with_bootstrap(StillflowSettings(
        kafka=KafkaSettings(session_timeout_ms=6000, heartbeat_interval_ms=1000, default_partitions=1),
        topics=TopicNames().with_prefix(f"db{uuid.uuid4().hex[:8]}."),
    ), broker)
    await ensure_topics(s)
    return s


async def _latest(settings: StillflowSettings, topic: str, model: type, key: str) -> dict:
    return {getattr(r, key): r for r in (decode(raw, model) for raw in await read_to_end(settings, topic))}


async def _wait_for(settings: StillflowSettings, worker: StreamsWorker, want: dict[str, int],
                    timeout: float = 120) -> dict[str, dict]:
    """Poll the scored, SFT and DPO topics until they hold `want` distinct records each."""
    topics = {"scored": (settings.topics.traces_scored, ScoredTrace, "event_id"),
              "sft": (settings.topics.dataset_sft, SFTExample, "example_id"),
              "dpo": (settings.topics.dataset_dpo, PreferencePair, "pair_id")}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    got: dict[str, dict] = {}
    while True:
        got = {k: await _latest(settings, *topics[k]) for k in want}
        if all(len(got[k]) >= n for k, n in want.items()) or loop.time() > deadline:
            return got
        assert worker.alive(), worker.log()[-3000:]
        await asyncio.sleep(1)


async def test_the_live_stream_and_dataset_build_give_the_same_verdicts_examples_and_pairs(
        broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = await _one_partition_settings(broker)
    start = datetime.now(UTC) - timedelta(minutes=10)
    teacher = list(iter_offline(60, make_policy("teacher"), seed=7, start=start))
    rand = [t.model_copy(update={"trace_id": f"rnd-{t.trace_id}"})  # the same tasks, a millisecond later
            for t in iter_offline(60, make_policy("random"), seed=7, start=start + timedelta(milliseconds=1))]
    traces = sorted(teacher + rand, key=lambda t: t.timestamp)
    src = tmp_path / "traces.jsonl"
    src.write_text("".join(t.model_dump_json() + "\n" for t in traces))

    env = streams_env(settings, f"db-{uuid.uuid4().hex[:8]}", window_idle_close_s=6)
    for k, v in env.items():  # the offline build reads the very settings the worker runs with
        if k.startswith("STILLFLOW_STREAMS__"):
            monkeypatch.setenv(k, v)
    offline = build_dataset([src], tmp_path / "out", settings=StreamsSettings(), workers=1, progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert offline.counts["rejected"] > 30 and manifest["counts"]["dpo"] > 5  # gates fail and pairs exist

    worker = StreamsWorker(env, tmp_path / "worker.log").start()
    try:
        async with TraceEmitter(settings) as em:
            for t in traces:
                await em.emit_trace(t)
            await em.flush()
        got = await _wait_for(settings, worker, {"scored": len(traces), "sft": manifest["counts"]["sft"],
                                                 "dpo": manifest["counts"]["dpo"]})
    finally:
        worker.stop()

    live_verdicts = {s.trace.trace_id: (s.passed, s.rejected_by) for s in got["scored"].values()}
    rejected = {r["trace_id"]: r["gates"] for r in
                (json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines())}
    offline_verdicts = {t.trace_id: (t.trace_id not in rejected, rejected.get(t.trace_id, [])) for t in traces}
    assert live_verdicts == offline_verdicts
    assert sorted(got["sft"]) == manifest["sft_ids"]
    assert sorted(got["dpo"]) == manifest["pair_ids"]
    # and the same conversations, as the files hold them
    rows = [json.loads(line) for line in (tmp_path / "out" / "sft.jsonl").read_text().splitlines()]
    assert [got["sft"][k].messages for k in manifest["sft_ids"]] == [r["messages"] for r in rows]
    pairs = [json.loads(line) for line in (tmp_path / "out" / "dpo.jsonl").read_text().splitlines()]
    assert [(got["dpo"][k].chosen, got["dpo"][k].rejected) for k in manifest["pair_ids"]] == \
        [(p["chosen"], p["rejected"]) for p in pairs]


async def test_real_shaped_and_1_mb_traces_go_through_the_stream(broker: str, tmp_path: Path) -> None:
    settings = await _one_partition_settings(broker)
    now = datetime.now(UTC) - timedelta(minutes=1)
    real = [AgentTrace.model_validate(real_shaped_row(i, start=now)) for i in range(3)]
    big = big_trace().model_copy(update={"timestamp": now + timedelta(seconds=5)})
    worker = StreamsWorker(streams_env(settings, f"dr-{uuid.uuid4().hex[:8]}"), tmp_path / "worker.log").start()
    try:
        async with TraceEmitter(settings) as em:
            for t in [*real, big]:
                await em.emit_trace(t)
            await em.flush()
            assert em.failed == 0
        got = await _wait_for(settings, worker, {"scored": 4, "sft": 4})
    finally:
        worker.stop()
    scored = {s.trace.trace_id: s for s in got["scored"].values()}
    assert set(scored) == {t.trace_id for t in real} | {"big/1"}, worker.log()[-3000:]
    for t in real:
        s = scored[t.trace_id]
        assert s.passed, s.reasons
        assert s.trace.task_id == t.task_id and s.trace.agent_id == "agent@team-α"
        assert [st.tool_result for st in s.trace.steps if st.step_type == "observation"] == \
            [st.tool_result for st in t.steps if st.step_type == "observation"]  # kept as JSON end to end
    examples = {e.trace_id: e for e in got["sft"].values()}
    assert set(examples) == set(scored)
    tool_msgs = [m["content"] for m in examples[real[0].trace_id].messages if m["role"] == "tool"]
    assert tool_msgs == ['{"hits":[{"id":7,"subject":"Launch 🚀"},{"id":9,"subject":null}],"total":2}', "[0,4]",
                         "null"]
    assert len(scored["big/1"].trace.steps) == 200
