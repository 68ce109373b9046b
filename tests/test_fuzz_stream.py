"""The real streams worker, fuzzed: ~300 bad records drawn from the fuzz strategies (tests/fuzz_inputs.py),
interleaved with valid sim teacher traces on the steps and outcomes topics.

Every bad record yields exactly one dead letter with a reason, the worker stays up, and every valid
trace is scored exactly once after dedupe by trace_id, unaltered: bad input has no effect on valid traffic.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import strategies as st

from sim.policies import make_policy
from sim.runner import iter_offline
from stillflow.contracts import (
    AgentTrace,
    DeadLetter,
    ScoredTrace,
    TraceOutcomeEvent,
    TraceStep,
    TraceStepEvent,
    decode,
    encode,
    get_limits,
    set_limits,
)
from stillflow.dlq import decode_or_letter
from stillflow.sdk import TraceEmitter
from tests.fuzz_counts import count
from tests.fuzz_inputs import FUZZ_LIMITS, bad_record, draw_batch
from tests.helpers import as_scored, make_trace, read_topics, real_shaped_row
from tests.streams_worker import StreamsWorker, streams_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_BAD = 300
N_TRACES = 60
LIMITS = FUZZ_LIMITS  # what the strategies assume
STEP_BASE = encode(TraceStepEvent(trace_id="t1", task_id="k1", seq=0, step=TraceStep(step_type="reasoning",
                                                                                     content="x")))
OUTCOME_BASE = encode(TraceOutcomeEvent.from_trace(make_trace(1, 3)))


@st.composite
def decode_bad(draw: Any) -> tuple[str, bytes]:
    role = draw(st.sampled_from(["steps", "outcomes"]))
    return role, draw(bad_record(STEP_BASE if role == "steps" else OUTCOME_BASE))


def _bad_records() -> list[tuple[str, bytes, bytes | None, str]]:
    """(topic role, key, value, how) for N_BAD records, each one checked to be bad here: records that
    do not decode (drawn from the fuzz strategies), and every 10th one a tombstone, a valid step keyed
    by another id, or a valid step beyond max_steps_per_trace."""
    old = get_limits()
    set_limits(LIMITS)
    try:
        drawn = iter(draw_batch(decode_bad(), N_BAD))
        out = []
        for i in range(N_BAD):
            key = f"bad-{i}".encode()
            how = {3: "tombstone", 6: "key_mismatch", 9: "too_many_steps"}.get(i % 10, "decode")
            role, value = next(drawn, ("steps", b"\xff" + key)) if how == "decode" else ("steps", None)
            if how == "key_mismatch":
                value = STEP_BASE  # trace_id t1
            elif how == "too_many_steps":
                value = encode(TraceStepEvent(trace_id=key.decode(), task_id="k", seq=100_000,
                                              step=TraceStep(step_type="reasoning")))
            model = TraceStepEvent if role == "steps" else TraceOutcomeEvent
            _, letter = decode_or_letter(value, model, source_topic=role)
            assert (letter is None) == (how in ("key_mismatch", "too_many_steps")), (how, value)
            out.append((role, key, value, how))
        return out
    finally:
        set_limits(old)


def _traces(n: int, seed: int):
    """Sim teacher traces, and among them traces shaped as real agents record them: namespaced and unicode ids
    (two at the id bound), object / list / null tool results, null optional fields."""
    start = datetime.now(UTC) - timedelta(seconds=30)
    sim = list(iter_offline(n, make_policy("teacher"), seed=seed, start=start, rate=40.0))
    real = []
    for i in range(6):
        row = real_shaped_row(i, start=start)
        if i < 2:  # unicode ids exactly at the bound
            row["trace_id"] = (f"ü{i}/" + "é" * LIMITS.max_id_chars)[:LIMITS.max_id_chars]
            row["task_id"] = (f"suite/ß{i}#" + "日" * LIMITS.max_id_chars)[:LIMITS.max_id_chars]
        real.append(AgentTrace.model_validate(row))
    return [x for pair in zip(sim, real + [None] * len(sim), strict=False) for x in pair if x is not None]


async def test_fuzzed_bad_records_are_dead_lettered_once_and_valid_traffic_untouched(settings, tmp_path) -> None:
    bad = _bad_records()
    count("stream (streams worker)", len(bad))
    hows = Counter(how for *_, how in bad)
    traces = _traces(N_TRACES, seed=21)
    env = streams_env(settings, f"sf-{uuid.uuid4().hex[:8]}", assembly_timeout_s=30)
    env["STILLFLOW_LIMITS__MAX_EVENT_BYTES"] = str(LIMITS.max_event_bytes)
    env["STILLFLOW_LIMITS__MAX_STEP_CONTENT_CHARS"] = str(LIMITS.max_step_content_chars)
    env["STILLFLOW_LIMITS__MAX_ID_CHARS"] = str(LIMITS.max_id_chars)
    worker = StreamsWorker(env, tmp_path / "worker.log").start()
    try:
        topics = {"steps": settings.topics.trace_steps, "outcomes": settings.topics.trace_outcomes}
        per_trace = -(-len(bad) // len(traces))
        async with TraceEmitter(settings) as em:
            for i, t in enumerate(traces):
                await em.emit_trace(t)
                for role, key, value, _ in bad[i * per_trace:(i + 1) * per_trace]:
                    await em.send_raw(topics[role], key, value, None)
        scored = [decode(r.value, ScoredTrace) for r in
                  await read_topics(settings, [settings.topics.traces_scored], expected=len(traces), timeout=60)]
        letters = [decode(r.value, DeadLetter) for r in
                   await read_topics(settings, [settings.topics.dlq], expected=len(bad), timeout=30)]
        by_key = Counter(base64.b64decode(le.key_b64).decode() if le.key_b64 else None for le in letters)
        kinds = Counter(le.kind for le in letters)
        distinct = len({v for *_, v, _ in bad})
        print(f"\n{len(bad)} bad records, {distinct} distinct ({dict(hows)}) -> {len(letters)} dead letters {dict(kinds)}; "
              f"{len(traces)} traces -> {len(scored)} scored")
        log = worker.log()
        assert worker.alive(), log[-3000:]
        assert "Traceback" not in log and "crashed" not in log.lower(), log[-3000:]
        missing = [k.decode() for _, k, _, _ in bad if by_key[k.decode()] != 1]
        assert not missing, f"{len(missing)} bad records without exactly one letter, e.g. {missing[:5]}"
        assert len(letters) == len(bad)  # and no letter for anything else
        assert all(le.reason and le.kind for le in letters)
        assert kinds["key_mismatch"] == hows["key_mismatch"] and kinds["too_many_steps"] == hows["too_many_steps"]
        assert kinds["empty"] == hows["tombstone"]
        by_id: dict[str, list[ScoredTrace]] = {}
        for s in scored:
            by_id.setdefault(s.trace.trace_id, []).append(s)
        assert set(by_id) == {t.trace_id for t in traces}
        assert all(len(v) == 1 for v in by_id.values()), "a valid trace scored twice"
        assert all(by_id[t.trace_id][0].trace == as_scored(t) for t in traces), "a valid trace altered"
        assert json.dumps(dict(kinds))  # the reasons and kinds are plain JSON-able data
    finally:
        worker.stop()
