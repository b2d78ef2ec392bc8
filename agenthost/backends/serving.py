"""Serving the host's ASGI app with Hypercorn, under asyncio or trio.

SIGINT and SIGTERM stop the server the same way on both backends: Hypercorn stops taking
connections and finishes the ones in flight, then the app's lifespan drains the host
(``Host.running``). Hypercorn installs signal handlers only under asyncio, so the handling
is ours (anyio's signal receiver), which also takes a SIGINT that a non-interactive parent
left ignored. Logs are the host's JSON lines (``backends.logs``), Hypercorn's included.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Literal

import anyio
from hypercorn.config import Config

from agenthost.backends.asyncio_bridge import running_on_asyncio
from agenthost.backends.logs import application_configured_logging, configure_logging

Backend = Literal["asyncio", "trio"]


def hypercorn_config(
    *, bind: Sequence[str], graceful_timeout: float, access_log: bool = False
) -> Config:
    config = Config()
    config.bind = list(bind)
    config.graceful_timeout = graceful_timeout
    # Loggers, not "-": Hypercorn would give "-" a plain-text handler of its own.
    config.accesslog = logging.getLogger("hypercorn.access") if access_log else None
    config.errorlog = logging.getLogger("hypercorn.error")
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
    app: Any,
    *,
    host: str,
    port: int,
    backend: Backend,
    graceful_timeout: float,
    log_level: str = "info",
) -> None:
    """Block serving ``app`` until SIGINT or SIGTERM, then stop gracefully."""
    if backend not in ("asyncio", "trio"):
        raise ValueError(f"backend must be 'asyncio' or 'trio', not {backend!r}")
    if not application_configured_logging():
        configure_logging(log_level)
    config = hypercorn_config(bind=[_bind_address(host, port)], graceful_timeout=graceful_timeout)
    prepare_collector()
    anyio.run(partial(serve_until_signalled, app, config), backend=backend)


# Container allocations (net of frees) between two collections of the youngest generation
# while serving; CPython's default is 700. A turn's young objects reach into the session's
# whole history (the state it read, the list it saves), so each young collection walks
# long lists: at 700 a host on SQLite spent about 9% of its CPU collecting (16 concurrent
# invokes, growing histories). What is still garbage waits at most this many allocations.
SERVING_YOUNG_THRESHOLD = 10_000


def prepare_collector() -> None:
    """Set the cyclic garbage collector up for serving. Called once, by the process that
    serves, after the app is built.

    Everything built before serving (modules, the host, the target) lives as long as the
    process: moved out of the collector's sight, it is never walked again, so a collection
    while serving scans only what requests create (no long collector pauses in the tail
    latency). And the youngest generation is collected every
    :data:`SERVING_YOUNG_THRESHOLD` allocations rather than every 700, unless the
    application asked for a higher threshold already.
    """
    gc.collect()
    gc.freeze()
    young, older, oldest = gc.get_threshold()
    if young != 0:  # 0: the application disabled automatic collection; leave it so
        gc.set_threshold(max(young, SERVING_YOUNG_THRESHOLD), older, oldest)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def serve_until_signalled(app: Any, config: Config) -> None:
    """Serve until the first SIGINT or SIGTERM, then shut down gracefully.

    Signals reach only the main thread: served from another thread, the server runs until
    the process ends.
    """
    if threading.current_thread() is not threading.main_thread():
        await serve_app(app, config, shutdown_trigger=anyio.sleep_forever)
        return
    with anyio.open_signal_receiver(*STOP_SIGNALS) as received:

        async def first_signal() -> None:
            async for signum in received:
                logging.getLogger("agenthost.serving").info(
                    "stopping", extra={"signal": signal.Signals(signum).name}
                )
                return

        await serve_app(app, config, shutdown_trigger=first_signal)


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
