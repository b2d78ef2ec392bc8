"""Discord interactions per second through signature verification and de-duplication.

Servers run in their own processes on loopback (:mod:`benchmarks.loopback`); the load
comes from this process over ``WORKERS`` keep-alive connections (``RawConnection``), each
interaction signed beforehand with a fresh Ed25519 key (the tests' ``Signer``), so the
rows measure the server, not the signing.

- the baseline is a bare Starlette app on the same path that reads the body, parses the
  JSON and answers ``{"type": 1}`` or ``{"type": 5}``: the route's work with neither the
  signature check nor the store;
- the host is ``Host(echo, channels=[DiscordChannel(...)])`` with the store a user gets by
  default (SQLite on a file) and ``MemoryStore``, its REST calls going to a small fake API
  process that acknowledges every ``@original`` edit and counts them.

Rows per host:

- ``PING``: the signature check and the ``PONG`` (no store);
- ``replayed id``: interactions recorded and answered earlier, sent again: the signature
  check, then the store's insert-if-absent refusing the id (the replay protection);
- ``new id, ack``: fresh interactions: signature, de-duplication mark and inbox record in
  one store write, then the deferral. The turns run meanwhile (they share the CPU);
- ``new id, answered``: the same interactions until the last ``@original`` edit reached the
  fake, so its ``seconds`` includes draining the inbox after the load stopped.

``ratio`` is ops/s over the baseline's on the same backend.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from benchmarks import loopback
from benchmarks.report import BenchmarkPending, Row, format_seconds
from benchmarks.timing import percentile

BUDGET_SECONDS = 3.0
WARMUP_INTERACTIONS = 300
REPLAYED = 256  # ids recorded in the warm-up, then sent again
FRESH_POOL = 12_000  # pre-signed new interactions (a bound on the "new id" row)
WORKERS = 16
CHANNELS = 512  # interactions spread over this many DM channels (per-channel order)
MAX_PER_WORKER = 200_000
DRAIN_TIMEOUT = 120.0
PATH = "/discord/interactions"
APPLICATION_ID = "1187411200000000001"
BOT_TOKEN = "MTE4NzQxMTIwMDAwMDAwMDAwMQ.G0aBcD.bench_token_not_real_0123456789"


@dataclass(frozen=True)
class ServerSpec:
    app: str  # "baseline" or "host"
    backend: str
    store: str = ""


PLAN = (
    ServerSpec("baseline", "asyncio"),
    ServerSpec("host", "asyncio", "sqlite"),
    ServerSpec("host", "asyncio", "memory"),
    ServerSpec("baseline", "trio"),
    ServerSpec("host", "trio", "sqlite"),
)


def run() -> list[Row]:
    try:
        from tests.channels.discord.signer import Signer
    except ImportError as missing:
        raise BenchmarkPending(f"pending: the tests' signer is missing ({missing})") from None
    signer = Signer()
    rows: list[Row] = []
    baselines = loopback.Baselines()
    with (
        tempfile.TemporaryDirectory(prefix="agenthost-bench-discord-") as directory,
        loopback.server_process(_fake_api, name="bench-discord-fake", label="fake API") as fake,
    ):
        for index, spec in enumerate(PLAN):
            state_dir = Path(directory) / f"server-{index}"
            state_dir.mkdir()
            build = partial(_build_app, spec, state_dir, signer.public_key_hex, fake.port)
            label = f"{spec.app} {spec.backend} {spec.store}".strip()
            with loopback.server_process(
                build, name="bench-discord", label=label, backend=spec.backend
            ) as server:
                measured = anyio.run(_measure, server, fake, spec, signer, backend="asyncio")
            for row in measured:
                rows.append(baselines.compare(row, spec.backend, baseline=spec.app == "baseline"))
    return rows


# --- the load (this process) -----------------------------------------------------------------


class Interactions:
    """Signed interaction requests, with ids that never repeat across the run."""

    def __init__(self, signer: Any, port: int) -> None:
        self._signer = signer
        self._port = port
        self._ids = iter(range(1_400_000_000_000_000_000, 10**19))

    def request(self, payload: dict[str, Any]) -> bytes:
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = self._signer.headers(body)
        del headers["content-type"]  # post_request sets it
        return loopback.post_request(PATH, body, host=f"127.0.0.1:{self._port}", headers=headers)

    def ping(self) -> bytes:
        return self.request(
            {
                "id": str(next(self._ids)),
                "application_id": APPLICATION_ID,
                "type": 1,
                "token": "ping-token",
                "version": 1,
            }
        )

    def ask(self) -> bytes:
        interaction_id = next(self._ids)
        user = str(600_000_000_000_000_000 + interaction_id % CHANNELS)
        return self.request(
            {
                "id": str(interaction_id),
                "application_id": APPLICATION_ID,
                "type": 2,
                "token": f"aW50ZXJhY3Rpb246{interaction_id}benchtoken",
                "version": 1,
                "context": 1,
                "channel_id": str(int(user) + 10**18),
                "user": {"id": user, "username": "bench", "discriminator": "0"},
                "data": {
                    "id": "1311000000000000500",
                    "name": "ask",
                    "type": 1,
                    "options": [{"name": "message", "type": 3, "value": f"hello {interaction_id}"}],
                },
            }
        )


async def _measure(
    server: loopback.Server, fake: loopback.Server, spec: ServerSpec, signer: Any
) -> list[Row]:
    await loopback.wait_ready(server)
    make = Interactions(signer, server.port)
    name = "bare Starlette" if spec.app == "baseline" else f"host {spec.store}"
    label = f"({name}, {spec.backend})"
    if spec.app == "baseline":
        pings = [make.ping() for _ in range(64)]
        return [await _row(f"discord PING {label}", server, _cycle(pings), expect=1)]

    rows = [
        await _row(
            f"discord PING {label}", server, _cycle([make.ping() for _ in range(64)]), expect=1
        )
    ]
    # Warm up and record the interactions that are replayed below.
    before = await _edits(fake)
    replayed = [make.ask() for _ in range(REPLAYED)]
    warmup = replayed + [make.ask() for _ in range(WARMUP_INTERACTIONS)]
    await _load(server, iter(warmup), seconds=None, expect=5)
    await _until_edits(fake, before + len(warmup))
    rows.append(await _row(f"discord replayed id {label}", server, _cycle(replayed), expect=5))

    fresh = [make.ask() for _ in range(FRESH_POOL)]
    before = await _edits(fake)
    started = time.perf_counter()
    ack = await _row(f"discord new id, ack {label}", server, iter(fresh), expect=5)
    with anyio.fail_after(DRAIN_TIMEOUT):
        await _until_edits(fake, before + ack.operations)
    answered = time.perf_counter() - started
    rows += [ack, Row(f"discord new id, answered {label}", ack.operations, answered)]
    return rows


def _cycle(requests: list[bytes]) -> Iterator[bytes]:
    for _ in range(MAX_PER_WORKER * WORKERS // len(requests) + 1):
        yield from requests


async def _row(
    name: str, server: loopback.Server, requests: Iterator[bytes], *, expect: int
) -> Row:
    gc.collect()
    server_cpu = server.cpu_seconds()
    started = time.perf_counter()
    samples = await _load(server, requests, seconds=BUDGET_SECONDS, expect=expect)
    wall = time.perf_counter() - started
    server_cpu = server.cpu_seconds() - server_cpu
    ordered = sorted(samples)
    return Row(
        name,
        len(samples),
        wall,
        {
            "p50": format_seconds(percentile(ordered, 0.50)),
            "p99": format_seconds(percentile(ordered, 0.99)),
            "server CPU": f"{server_cpu / wall:.0%}",
        },
    )


async def _load(
    server: loopback.Server, requests: Iterator[bytes], *, seconds: float | None, expect: int
) -> list[float]:
    """Send ``requests`` from ``WORKERS`` connections until they or ``seconds`` run out."""
    samples: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds if seconds is not None else float("inf")

    async def worker() -> None:
        connection = loopback.RawConnection(server.port)
        try:
            for _ in range(MAX_PER_WORKER):
                request = next(requests, None)
                if request is None or clock() >= deadline:
                    return
                answer = await connection.request(request)
                samples.append(answer.seconds)
                body = json.loads(answer.body) if answer.status == 200 else None
                if not isinstance(body, dict) or body.get("type") != expect:
                    raise AssertionError(
                        f"unexpected answer {answer.status}: {answer.body[:200]!r}"
                    )
        finally:
            await connection.aclose()

    async with anyio.create_task_group() as tasks:
        for _ in range(WORKERS):
            tasks.start_soon(worker)
    return samples


async def _edits(fake: loopback.Server) -> int:
    connection = loopback.RawConnection(fake.port)
    try:
        request = f"GET /bench/stats HTTP/1.1\r\nhost: 127.0.0.1:{fake.port}\r\n\r\n".encode()
        answer = await connection.request(request)
    finally:
        await connection.aclose()
    return int(json.loads(answer.body)["edits"])


async def _until_edits(fake: loopback.Server, count: int) -> None:
    with anyio.fail_after(DRAIN_TIMEOUT):
        while True:
            if await _edits(fake) >= count:
                return
            await anyio.sleep(0.05)


# --- the servers (spawned processes) --------------------------------------------------------


async def echo(messages: list[Any]) -> str:
    return str(messages[-1].text)


def _build_app(spec: ServerSpec, state_dir: Path, public_key: str, fake_port: int) -> Any:
    if spec.app == "baseline":
        return _bare_app()
    from agenthost.channels.discord import DiscordChannel

    channel = DiscordChannel(
        application_id=APPLICATION_ID,
        public_key=public_key,
        bot_token=BOT_TOKEN,
        api_base_url=f"http://127.0.0.1:{fake_port}/api/v10",
        register_commands=False,
        stream=False,
        max_pending=100_000,
    )
    return loopback.host_app(echo, channel, spec.store, state_dir)


def _bare_app() -> Any:
    """The route's JSON work and nothing else: no signature, no store."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def readiness(request: Request) -> Response:
        return JSONResponse({"status": "healthy"})

    async def interactions(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"message": "Not an interaction", "code": 50035}, status_code=400)
        kind = body.get("type") if isinstance(body, dict) else None
        return JSONResponse({"type": 1 if kind == 1 else 5})

    return Starlette(
        routes=[
            Route("/readiness", readiness, methods=["GET"]),
            Route(PATH, interactions, methods=["POST"]),
        ]
    )


def _fake_api() -> Any:
    """Acknowledges every interaction-webhook call and counts the ``@original`` edits."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    edits = [0]

    async def readiness(request: Request) -> Response:
        return JSONResponse({"status": "healthy"})

    async def edit(request: Request) -> Response:
        body = await request.json()
        edits[0] += 1
        return JSONResponse({"id": "1", "content": body.get("content", ""), "flags": 0})

    async def followup(request: Request) -> Response:
        return JSONResponse({"id": "2"})

    async def stats(request: Request) -> Response:
        return JSONResponse({"edits": edits[0]})

    return Starlette(
        routes=[
            Route("/readiness", readiness, methods=["GET"]),
            Route("/bench/stats", stats, methods=["GET"]),
            Route("/api/v10/webhooks/{app}/{token}/messages/@original", edit, methods=["PATCH"]),
            Route("/api/v10/webhooks/{app}/{token}", followup, methods=["POST"]),
        ]
    )
