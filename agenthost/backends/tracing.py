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
- :func:`span`, the one way the host opens its other spans. The turn path's spans are
  at these call sites:

  1. ``agenthost.turn`` around each ``self._interpreter.drive(...)`` in ``Host.run``,
     ``Host.run_or_continue`` and ``Host.run_in_background``, with ``channel`` and
     ``run_id``; set ``agenthost.outcome`` where ``_log_outcome`` runs, which can also
     publish the ``HostEvent("turn", outcome, channel)`` itself instead of the
     ``host_events.LogBridge`` deriving it from the log line;
  2. ``agenthost.resolve_session`` around ``self._store.open_turn(...)`` in
     ``TurnInterpreter._open_turn``: that one round trip authorizes and resolves, so the
     span carries both ``agenthost.access`` (``allowed``, or the ``Denied.reason_code`` /
     ``link_required`` of the refused ``opening.Outcome``; never its ``log_details``) and
     ``agenthost.session_id`` and whether the lease was granted or is waited for;
  3. a lease wait: in ``TurnInterpreter._wait_for_lease`` (``fx.WaitForLease``), a
     span event ``agenthost.lease_wait`` on the current span, and (once per run) a
     ``HostEvent("lease", "waited", channel)`` for ``agenthost_lease_waits_total``;
  4. ``agenthost.run`` around ``self._target.run(call)`` in
     ``TurnInterpreter._run_target``, with ``agenthost.outcome`` = succeeded, failed or
     cancelled (the error's type only);
  5. ``agenthost.save`` around ``store.finish_run(...)`` in
     ``TurnInterpreter._finish_run`` (``fx.FinishRun``), with ``agenthost.saved``;
  6. ``agenthost.deliver`` around ``pusher.push(destination, message)`` in
     ``DeliveryWorker._push``, with ``delivery_id``, ``channel``, ``phase`` (echo or
     reply) and the outcome's state;
  7. ``agenthost.background_run`` where ``BackgroundWorker`` logs "background run
     started", linked (``trace.Link``) to the trace of the request that queued it when
     the run record keeps that request's :func:`current_traceparent`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
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


class _NotRecording:
    """What :func:`span` answers when no tracer provider records spans: entering it costs a
    method call, where even the API's no-op span switches the current context."""

    def __enter__(self) -> trace.Span:
        return trace.INVALID_SPAN

    def __exit__(self, *exc_info: object) -> None:
        return None


_NOT_RECORDING = _NotRecording()


def span(
    name: str,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    context: otel_context.Context | None = None,
    enabled: bool | None = None,
    **attributes: AttributeValue | None,
) -> AbstractContextManager[trace.Span]:
    """Open ``name`` as the current span; an exception marks it as an error by type only.

    Without a tracer provider installed (no SDK configured) nothing is opened at all: every
    turn passes several of these, and spans nobody records should cost nothing. Asking
    the API whether a provider is installed is itself not free (it looks the environment
    up each time), so a caller opening several spans for one turn asks
    :func:`tracing_enabled` once and passes the answer as ``enabled``; the host asks once,
    when it starts (``TurnInterpreter.traced``): the application installs its provider
    before serving.
    """
    if not (tracing_enabled() if enabled is None else enabled):
        return _NOT_RECORDING
    return _recording(name, kind, context, attributes)


@contextmanager
def _recording(
    name: str,
    kind: trace.SpanKind,
    context: otel_context.Context | None,
    attributes: Mapping[str, AttributeValue | None],
) -> Iterator[trace.Span]:
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


def tracing_enabled() -> bool:
    """Whether the application installed a tracer provider (an SDK) to record spans."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


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
