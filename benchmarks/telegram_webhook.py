"""Telegram updates per second through the webhook path, to an echo target.

Three processes on loopback, each with its own event loop (``multiprocessing``, spawn):

- the fake Bot API from the tests (``tests/channels/telegram/fake_bot_api.py``), which
  takes the host's ``setWebhook`` and every ``sendMessage``, and counts the replies;
- the host: ``Host(target=echo, channels=[TelegramChannel(mode="webhook", ...)])`` on the
  store a user gets by default (SQLite on a file) or ``MemoryStore``, pointed at the fake.
  Pacing is lifted (the fake is not Telegram, and Telegram's ~30 messages/s would be all
  this measured) and streaming is off;
- this process, the load: ``WORKERS`` keep-alive connections posting updates with the
  secret header, each update a new ``update_id`` from one of ``CHATS`` private chats (so
  per-chat ordering never queues one worker behind another), for ``BUDGET_SECONDS``.

Two rows per server:

- ``ack``: webhook POSTs answered 200, i.e. the update was verified, parsed, checked
  against the de-duplication marks and recorded in the durable inbox (one read and one
  write transaction). p50/p99 are the POST latencies.
- ``answered``: the same updates end to end — run through the host (identity, session,
  lease, target, save) and replied to with ``sendMessage`` at the fake — counted until the
  last reply arrived, so ``seconds`` includes draining the inbox after the load stopped.
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx

from benchmarks.report import BenchmarkPending, Row, format_seconds
from benchmarks.timing import percentile

BUDGET_SECONDS = 3.0
WARMUP_UPDATES = 200
WORKERS = 16
CHATS = 512
MAX_POSTS_PER_WORKER = 200_000
DRAIN_TIMEOUT = 120.0
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SERVER_LIFETIME = 600.0
TOKEN = "7012345678:AAH-bench_token-not-real-0123456789abcd"
SECRET = "bench-secret-token"
USERNAME = "agenthost_bench_bot"
WEBHOOK_PATH = "/telegram/webhook"


@dataclass(frozen=True)
class Plan:
    name: str
    backend: str
    store: str


PLANS = (
    Plan("SQLite, asyncio", "asyncio", "sqlite"),
    Plan("memory, asyncio", "asyncio", "memory"),
    Plan("SQLite, trio", "trio", "sqlite"),
)


def run() -> list[Row]:
    try:
        import telegram  # noqa: F401 - the channel's extra

        from tests.channels.telegram.fake_bot_api import FakeBotApi  # noqa: F401
    except ImportError as missing:
        raise BenchmarkPending(
            f"pending: the telegram extra or the tests are missing ({missing})"
        ) from None
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="agenthost-bench-telegram-") as directory:
        for index, plan in enumerate(PLANS):
            state_dir = Path(directory) / f"host-{index}"
            state_dir.mkdir()
            with (
                process(serve_fake, (), name="bench-telegram-fake") as fake_port,
                process(
                    serve_host, (plan, str(state_dir), fake_port), name="bench-telegram-host"
                ) as host_port,
            ):
                rows += anyio.run(_measure, plan, fake_port, host_port, backend="asyncio")
    return rows


# --- the load (this process) -------------------------------------------------------------


async def _measure(plan: Plan, fake_port: int, host_port: int) -> list[Row]:
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        await _ready(client, f"http://127.0.0.1:{host_port}/readiness")
        await _until(client, fake_port, lambda stats: stats["webhook"])
        ids = iter(range(1, 10**9))
        # Warm up (imports, first sessions), then measure from a drained inbox.
        await _load(host_port, ids, seconds=None, count=WARMUP_UPDATES)
        await _until(client, fake_port, lambda stats: stats["replies"] >= WARMUP_UPDATES)
        before = (await _stats(client, fake_port))["replies"]
        started = time.perf_counter()
        samples = await _load(host_port, ids, seconds=BUDGET_SECONDS)
        loaded = time.perf_counter() - started
        posted = len(samples)
        with anyio.fail_after(DRAIN_TIMEOUT):
            await _until(client, fake_port, lambda s: s["replies"] >= before + posted)
        answered = time.perf_counter() - started
    ordered = sorted(samples)
    latency = {
        "p50": format_seconds(percentile(ordered, 0.50)),
        "p99": format_seconds(percentile(ordered, 0.99)),
    }
    return [
        Row(f"telegram webhook: ack ({plan.name})", posted, loaded, latency),
        Row(f"telegram webhook: answered ({plan.name})", posted, answered),
    ]


async def _ready(client: httpx.AsyncClient, url: str) -> None:
    with anyio.fail_after(STARTUP_TIMEOUT):
        while True:
            with suppress(httpx.TransportError):
                if (await client.get(url)).status_code == 200:
                    return
            await anyio.sleep(0.05)


async def _stats(client: httpx.AsyncClient, fake_port: int) -> dict[str, Any]:
    response = await client.get(f"http://127.0.0.1:{fake_port}/bench/stats")
    stats: dict[str, Any] = response.json()
    return stats


async def _until(client: httpx.AsyncClient, fake_port: int, condition: Any) -> None:
    with anyio.fail_after(DRAIN_TIMEOUT):
        while True:
            if condition(await _stats(client, fake_port)):
                return
            await anyio.sleep(0.02)


async def _load(
    port: int, ids: Iterator[int], *, seconds: float | None, count: int | None = None
) -> list[float]:
    samples: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds if seconds is not None else float("inf")
    remaining = [count if count is not None else MAX_POSTS_PER_WORKER * WORKERS]

    async def worker() -> None:
        connection = _Connection(port)
        try:
            for _ in range(MAX_POSTS_PER_WORKER):
                if clock() >= deadline or remaining[0] <= 0:
                    return
                remaining[0] -= 1
                update_id = next(ids)
                began = clock()
                status = await connection.post(_update(update_id))
                samples.append(clock() - began)
                if status != 200:
                    raise AssertionError(f"the webhook answered {status}")
        finally:
            await connection.aclose()

    async with anyio.create_task_group() as tasks:
        for _ in range(WORKERS):
            tasks.start_soon(worker)
    return samples


def _update(update_id: int) -> bytes:
    user = 100_000 + update_id % CHATS
    return json.dumps(
        {
            "update_id": update_id,
            "message": {
                "message_id": update_id,
                "from": {"id": user, "is_bot": False, "first_name": "Bench"},
                "chat": {"id": user, "first_name": "Bench", "type": "private"},
                "date": 1764075123,
                "text": f"hello {update_id}",
            },
        },
        separators=(",", ":"),
    ).encode()


class _Connection:
    """One keep-alive HTTP/1.1 connection posting updates (status only; bodies are empty)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._stream: anyio.abc.SocketStream | None = None
        self._buffer = bytearray()

    async def post(self, body: bytes) -> int:
        if self._stream is None:
            self._stream = await anyio.connect_tcp("127.0.0.1", self._port)
            self._buffer.clear()
        head = (
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: 127.0.0.1:{self._port}\r\n"
            f"content-type: application/json\r\nx-telegram-bot-api-secret-token: {SECRET}\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        await self._stream.send(head + body)
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            self._buffer += await self._stream.receive(65536)
        lines = bytes(self._buffer[:end]).lower().split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        fields = dict(line.split(b":", 1) for line in lines[1:])
        size = int(fields.get(b"content-length", b"0"))
        while len(self._buffer) < end + 4 + size:
            self._buffer += await self._stream.receive(65536)
        del self._buffer[: end + 4 + size]
        if fields.get(b"connection", b"").strip() == b"close":
            await self.aclose()
        return status

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()


# --- the servers (spawned processes) -------------------------------------------------------


@contextmanager
def process(target: Any, args: tuple[Any, ...], *, name: str) -> Iterator[int]:
    """Start a server process; yield the port it bound; always stop it."""
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    child = context.Process(target=target, args=(*args, child_conn), name=name, daemon=True)
    child.start()
    child_conn.close()
    try:
        if not conn.poll(STARTUP_TIMEOUT):
            raise TimeoutError(f"{name} did not bind a port in {STARTUP_TIMEOUT}s")
        try:
            port = int(conn.recv())
        except EOFError:
            raise RuntimeError(f"{name} exited during start-up ({child.exitcode})") from None
        yield port
    finally:
        with suppress(OSError):
            conn.send("stop")
        child.join(STOP_TIMEOUT)
        if child.is_alive():
            child.terminate()
            child.join(3.0)
        if child.is_alive():
            child.kill()
            child.join(3.0)
        conn.close()


def _serve(app_factory: Any, backend: str, conn: Connection) -> None:
    from agenthost.backends.serving import bound_socket, hypercorn_config, serve_app

    sock = bound_socket("127.0.0.1")
    port = sock.getsockname()[1]
    config = hypercorn_config(bind=[f"fd://{sock.detach()}"], graceful_timeout=2.0)
    config.loglevel = "WARNING"

    async def main() -> None:
        app = app_factory(port)
        conn.send(port)
        await serve_app(app, config, shutdown_trigger=partial(_until_stopped, conn))

    anyio.run(main, backend=backend)


async def _until_stopped(conn: Connection) -> None:
    deadline = time.monotonic() + SERVER_LIFETIME
    while time.monotonic() < deadline:
        if conn.poll():
            with suppress(EOFError):
                conn.recv()
            return
        await anyio.sleep(0.05)


def serve_fake(conn: Connection) -> None:
    _serve(_fake_app, "asyncio", conn)


def _fake_app(port: int) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Mount, Route

    from tests.channels.telegram.fake_bot_api import FakeBotApi

    fake = FakeBotApi(TOKEN, username=USERNAME)

    async def stats(request: Request) -> Response:
        replies = len(fake.messages)
        del fake.calls[:]  # keep the fake's memory flat over a long run
        return JSONResponse({"webhook": bool(fake.webhook_url), "replies": replies})

    return Starlette(routes=[Route("/bench/stats", stats), Mount("/", fake.app)])


def serve_host(plan: Plan, state_dir: str, fake_port: int, conn: Connection) -> None:
    _serve(partial(_host_app, plan, Path(state_dir), fake_port), plan.backend, conn)


async def echo(messages: list[Any]) -> str:
    return str(messages[-1].text)


def _host_app(plan: Plan, state_dir: Path, fake_port: int, port: int) -> Any:
    from agenthost import Host
    from agenthost.channels.telegram import Pacing, TelegramChannel
    from agenthost.stores.base import Store
    from agenthost.stores.memory import MemoryStore
    from agenthost.stores.sqlite import SQLiteStore

    unlimited = Pacing(
        global_per_second=1e6,
        global_burst=1e6,
        private_per_second=1e6,
        private_burst=1e6,
        group_per_minute=1e6,
        group_burst=1e6,
    )
    channel = TelegramChannel(
        TOKEN,
        mode="webhook",
        webhook_url=f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
        secret_token=SECRET,
        bot_username=USERNAME,
        api_base_url=f"http://127.0.0.1:{fake_port}",
        pacing=unlimited,
        stream=False,
        register_commands=False,
    )
    store: Store = SQLiteStore(state_dir / "bench.db") if plan.store == "sqlite" else MemoryStore()
    host = Host(
        echo, channels=[channel], store=store, state_dir=state_dir, shutdown_grace_seconds=2.0
    )
    return host.app
