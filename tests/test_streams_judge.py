"""The LLM judge wired into the streams worker: with `streams.judge.enabled`, every trace's reasoning quality
comes from the configured OpenAI-compatible endpoint (here a local stand-in), through the real broker."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from sim.policies import make_policy
from sim.runner import iter_offline
from stillflow.broker import free_port
from stillflow.contracts import ScoredTrace, decode
from stillflow.sdk import TraceEmitter
from tests.helpers import read_topics
from tests.streams_worker import StreamsWorker, streams_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JUDGED = 0.37  # what the stand-in judge answers; the heuristic gives sim traces other values


class _Judge(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        reply = {"choices": [{"message": {"role": "assistant", "content": json.dumps({"score": JUDGED})}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


async def test_judge_scores_reasoning_of_every_trace(settings, tmp_path) -> None:
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    start = datetime.now(UTC) - timedelta(seconds=30)
    planted = "alice.judge@example.com"  # PII does not leave the stream: the judge gets the trace redacted
    traces = [t.model_copy(update={"input_text": f"{t.input_text} (reply to {planted})"})
              for t in iter_offline(12, make_policy("teacher"), seed=5, start=start, rate=40.0)]
    env = streams_env(settings, f"sj-{uuid.uuid4().hex[:8]}", judge__enabled="true",
                      judge__base_url=f"http://127.0.0.1:{port}/v1", judge__model="judge-test",
                      judge__api_key="sk-judge-test-key")
    worker = StreamsWorker(env, tmp_path / "worker.log").start()
    try:
        async with TraceEmitter(settings) as em:
            for t in traces:
                await em.emit_trace(t)
        recs = await read_topics(settings, [settings.topics.traces_scored], expected=len(traces), timeout=120)
        scored = {s.trace.trace_id: s for s in (decode(r.value, ScoredTrace) for r in recs)}
        assert set(scored) == {t.trace_id for t in traces}, worker.log()[-3000:]
        assert {s.score.reasoning_quality for s in scored.values()} == {JUDGED}
        asked = _Judge.requests
        assert len(asked) >= len(traces)
        assert {r["path"] for r in asked} == {"/v1/chat/completions"}
        assert {r["auth"] for r in asked} == {"Bearer sk-judge-test-key"}
        assert {r["body"]["model"] for r in asked} == {"judge-test"}
        judged = [m["content"] for r in asked for m in r["body"]["messages"] if m["role"] == "user"]
        assert {text.splitlines()[0] for text in judged} == {
            f"TASK: {t.input_text.replace(planted, '[EMAIL]')}" for t in traces}
        assert not any(planted in json.dumps(r["body"]) for r in asked)
        metrics = httpx.get(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5).text
        assert 'stillflow_streams_judge_calls_total{result="ok"}' in metrics
    finally:
        worker.stop()
        server.shutdown()
