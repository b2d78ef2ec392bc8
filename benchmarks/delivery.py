"""Delivery: fan-out through the SQLite outbox, and routing decisions in the pure core.

Fan-out rows: one host on a temporary SQLite file with 100 ``WebhookChannel``s pointed at
one loopback receiver (Hypercorn, a Starlette route answering 200 after reading the body;
served in the same process and event loop, so its CPU counts against the host's). Each
round ``Host.deliver`` routes one message to the first N webhooks (``channels([...])``),
which schedules N deliveries in one transaction; the delivery worker claims them, signs
and posts each in its own task (at most ``max_concurrent_deliveries`` at once) and records
``Sent``. A row times whole rounds, from scheduling until the last delivery of the round
is ``delivered`` (watched with one store query every 2 ms that reads at most one
delivery still on its way), and reports deliveries per second, the mean milliseconds per
round (``ms/round``) and the median round.

Routing rows: ``routing.resolve_destinations`` for a user seen in 12 conversations on 6
channels with 6 linked identities (``all_linked``, ``channels`` of 3, ``active``), called
directly: decisions per second of the core alone.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from agenthost.sansio_core import routing
from agenthost.sansio_core.delivery import DeliveryStatus
from agenthost.sansio_core.routing import Destination, LastSeen
from agenthost.sansio_core.types import ChannelIdentity, ResponseTarget
from benchmarks.report import Row, format_seconds
from benchmarks.timing import time_calls

FAN_OUTS = (1, 10, 100)
HOOKS = max(FAN_OUTS)
BUDGET_SECONDS = 1.5  # per fan-out row
MIN_ROUNDS = 3  # per fan-out row, even past the budget: a mean of one round says little
MAX_ROUNDS = 10_000  # a bound on each fan-out row besides the clock
ROUTING_BUDGET = 0.5  # per routing row
SECRET = "bench-secret"


def run() -> list[Row]:
    rows = _routing_rows()
    with tempfile.TemporaryDirectory(prefix="agenthost-bench-") as directory:
        rows += anyio.run(_fan_out_rows, Path(directory), backend="asyncio")
    return rows


# --- fan-out through the outbox -----------------------------------------------------


async def _fan_out_rows(directory: Path) -> list[Row]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from agenthost import Host, HostMessage
    from agenthost.backends.serving import bound_socket, hypercorn_config, serve_app
    from agenthost.channels.webhook import WebhookChannel
    from agenthost.stores.sqlite import SQLiteStore

    async def hook(request: Request) -> Response:
        await request.body()
        return JSONResponse({"ok": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    receiver = Starlette(
        routes=[Route("/hook", hook, methods=["POST"]), Route("/readiness", ready)]
    )
    sock = bound_socket("127.0.0.1")
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    config = hypercorn_config(bind=[f"fd://{sock.detach()}"], graceful_timeout=2.0)
    stop = anyio.Event()

    async def answer(messages: list[HostMessage]) -> str:
        return "ok"

    names = [f"hook_{i:03}" for i in range(HOOKS)]
    host = Host(
        answer,
        channels=[WebhookChannel(name=name, url=url, secret=SECRET) for name in names],
        store=SQLiteStore(directory / "state.db"),
        state_dir=directory,
        max_concurrent_deliveries=32,
    )
    rows: list[Row] = []
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: serve_app(receiver, config, shutdown_trigger=stop.wait))
        try:
            async with host.running():
                for fan_out in FAN_OUTS:
                    rows.append(await _fan_out_row(host, names[:fan_out]))
        finally:
            stop.set()
    return rows


async def _fan_out_row(host: Any, names: list[str]) -> Row:
    target = ResponseTarget.to_channels(names)
    await _round(host, target)  # warm up: connections, statements
    samples: list[float] = []
    deadline = time.perf_counter() + BUDGET_SECONDS
    for _ in range(MAX_ROUNDS):
        if len(samples) >= MIN_ROUNDS and time.perf_counter() >= deadline:
            break
        started = time.perf_counter()
        await _round(host, target)
        samples.append(time.perf_counter() - started)
    total = len(samples) * len(names)
    ordered = sorted(samples)
    return Row(
        f"fan-out to {len(names)} via SQLite outbox",
        total,
        sum(samples),
        {
            "unit": "deliveries",
            # The targets are per round (< 20 ms to 10, < 100 ms to 100).
            "ms/round": f"{1000 * sum(samples) / len(samples):.1f}",
            "round p50": format_seconds(ordered[len(ordered) // 2]),
            "rounds": str(len(samples)),
        },
    )


# A round is over when none of its deliveries is still on its way.
_ON_ITS_WAY = (DeliveryStatus.SCHEDULED, DeliveryStatus.SENDING, DeliveryStatus.FAILED)


async def _round(host: Any, target: ResponseTarget) -> None:
    scheduled = await host.deliver(isolation_key="bench-user", message="hello", target=target)
    assert len(scheduled) == len(target.channels), "every webhook is a destination"
    # Watching is polling the store (the host has no completion event to wait on), for at
    # most one delivery still on its way, so it costs little whatever the fan-out: reading
    # back every finished delivery each poll took about 30 % of a round's CPU at 100. The
    # round's deliveries are purged at its end so the next round counts from zero.
    with anyio.fail_after(30):
        while await host.store.list_deliveries(_ON_ITS_WAY, limit=1):  # noqa: ASYNC110
            await anyio.sleep(0.002)
    stuck = await host.store.list_deliveries([DeliveryStatus.DEAD, DeliveryStatus.UNKNOWN])
    if stuck:
        raise RuntimeError(f"delivery {stuck[0].delivery_id} is {stuck[0].status.value}: "
                           f"{stuck[0].last_error}")  # fmt: skip
    delivered = await host.store.purge_deliveries([DeliveryStatus.DELIVERED])
    assert delivered == len(scheduled), "every delivery of the round was delivered"


# --- routing in the pure core -------------------------------------------------------


def _routing_rows() -> list[Row]:
    channels = [f"ch{i}" for i in range(6)]
    identities = [ChannelIdentity(name, f"user-on-{name}") for name in channels]
    seen = [
        LastSeen(identity.channel, identity, conversation, 1000.0 + i * 7 + j)
        for i, identity in enumerate(identities)
        for j, conversation in enumerate((None, f"group-{i}"))
    ]
    originating = Destination("ch0", identities[0], None)
    can_push = {name: name != "ch5" for name in channels}

    def link_allowed(a: str, b: str) -> bool:
        return b != "ch4"

    def decide(target: ResponseTarget) -> Any:
        return lambda i: routing.resolve_destinations(
            target,
            originating=originating,
            last_seen=seen,
            linked=identities,
            can_push=can_push,
            link_allowed=link_allowed,
        )

    targets = {
        "all_linked": ResponseTarget.all_linked(),
        "channels x3": ResponseTarget.to_channels(["ch1", "ch2", "ch4"]),
        "active": ResponseTarget.active(),
    }
    return [
        time_calls(f"routing decision ({name})", decide(target), budget=ROUTING_BUDGET)
        for name, target in targets.items()
    ]
