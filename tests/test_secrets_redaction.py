"""Planted secrets (e-mails, card numbers, `sk-…` / AWS / GitHub keys) in tool args, observations,
reasoning, inputs and final outputs never reach the streams worker's log nor the dataset topics (SFT,
DPO). Bad records carrying secrets are dead-lettered: the DLQ keeps the raw bytes by design (an
operator topic, see docs/reliability.md), but the worker's log line about them must not quote them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import string
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from stillflow.contracts import DeadLetter, decode
from stillflow.kafka import read_to_end
from stillflow.sdk import TraceEmitter
from tests.helpers import make_trace, read_topics
from tests.streams_worker import StreamsWorker, streams_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_TASKS = 12


def _secrets(i: int, rng: random.Random) -> dict[str, str]:
    alnum = string.ascii_letters + string.digits
    return {
        "email": f"alice.{i}.{rng.randrange(10**6)}@example.com",
        "card": rng.choice(["4111 1111 1111 1111", "5555-5555-5555-4444", "4012888888881881"]),
        "openai": "sk-proj-" + "".join(rng.choice(alnum) for _ in range(32)),
        "aws": "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
        "github": "ghp_" + "".join(rng.choice(alnum) for _ in range(36)),
    }


def _planted(i: int, task: str, success: bool, rng: random.Random):
    """A valid trace with a secret in each place that can carry one."""
    s = _secrets(i, rng)
    t = make_trace(i, 6, task=task)
    shift = datetime.now(UTC) - timedelta(seconds=30) - t.timestamp + timedelta(seconds=i)  # recent event times
    t = t.model_copy(update={"timestamp": t.timestamp + shift,
                             "steps": [st.model_copy(update={"timestamp": st.timestamp + shift}) for st in t.steps]})
    answer = f"answer {i}: mail {s['email']}, key {s['openai']}"
    steps = []
    for step in t.steps:
        if step.step_type == "tool_call":
            step = step.model_copy(update={"tool_args": {**(step.tool_args or {}), "note": f"key {s['aws']}"}})
        elif step.step_type == "observation":
            step = step.model_copy(update={"tool_result": f"{step.tool_result} (billed to {s['card']})"})
        elif step.step_type == "reasoning":
            step = step.model_copy(update={"content": f"{step.content} token {s['github']} for {s['email']}"})
        else:
            step = step.model_copy(update={"content": answer})
        steps.append(step)
    trace = t.model_copy(update={
        "steps": steps, "final_output": answer if success else f"no idea, ask {s['email']}",
        "ground_truth": answer, "success": success, "input_text": f"question of {task} (from {task}@example.org)",  # one prompt per task: pairs
        "trace_id": f"sec-{i}",
    })
    return trace, list(s.values())


async def test_planted_secrets_stay_out_of_logs_and_datasets(settings, tmp_path) -> None:
    rng = random.Random(5)
    traces, secrets = [], []
    for i in range(N_TASKS):
        for j, success in enumerate((True, False)):  # a good and a bad trace per task: a DPO pair
            trace, planted = _planted(2 * i + j, f"task-{i}", success, rng)
            traces.append(trace)
            secrets += planted
        secrets.append(f"task-{i}@example.org")
    bad_secret = _secrets(999, rng)
    secrets += list(bad_secret.values())
    bad = [  # dead-lettered records that carry secrets, in their values and as a JSON key
        b"not json " + bad_secret["openai"].encode(),
        json.dumps({"trace_id": "x", "email": bad_secret["email"], "card": bad_secret["card"]}).encode(),
        json.dumps({bad_secret["aws"]: 1, "trace_id": "y"}).encode(),
        json.dumps({"trace_id": bad_secret["github"]}).encode(),
    ]
    env = streams_env(settings, f"sf-{uuid.uuid4().hex[:8]}")
    env["STILLFLOW_STREAMS__REDACT_PII"] = "true"
    worker = StreamsWorker(env, tmp_path / "worker.log").start()
    try:
        async with TraceEmitter(settings) as em:
            for t in traces:
                await em.emit_trace(t)
            for k, raw in enumerate(bad):
                await em.send_raw(settings.topics.trace_steps, f"bad-{k}".encode(), raw, None)
        await read_topics(settings, [settings.topics.traces_scored], expected=len(traces), timeout=60)
        letters = [decode(r.value, DeadLetter)
                   for r in await read_topics(settings, [settings.topics.dlq], expected=len(bad), timeout=30)]
        assert len(letters) == len(bad)

        async def datasets() -> tuple[list[bytes], list[bytes]]:
            return (await read_to_end(settings, settings.topics.dataset_sft),
                    await read_to_end(settings, settings.topics.dataset_dpo))

        sft, dpo = await datasets()
        for _ in range(60):  # pairs come when the windows close (idle close: a few seconds), examples before
            if len(sft) >= N_TASKS // 2 and dpo:
                break
            await asyncio.sleep(0.5)
            sft, dpo = await datasets()
        assert len(sft) >= N_TASKS // 2 and dpo, f"too little data to check: {len(sft)} SFT, {len(dpo)} pairs"
        data = b"\n".join(sft + dpo).decode()
        leaked = [s for s in secrets if s in data or json.dumps(s)[1:-1] in data]
        assert not leaked, f"secrets in the dataset topics: {leaked[:5]}"
        assert "[EMAIL]" in data and "[SECRET]" in data and "[CARD]" in data

        scored = b"\n".join(await read_to_end(settings, settings.topics.traces_scored)).decode()
        in_scored = sum(s in scored for s in secrets)
        in_dlq = sum(1 for le in letters for s in bad_secret.values() if s in base64.b64decode(le.raw_b64).decode(
            errors="replace"))
        in_reasons = [le.reason for le in letters if any(s in le.reason for s in bad_secret.values())]
        print(f"\n{len(sft)} SFT, {len(dpo)} pair records checked: no planted secret; traces.scored (redacted "
              f"by default) holds {in_scored}/{len(secrets)} of them; the DLQ's raw bytes hold {in_dlq}; "
              f"DLQ reasons quoting one: {len(in_reasons)}")
        leaked_scored = [s for s in secrets if s in scored]
        assert not leaked_scored, f"secrets in the scored-traces topic: {leaked_scored[:5]}"
        assert not in_reasons, in_reasons
        log = worker.log()
        assert "dead letter" in log  # the DLQ path did log
        leaked_log = [s for s in secrets if s in log]
        assert not leaked_log, f"secrets in the worker's log: {leaked_log[:5]}"
        assert worker.alive()
    finally:
        worker.stop()
    log = worker.log()  # including what it logged while stopping
    assert not [s for s in secrets if s in log]
