"""A progress bar for long offline work, on stderr: redrawn in place on a terminal, else a line now and then
(logs and CI keep a readable record instead of thousands of carriage returns)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """`update(done)` as work gets done, `finish()` at the end. Quiet when `enabled` is False."""

    def __init__(self, total: int, what: str, *, stream: TextIO | None = None, enabled: bool = True,
                 line_every_s: float = 10.0, width: int = 30) -> None:
        self.total = max(0, total)
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.total > 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.line_every_s = line_every_s
        self.width = width
        self.t0 = time.monotonic()
        self._last = 0.0
        self.done = 0

    def _line(self) -> str:
        elapsed = time.monotonic() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = f"{left:.0f} s left" if left != float("inf") else "…"
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * round(frac * self.width)
        return (f"[{bar:<{self.width}}] {self.done}/{self.total} {self.what} ({frac:.0%}), {rate:.0f}/s, "
                f"{eta if self.done < self.total else f'{elapsed:.1f} s'}")

    def update(self, done: int) -> None:
        self.done = min(done, self.total)
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if now - self._last >= 0.2 or self.done == self.total:
                self.stream.write("\r" + self._line())
                self.stream.flush()
                self._last = now
        elif now - self._last >= self.line_every_s:
            if self._last:  # not at once: short work prints only its final line
                self.stream.write(self._line() + "\n")
                self.stream.flush()
            self._last = now

    def finish(self) -> None:
        if not self.enabled:
            return
        self.done = self.total
        self.stream.write(("\r" if self.tty else "") + self._line() + "\n")
        self.stream.flush()
