"""The host server's resident memory after ``REQUESTS`` requests on the SQLite store.

One host process (:mod:`benchmarks.loopback`: its own process, the project's Hypercorn
helpers, asyncio) serves ``InvocationsChannel`` and ``ResponsesChannel`` over a plain
``async def`` echo target on the SQLite store a user gets by default. ``WORKERS`` keep-alive
connections send requests until ``REQUESTS`` were answered (or ``MAX_SECONDS`` passed: the
row then says how many it got to): half the connections Invocations turns on
``SESSIONS`` returning sessions, half non-streaming Responses creates (a new response, its
session and record saved each time).

The memory is Linux's own account of the server process, read from ``/proc/<pid>/status``:
``VmRSS`` (resident now) after ``WARMUP_REQUESTS`` requests and again after the load, and
``VmHWM`` (the peak resident size). The issue's target: RSS <= 60 MiB after 10k requests.
``ops/s`` is the load's requests per second, for context only.
"""

from __future__ import annotations

import json
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from benchmarks import loopback
from benchmarks.report import Row

REQUESTS = 10_000
WARMUP_REQUESTS = 200
MAX_SECONDS = 30.0  # the load stops here even short of REQUESTS
WORKERS = 8  # concurrent keep-alive connections; even: half per channel
SESSIONS = 512  # Invocations session ids s-0 ... s-511: ~10 turns each, histories stay short
WORDS = "hello from the memory benchmark"


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="agenthost-bench-memory-") as directory:
        build = partial(_build_app, Path(directory))
        with loopback.server_process(build, name="bench-memory", label="host SQLite") as server:
            return [anyio.run(_measure, server, backend="asyncio")]


async def _measure(server: loopback.Server) -> Row:
    await loopback.wait_ready(server)
    requests = _requests()
    drive = partial(loopback.drive, server, requests, connections=WORKERS, check=_check)
    with anyio.fail_after(2 * MAX_SECONDS + 60.0):
        await drive(max_requests=WARMUP_REQUESTS, seconds=MAX_SECONDS)
        before = server.memory_kib()
        load = await drive(max_requests=REQUESTS, seconds=MAX_SECONDS)
        after = server.memory_kib()
    extra = {
        "RSS before": _mib(before["VmRSS"]),
        "RSS after": _mib(after["VmRSS"]),
        "peak RSS": _mib(after["VmHWM"]),
        "growth/1k req": _mib((after["VmRSS"] - before["VmRSS"]) * 1000 / load.requests)
        if load.requests
        else "",
    }
    if load.requests < REQUESTS:
        extra["note"] = f"stopped at {MAX_SECONDS:.0f} s, short of {REQUESTS:,}"
    return load.row(f"server RSS after {load.requests:,} requests, host SQLite (asyncio)", extra)


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def _requests() -> list[bytes]:
    """Even indexes Invocations, odd Responses: with an even ``WORKERS``, connection ``c``
    only ever sends the channel of ``c``'s parity (see ``loopback.drive``)."""
    requests = []
    for n in range(SESSIONS):
        invoke = {"input": WORDS, "session_id": f"s-{n}"}
        requests.append(loopback.post_request("/invocations/invoke", json.dumps(invoke).encode()))
        create = json.dumps({"model": "bench", "input": WORDS}).encode()
        headers = {"authorization": "Bearer bench-key"}
        requests.append(loopback.post_request("/responses/v1/responses", create, headers=headers))
    return requests


def _check(answer: loopback.Answer) -> None:
    body = json.loads(answer.body)
    if not isinstance(body, dict):
        raise AssertionError(f"unexpected answer {answer.status}: {answer.body[:300]!r}")
    if "output" in body and isinstance(body["output"], str):
        text = body["output"]  # Invocations
    else:
        try:
            text = body["output"][0]["content"][0]["text"].strip()  # Responses
        except (LookupError, TypeError, AttributeError):
            text = None
    if text != WORDS:
        raise AssertionError(f"unexpected answer {answer.status}: {answer.body[:300]!r}")


# --- the server side (a spawned process) ----------------------------------------------


async def echo(messages: list[Any]) -> str:
    return str(messages[-1].text)


def _build_app(state_dir: Path) -> Any:
    from agenthost import Host
    from agenthost.channels.invocations import InvocationsChannel
    from agenthost.channels.responses import ResponsesChannel
    from agenthost.stores.sqlite import SQLiteStore

    host = Host(
        target=echo,
        channels=[InvocationsChannel(), ResponsesChannel()],
        store=SQLiteStore(state_dir / "bench.db"),
        state_dir=state_dir,
        shutdown_grace_seconds=loopback.GRACE_SECONDS,
    )
    return host.app
