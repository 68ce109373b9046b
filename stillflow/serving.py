"""Serve an ASGI app inside the running event loop, on a free port (tests, benches, the demo).

Exports `serving(app, host="127.0.0.1", port=0, lifespan="off")`: an async context manager that yields
the bound `(host, port)` once uvicorn has started, and stops it on exit. uvicorn is imported when called
(the base install does not need it).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["serving"]


@contextlib.asynccontextmanager
async def serving(app: Any, *, host: str = "127.0.0.1", port: int = 0, lifespan: str = "off",
                  stop_timeout_s: float = 15.0) -> AsyncIterator[tuple[str, int]]:
    import uvicorn

    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on accepted sockets of that proto (else Nagle and
    # delayed ACKs add ~40 ms to every keep-alive request)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)
        yield host, sock.getsockname()[1]
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, stop_timeout_s)
        sock.close()
