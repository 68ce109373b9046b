"""Run stillflow's services as child processes with one readable, prefixed log.

Used by `stillflow demo` (and `stillflow up`): each service is its own process (`python -m
stillflow.cli <service>`), so a crash in one is seen, logged and reported, not hidden. Children get
SIGTERM if this process dies (Linux), and `stop_all` stops them newest first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from stillflow.broker import die_with_parent

__all__ = ["Supervisor", "Child"]


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)  # the last lines, for error reports

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


class Supervisor:
    def __init__(self, log_path: Path, *, echo: IO[str] | None = None, keep_lines: int = 200) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop_all()
        self._lock = threading.Lock()
        self._echo = echo
        self._keep = keep_lines
        self.children: list[Child] = []

    def write(self, name: str, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        text = f"{stamp} [{name}] {line.rstrip()}\n"
        with self._lock:
            self._log.write(text)
            self._log.flush()
            if self._echo is not None:
                self._echo.write(text)
                self._echo.flush()

    def start(self, name: str, args: Sequence[str], *, env: dict[str, str] | None = None,
              module: bool = True) -> Child:
        """Start `python -m stillflow.cli ARGS` (or ARGS as a command with module=False)."""
        argv = [sys.executable, "-m", "stillflow.cli", *args] if module else list(args)
        full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        child = Child(name, proc)
        self.children.append(child)
        threading.Thread(target=self._pump, args=(child,), name=f"log-{name}", daemon=True).start()
        self.write("supervisor", f"started {name} (pid {proc.pid}): {' '.join(args)}")
        return child

    def _pump(self, child: Child) -> None:
        assert child.proc.stdout is not None
        for raw in child.proc.stdout:
            line = raw.decode(errors="replace")
            child.lines.append(line)
            if len(child.lines) > self._keep:
                del child.lines[: len(child.lines) - self._keep]
            self.write(child.name, line)

    def failed(self) -> list[Child]:
        """Children that exited with a non-zero status."""
        return [c for c in self.children if c.proc.poll() not in (None, 0)]

    def stop(self, child: Child, timeout: float = 20.0) -> int | None:
        if child.running:
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.write("supervisor", f"{child.name} did not stop in {timeout}s: killing it")
                child.proc.kill()
                child.proc.wait(10)
        return child.proc.returncode

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self.stop(child)
        with self._lock:
            self._log.close()
