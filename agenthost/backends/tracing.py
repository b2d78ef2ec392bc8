"""OpenTelemetry spans for the host, with only ``opentelemetry-api`` installed.

Without an SDK (the ``otel`` extra) every span here is the API's no-op and costs next to
nothing; with one configured by the application, the spans go wherever its exporters send
them. Attributes are channel names, outcomes and ids: never message text, tokens or claims
(:func:`span` takes only ``str``/``int``/``float``/``bool`` values, and callers pass ids).

What this module owns:

- :class:`TraceMiddleware`, an ASGI middleware that opens the ``agenthost.receive`` server
  span of every inbound HTTP request, as the child of the trace context the caller sent
  (W3C ``traceparent``/``tracestate``, or whatever propagator the application set), with
  the channel the path belongs to and the status it answered; it also reports each
  request's duration to ``host_events`` for ``/metrics``.
- :func:`span`, the one way the host opens its other spans. The turn path's spans belong
  at these call sites (``backends/host.py`` and ``backends/interpreter.py``, being
  rewritten separately, so they are listed here rather than added there):

  1. ``agenthost.authorize``: around the interpreter's handling of the access decision
     (``Interpreter.drive`` where ``opening.decide``'s outcome is known) with
     ``agenthost.channel``, ``agenthost.run_id`` and ``agenthost.outcome`` = allowed,
     denied or link_required (the denial's ``reason_code``, never its details);
  2. ``agenthost.resolve_session``: around ``store.open_turn`` in
     ``TurnInterpreter._open_turn`` with ``agenthost.session_id`` and
     ``agenthost.outcome`` = granted, waited, busy (publish ``HostEvent("lease",
     "waited", channel)`` there too for the lease-wait counter);
  3. ``agenthost.run``: around ``self._target.run(call)`` in the interpreter's RunTarget
     branch with ``agenthost.outcome`` = succeeded, failed or cancelled (the error's type
     only);
  4. ``agenthost.save``: around ``store.finish_run`` with ``agenthost.saved``;
  5. ``agenthost.deliver``: around ``pusher.push`` in ``DeliveryWorker._push`` with
     ``agenthost.delivery_id``, ``agenthost.channel`` and the outcome's state;
  6. ``agenthost.turn``: around the whole of ``Host.run`` / ``run_or_continue`` /
     ``run_in_background``, next to ``_log_outcome``, which could publish the
     ``HostEvent`` directly instead of the ``host_events.LogBridge`` deriving it.

  A background run started by the worker has no inbound request: its span links to the
  trace of the request that queued it when the run record carries that request's
  ``traceparent`` (:func:`current_traceparent` gives it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agenthost.backends.host_events import HostEvent, HostEvents

TRACER_NAME = "agenthost"
AttributeValue = str | int | float | bool


def tracer() -> trace.Tracer:
    # Looked up per call (cheap): the application may install its provider after import.
    return trace.get_tracer(TRACER_NAME)


@contextmanager
def span(
    name: str,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    context: otel_context.Context | None = None,
    **attributes: AttributeValue | None,
) -> Iterator[trace.Span]:
    """Open ``name`` as the current span; an exception marks it as an error by type only."""
    clean = {f"agenthost.{k}": v for k, v in attributes.items() if v is not None}
    with tracer().start_as_current_span(
        name,
        kind=kind,
        context=context,
        attributes=clean,
        record_exception=False,
        set_status_on_exception=False,
    ) as opened:
        try:
            yield opened
        except BaseException as error:
            opened.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
            opened.set_attribute("error.type", type(error).__name__)
            raise


def current_traceparent() -> Mapping[str, str]:
    """The current trace context as headers (to store with a queued run)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def channel_of_path(path: str, prefixes: Sequence[tuple[str, str]]) -> str:
    """The channel whose mount ``path`` is under (longest prefix), or ``other``."""
    for prefix, channel in prefixes:
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return channel
    return "other"


def channel_prefixes(channels: Sequence[Any]) -> list[tuple[str, str]]:
    """Mount prefixes of ``channels`` (their ``mount`` or ``/<name>``), longest first."""
    found: list[tuple[str, str]] = []
    for channel in channels:
        name = str(getattr(channel, "name", ""))
        mount = getattr(channel, "mount", None)
        for prefix in {mount if isinstance(mount, str) else None, f"/{name}"}:
            if prefix:
                found.append((prefix, name))
    found.sort(key=lambda pair: len(pair[0]), reverse=True)
    return found


class TraceMiddleware:
    """The ``agenthost.receive`` span (and request duration event) of each HTTP request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefixes: Sequence[tuple[str, str]] = (),
        events: HostEvents | None = None,
    ) -> None:
        self.app = app
        self._prefixes = tuple(prefixes)
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", [])
        }
        parent = propagate.extract(carrier)
        channel = channel_of_path(str(scope.get("path", "")), self._prefixes)
        status = {"code": 0}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        started = time.perf_counter()
        with span(
            "agenthost.receive",
            kind=trace.SpanKind.SERVER,
            context=parent,
            channel=channel,
        ) as opened:
            opened.set_attribute("http.request.method", str(scope.get("method", "")))
            try:
                await self.app(scope, receive, sending)
            finally:
                code = status["code"]
                opened.set_attribute("http.response.status_code", code)
                if code >= 500:
                    opened.set_status(trace.Status(trace.StatusCode.ERROR))
                if self._events is not None:
                    self._events.publish(
                        HostEvent(
                            kind="request",
                            outcome=f"{code // 100}xx" if code else "none",
                            channel=channel,
                            numbers={"seconds": time.perf_counter() - started},
                        )
                    )

