"""The recorded OTLP fixtures (`tests/fixtures/otel/*.json`, real instrumentation libraries): each through
the receiver's path — JSON body, decode, one record per trace, read back — as spans and logs per trace id.

`FIXTURES` (the folder), `NAMES` (every fixture), `load(name)` → (spans by trace id, logs by trace id,
episodes), cached: callers that change what they get take copies (`copied(name)`).
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from streams.otel.otlp import (
    JSON,
    OtelLog,
    OtelSpan,
    decode_logs,
    decode_traces,
    read_logs,
    read_spans,
    split_logs,
    split_traces,
)

FIXTURES = Path(__file__).parent / "fixtures" / "otel"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))

Loaded = tuple[dict[str, list[OtelSpan]], dict[str, list[OtelLog]], list[dict[str, Any]]]


@functools.cache
def load(name: str) -> Loaded:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    spans: dict[str, list[OtelSpan]] = defaultdict(list)
    logs: dict[str, list[OtelLog]] = defaultdict(list)
    for req in data["requests"]:
        body = json.dumps(req["body"]).encode()
        if req["path"] == "/v1/logs":
            for tid, part in split_logs(decode_logs(body, JSON)).per_trace.items():
                logs[tid] += read_logs(part.SerializeToString())
        else:
            assert req["path"] == "/v1/traces"
            for tid, part in split_traces(decode_traces(body, JSON)).per_trace.items():
                spans[tid] += read_spans(part.SerializeToString())
    return dict(spans), dict(logs), data["episodes"]


def copied(name: str) -> Loaded:
    spans, logs, episodes = load(name)
    return ({k: [s.model_copy(deep=True) for s in v] for k, v in spans.items()},
            {k: [r.model_copy(deep=True) for r in v] for k, v in logs.items()}, json.loads(json.dumps(episodes)))
