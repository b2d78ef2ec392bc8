"""Serve an app on 127.0.0.1 with the real Hypercorn, inside the test's own event loop.

The socket is bound before the server starts (``fd://``), so there is no race for a port,
and the server's lifespan runs exactly as in production.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx

from agenthost.backends.serving import bound_socket, hypercorn_config, serve_app


@asynccontextmanager
async def served(
    app: Any, *, sock: socket.socket | None = None, startup_timeout: float = 10.0
) -> AsyncIterator[str]:
    """Yield the base URL of ``app`` served on loopback; stop it (gracefully) on exit.

    Pass ``sock`` when the URL must be known before the app is built (a channel that
    registers its own webhook URL at start-up).
    """
    sock = sock if sock is not None else bound_socket("127.0.0.1")
    port = sock.getsockname()[1]
    # Hypercorn takes ownership of the descriptor and closes it when it stops.
    config = hypercorn_config(bind=[f"fd://{sock.detach()}"], graceful_timeout=5.0)
    stop = anyio.Event()
    base_url = f"http://127.0.0.1:{port}"
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: serve_app(app, config, shutdown_trigger=stop.wait))
        await wait_ready(base_url, startup_timeout)
        try:
            yield base_url
        finally:
            stop.set()


async def wait_ready(base_url: str, timeout: float) -> None:
    with anyio.fail_after(timeout):
        async with httpx.AsyncClient(base_url=base_url) as client:
            while True:
                try:
                    if (await client.get("/readiness")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.02)
