"""Serving the host's ASGI app with Hypercorn, under asyncio or trio."""

from __future__ import annotations

import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Literal

import anyio
from hypercorn.config import Config

from agenthost.backends.asyncio_bridge import running_on_asyncio

Backend = Literal["asyncio", "trio"]


def hypercorn_config(
    *, bind: Sequence[str], graceful_timeout: float, access_log: bool = False
) -> Config:
    config = Config()
    config.bind = list(bind)
    config.graceful_timeout = graceful_timeout
    config.accesslog = "-" if access_log else None
    config.errorlog = "-"
    return config


async def serve_app(
    app: Any,
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve on whichever backend is running (anyio picks the matching Hypercorn worker)."""
    if running_on_asyncio():
        from hypercorn.asyncio import serve as serve_asyncio

        await serve_asyncio(app, config, shutdown_trigger=shutdown_trigger)
    else:
        from hypercorn.trio import serve as serve_trio

        await serve_trio(app, config, shutdown_trigger=shutdown_trigger)


def serve_forever(
    app: Any, *, host: str, port: int, backend: Backend, graceful_timeout: float
) -> None:
    """Block serving ``app`` until SIGINT/SIGTERM (Hypercorn installs the handlers)."""
    if backend not in ("asyncio", "trio"):
        raise ValueError(f"backend must be 'asyncio' or 'trio', not {backend!r}")
    config = hypercorn_config(bind=[_bind_address(host, port)], graceful_timeout=graceful_timeout)
    anyio.run(partial(serve_app, app, config, shutdown_trigger=_until_signalled), backend=backend)


async def _until_signalled() -> None:
    # Hypercorn's trio worker installs no signal handlers: without this, SIGTERM would end
    # a trio host at once, with no drain. anyio's receiver works under both backends.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening-ready socket on a free port, for tests and for ``--port 0``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.set_inheritable(True)
    return sock


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
