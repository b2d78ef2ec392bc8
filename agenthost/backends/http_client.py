"""The host's one outbound HTTP client: ``httpx.AsyncClient``, with requests entering the
connection pool one at a time per origin.

Why: httpcore's pool (1.0.x) hands an idle keep-alive connection to a request but leaves
it marked idle until that request's task runs again and starts its exchange. A request
to the same origin entering the pool in between is handed the same connection, finds it
busy (``ConnectionNotAvailable``) and goes round again, every round a pass over all
pooled connections (each idle one polled for a server-side close). Under a fan-out (tens
of pushes to one API at once) that was most requests, several times each: in the outbox
benchmark, 6.4 extra rounds a request and about a fifth of the host's CPU.

So a request waits at its origin's gate until the request ahead of it has a connection
of its own, which httpcore's ``trace`` extension reports: the TCP connect of a new
connection begins (nobody else can be handed a connection still connecting), or the
request's first header goes out on a reused one (it is marked busy by then). Past that
point requests run side by side as before: only the few event-loop turns between
entering the pool and starting on a connection are taken one at a time, and a slow or
failing exchange holds up nobody. Whatever happens first, the gate opens when ``send``
returns or raises. A caller's own ``trace`` callback still sees every event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs
import httpx

#: httpcore trace events after which the request holds its connection alone.
_HAS_ITS_CONNECTION = frozenset(
    {
        "connection.connect_tcp.started",
        "http11.send_request_headers.started",
        "http2.send_request_headers.started",
    }
)

TraceCallback = Callable[[str, dict[str, Any]], Awaitable[None]]
Origin = tuple[str, str, int | None]


@attrs.define
class _Gate:
    turn: anyio.Semaphore = attrs.field(factory=lambda: anyio.Semaphore(1))
    users: int = 0  # requests waiting at or passing the gate; at 0 the gate is dropped


class HostHttpClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` whose requests enter the pool one at a time per origin (see
    the module docstring); everything else, settings and proxies from the environment
    included, is httpx's own."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._gates: dict[Origin, _Gate] = {}

    async def send(self, request: httpx.Request, **options: Any) -> httpx.Response:
        origin = (request.url.scheme, request.url.host, request.url.port)
        gate = self._gates.get(origin)
        if gate is None:
            gate = self._gates[origin] = _Gate()
        gate.users += 1
        try:
            await gate.turn.acquire()
            passing = _Passing(gate.turn)
            callers_trace: TraceCallback | None = request.extensions.get("trace")

            async def trace(event: str, info: dict[str, Any]) -> None:
                if event in _HAS_ITS_CONNECTION:
                    passing.through()
                    # Later steps need not report here (httpcore reads the extension
                    # afresh for each step).
                    _set_trace(request, callers_trace)
                if callers_trace is not None:
                    await callers_trace(event, info)

            request.extensions["trace"] = trace
            try:
                return await super().send(request, **options)
            finally:
                passing.through()
                _set_trace(request, callers_trace)
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[origin]


@attrs.define
class _Passing:
    """One request's turn at its gate, given back once."""

    turn: anyio.Semaphore
    done: bool = False

    def through(self) -> None:
        if not self.done:
            self.done = True
            self.turn.release()


def _set_trace(request: httpx.Request, trace: TraceCallback | None) -> None:
    if trace is None:
        request.extensions.pop("trace", None)
    else:
        request.extensions["trace"] = trace
