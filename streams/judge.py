"""An LLM judge of reasoning quality over any OpenAI-compatible chat-completions endpoint (optional).

Exports `LLMJudge` (a `ReasoningScorer`: `score(trace)` sync, `ascore(trace)` async; falls back to
the heuristic scorer when the endpoint fails or answers nonsense), `render_trace(trace, max_chars)`,
`parse_score(text)` and `JUDGE_SYSTEM_PROMPT`.

Off by default (`STILLFLOW_STREAMS__JUDGE__ENABLED`). Uses httpx; tests pass an
`httpx.MockTransport` as `transport`, so no network is needed. In a faust agent call `ascore` (or
run `score` in an executor) and hand the value to `Scorer.assess(..., reasoning_quality=...)`.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from typing import Any

import httpx

from stillflow.contracts import AgentTrace, StepType
from stillflow.quality import HeuristicReasoningScorer, ReasoningScorer
from streams.settings import JudgeSettings

__all__ = ["JUDGE_SYSTEM_PROMPT", "LLMJudge", "render_trace", "parse_score"]

JUDGE_SYSTEM_PROMPT = (
    "You grade the reasoning of an AI agent that solved a task with tools. Judge only the reasoning: "
    "does it plan before acting, justify each tool call, use the observations, avoid repetition, and "
    "lead to the final answer? Reply with a JSON object only: "
    '{"score": <number from 0 to 1>, "rationale": "<one sentence>"}'
)

_NUMBER = re.compile(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?")
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def render_trace(trace: AgentTrace, max_chars: int = 12_000) -> str:
    """The trace as plain text for the judge, cut to `max_chars` (the end is kept: the answer)."""
    lines = [f"TASK: {trace.input_text}"]
    if trace.tools:
        lines.append("TOOLS: " + ", ".join(t.name for t in trace.tools))
    for i, s in enumerate(trace.steps):
        if s.step_type is StepType.reasoning:
            lines.append(f"[{i}] THOUGHT: {s.content}")
        elif s.step_type is StepType.tool_call:
            args = json.dumps(s.tool_args or {}, ensure_ascii=False)
            pre = f"{s.content} " if s.content else ""
            lines.append(f"[{i}] CALL: {pre}{s.tool_name}({args})")
        elif s.step_type is StepType.observation:
            lines.append(f"[{i}] RESULT: {s.observation_text()}")
        else:
            lines.append(f"[{i}] OUTPUT: {s.content}")
    lines.append(f"FINAL ANSWER: {trace.final_output}")
    text = "\n".join(lines)
    if len(text) > max_chars:
        head = max_chars // 3
        text = text[:head] + "\n[...]\n" + text[-(max_chars - head - 7) :]
    return text


def parse_score(text: str) -> float | None:
    """The score in a judge's reply: `{"score": x}` (or the first number), clamped to [0, 1].
    Scores on a 0-10 scale (1 < x <= 10) are divided by 10. None when there is no number."""
    value: Any = None
    m = _OBJECT.search(text)
    if m:
        try:
            obj = json.loads(m.group(0))
            if isinstance(obj, dict):
                value = obj.get("score")
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        n = _NUMBER.search(text)
        if n is None:
            return None
        value = float(n.group(0))
    x = float(value)
    if x != x:  # NaN
        return None
    if 1.0 < x <= 10.0:
        x /= 10.0
    return min(1.0, max(0.0, x))


class LLMJudge:
    """Reasoning quality from an LLM. Every failure falls back to `fallback` (the heuristic) and is
    counted in `n_errors`; scores are cached per trace_id (redelivery asks once)."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_trace_chars: int = 12_000,
        cache_size: int = 1024,
        fallback: ReasoningScorer | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_trace_chars = max_trace_chars
        self.fallback: ReasoningScorer = fallback or HeuristicReasoningScorer()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers, transport=transport)
        self._aclient = httpx.AsyncClient(timeout=timeout_s, headers=headers, transport=async_transport)
        self._cache: OrderedDict[str, float] = OrderedDict()
        self._cache_size = cache_size
        self.n_calls = 0
        self.n_errors = 0

    @classmethod
    def from_settings(cls, settings: JudgeSettings, **kw: Any) -> LLMJudge:
        key = settings.api_key.get_secret_value() if settings.api_key else None
        return cls(
            base_url=settings.base_url,
            model=settings.model,
            api_key=key,
            timeout_s=settings.timeout_s,
            max_trace_chars=settings.max_trace_chars,
            cache_size=settings.cache_size,
            **kw,
        )

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def payload(self, trace: AgentTrace) -> dict[str, Any]:
        return {
            "model": self.model,
            "temperature": 0,
            "max_tokens": 200,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
                {"role": "user", "content": render_trace(trace, self.max_trace_chars)},
            ],
        }

    def _cached(self, trace_id: str) -> float | None:
        v = self._cache.get(trace_id)
        if v is not None:
            self._cache.move_to_end(trace_id)
        return v

    def _remember(self, trace_id: str, value: float) -> None:
        if self._cache_size <= 0:
            return
        self._cache[trace_id] = value
        self._cache.move_to_end(trace_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _from_response(self, trace: AgentTrace, resp: httpx.Response) -> float:
        try:
            resp.raise_for_status()
            content = resp.json()["choices"][0]["message"]["content"]
            value = parse_score(content if isinstance(content, str) else "")
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            value = None
        if value is None:
            self.n_errors += 1
            return self.fallback.score(trace)
        self._remember(trace.trace_id, value)
        return value

    def score(self, trace: AgentTrace) -> float:
        cached = self._cached(trace.trace_id)
        if cached is not None:
            return cached
        self.n_calls += 1
        try:
            resp = self._client.post(self.url, json=self.payload(trace))
        except httpx.HTTPError:
            self.n_errors += 1
            return self.fallback.score(trace)
        return self._from_response(trace, resp)

    async def ascore(self, trace: AgentTrace) -> float:
        cached = self._cached(trace.trace_id)
        if cached is not None:
            return cached
        self.n_calls += 1
        try:
            resp = await self._aclient.post(self.url, json=self.payload(trace))
        except httpx.HTTPError:
            self.n_errors += 1
            return self.fallback.score(trace)
        return self._from_response(trace, resp)

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        await self._aclient.aclose()
