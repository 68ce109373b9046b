"""The teacher backend: any OpenAI-compatible chat-completions endpoint, over httpx.

Exports `CircuitBreaker`, `TeacherClient`, `TeacherReply`, `TeacherUnavailable` and `TeacherRejected`.

Every call is bounded: a connect timeout and a whole-attempt timeout, at most `1 + retries` attempts
(retried: connection errors, timeouts, 429 and 5xx, with doubling backoff), and a circuit breaker that
opens after `breaker_failures` consecutive failed calls and fails fast for `breaker_reset_s` before
letting one probe through. So the worst case is known in advance (`worst_case_s`): a router whose
teacher is down answers 503 within it, never hangs. A 4xx other than 429 is the caller's problem,
not the teacher's: it is passed back (`TeacherRejected`) and does not count against the breaker.

The router always asks the teacher for a whole response (`stream: false`): it must record the turn,
and it streams the finished turn to its own client itself. `transport=` takes an httpx transport
(e.g. `httpx.MockTransport`) so tests need no network.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from router.settings import TeacherSection

__all__ = ["CircuitBreaker", "TeacherClient", "TeacherReply", "TeacherUnavailable", "TeacherRejected"]

_POOL_CONNECTIONS = 16  # connections per httpx pool (see TeacherClient.__init__)

# Headers passed through to the teacher (the sim teacher reads both; real providers ignore them).
FORWARDED_HEADERS = ("x-stillflow-trace-id", "x-stillflow-task-id")


class TeacherUnavailable(Exception):
    """The teacher could not answer (down, timing out, erroring, or the breaker is open)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # bounded: circuit_open | timeout | connect | status_5xx | status_429 | invalid_response


class TeacherRejected(Exception):
    """The teacher refused the request itself (a 4xx other than 429): passed back to the client."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"the teacher answered HTTP {status}")
        self.status = status
        self.body = body


class CircuitBreaker:
    """closed → (N consecutive failures) → open → (reset_s later) → half-open: one probe; its success
    closes the breaker, its failure opens it again."""

    def __init__(self, failures: int = 5, reset_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        """May a call go out now? In half-open, only one probe at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def retry_after_s(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.reset_s - (self._clock() - self._opened_at))

    def success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._consecutive += 1
        if self._probing or self._consecutive >= self.failures:
            self._opened_at = self._clock()
        self._probing = False


@dataclass(frozen=True)
class TeacherReply:
    body: dict[str, Any]
    seconds: float
    attempts: int


class TeacherClient:
    def __init__(self, section: TeacherSection, *, transport: httpx.AsyncBaseTransport | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.section = section
        self.breaker = CircuitBreaker(section.breaker_failures, section.breaker_reset_s)
        self._on_error = on_error or (lambda kind: None)
        headers = {"content-type": "application/json"}
        if section.api_key is not None:
            headers["authorization"] = f"Bearer {section.api_key.get_secret_value()}"
        timeout = httpx.Timeout(section.timeout_s, connect=section.connect_timeout_s)
        # Several small pools instead of one big one: httpcore's pool bookkeeping on every request walks
        # its connections once per connection (is_idle, socket checks); with 64 connections in one pool it
        # was two thirds of the router's CPU under load. A request takes the least busy pool.
        n = max(1, math.ceil(section.max_connections / _POOL_CONNECTIONS))
        per = math.ceil(section.max_connections / n)
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        self._pools = [
            httpx.AsyncClient(base_url=section.base_url.rstrip("/") + "/", headers=headers, timeout=timeout,
                              limits=limits, transport=transport)
            for _ in range(n)
        ]
        self._busy = [0] * n

    @property
    def worst_case_s(self) -> float:
        """The longest a `complete` call can take (every attempt timing out, every backoff)."""
        s = self.section
        backoff = sum(s.retry_backoff_s * 2**i for i in range(s.retries))
        return (s.retries + 1) * (s.timeout_s + s.connect_timeout_s) + backoff

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    async def _post(self, payload: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        i = min(range(len(self._pools)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:
            return await self._pools[i].post("chat/completions", json=payload, headers=headers)
        finally:
            self._busy[i] -= 1

    async def complete(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> TeacherReply:
        """POST /chat/completions; raises `TeacherUnavailable` or `TeacherRejected`."""
        if not self.breaker.allow():
            self._on_error("circuit_open")
            raise TeacherUnavailable(
                "circuit_open",
                f"the teacher is failing; calls resume in {self.breaker.retry_after_s():.1f}s (circuit breaker open)",
            )
        payload = dict(body)
        payload["stream"] = False
        payload.pop("stream_options", None)
        if self.section.model:
            payload["model"] = self.section.model
        fwd = {k: v for k, v in (headers or {}).items() if k.lower() in FORWARDED_HEADERS}
        t0 = time.perf_counter()
        last: TeacherUnavailable | None = None
        for attempt in range(self.section.retries + 1):
            if attempt:
                await asyncio.sleep(self.section.retry_backoff_s * 2 ** (attempt - 1))
            try:
                resp = await self._post(payload, fwd)
            except httpx.TimeoutException as exc:
                last = TeacherUnavailable("timeout", f"the teacher timed out ({type(exc).__name__})")
            except httpx.TransportError as exc:
                last = TeacherUnavailable("connect", f"cannot reach the teacher ({type(exc).__name__}: {exc})")
            else:
                status = resp.status_code
                if status == 200:
                    try:
                        data = resp.json()
                        if not isinstance(data, dict) or not data.get("choices"):
                            raise ValueError("no choices")
                    except ValueError as exc:
                        last = TeacherUnavailable("invalid_response",
                                                  f"the teacher's answer is not a completion: {exc}")
                    else:
                        self.breaker.success()
                        return TeacherReply(data, time.perf_counter() - t0, attempt + 1)
                elif status == 429 or status >= 500:
                    kind = "status_429" if status == 429 else "status_5xx"
                    last = TeacherUnavailable(kind, f"the teacher answered HTTP {status}: {resp.text[:300]}")
                else:
                    self.breaker.success()  # it is up; the request is what it refused
                    try:
                        detail: Any = resp.json()
                    except ValueError:
                        detail = {"error": {"message": resp.text[:1000], "type": "teacher_error"}}
                    raise TeacherRejected(status, detail)
            self._on_error(last.kind)
        assert last is not None
        self.breaker.failure()
        raise last
