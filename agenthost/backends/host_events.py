"""What the host just did, as small events the console's live view and ``/metrics`` read.

An event carries a kind, a channel, an outcome, ids and numbers: never message text,
tokens or claims. Events reach subscribers through bounded streams; a subscriber that
falls behind loses events (counted in ``dropped``) rather than slowing the host.

Until the host publishes events itself (see the call sites listed in ``tracing``), the
:class:`LogBridge` derives them from the host's structured log records, which by design
already carry only ids and outcomes. It needs the ``agenthost`` logger at INFO; when that
logger is quieter, :func:`attach` lowers it to INFO until :func:`detach` (``agenthost
serve`` logs INFO anyway). Log records are process-wide: several hosts in one process
share what their bridges see.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

SUBSCRIBER_BUFFER = 256
MAX_SUBSCRIBERS = 64


@attrs.frozen
class HostEvent:
    """One thing the host did. ``kind``: ``turn``, ``run``, ``delivery``, ``request``."""

    kind: str
    outcome: str
    channel: str | None = None
    ids: Mapping[str, str] = attrs.field(factory=dict)
    numbers: Mapping[str, float] = attrs.field(factory=dict)


class TooManySubscribers(RuntimeError):
    pass


class HostEvents:
    """A bounded fan-out of :class:`HostEvent`s to listeners and stream subscribers."""

    def __init__(self) -> None:
        self._streams: set[MemoryObjectSendStream[HostEvent]] = set()
        self._listeners: list[Callable[[HostEvent], None]] = []
        self._lock = threading.Lock()
        self.dropped = 0

    def listen(self, listener: Callable[[HostEvent], None]) -> None:
        """Call ``listener`` synchronously for every event (it must not block)."""
        with self._lock:
            self._listeners.append(listener)

    @contextmanager
    def subscribe(self) -> Iterator[MemoryObjectReceiveStream[HostEvent]]:
        with self._lock:
            if len(self._streams) >= MAX_SUBSCRIBERS:
                raise TooManySubscribers("too many live subscribers")
            send, receive = anyio.create_memory_object_stream[HostEvent](SUBSCRIBER_BUFFER)
            self._streams.add(send)
        try:
            with receive:
                yield receive
        finally:
            with self._lock:
                self._streams.discard(send)
            send.close()

    def publish(self, event: HostEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
            streams = list(self._streams)
        for listener in listeners:
            listener(event)
        for stream in streams:
            try:
                stream.send_nowait(event)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.dropped += 1


# What a host log record's message means as an event: (kind, outcome or None to read
# the record's "status" field).
_RECORD_EVENTS: Mapping[str, tuple[str, str | None]] = {
    "turn completed": ("turn", "completed"),
    "turn failed": ("turn", "failed"),
    "request denied": ("turn", "denied"),
    "turn refused": ("turn", "refused"),
    "command answered": ("turn", "command"),
    "background run accepted": ("run", "queued"),
    "background run started": ("run", "running"),
    "background run finished": ("run", None),
    "recovered an abandoned background run": ("run", None),
    "delivered": ("delivery", "delivered"),
    "delivery failed": ("delivery", None),
    "delivery replayed": ("delivery", "replayed"),
    "recovered an abandoned delivery": ("delivery", None),
    "proactive message scheduled": ("delivery", "scheduled"),
    "session lease wait": ("lease", "waited"),
}
_ID_FIELDS = ("run_id", "token", "delivery_id", "key")
_TEXT_FIELDS = ("reason", "cancelled", "status")
_NUMBER_FIELDS = ("attempt", "deliveries", "seconds", "duration")


class LogBridge(logging.Handler):
    """Turns the host's structured log records into :class:`HostEvent`s."""

    def __init__(self, events: HostEvents) -> None:
        super().__init__(level=logging.INFO)
        self._events = events
        self.lowered_from: int | None = None  # the logger's own level before attach

    def emit(self, record: logging.LogRecord) -> None:
        meaning = _RECORD_EVENTS.get(record.msg if isinstance(record.msg, str) else "")
        if meaning is None:
            return
        kind, outcome = meaning
        fields: dict[str, Any] = vars(record)
        if outcome is None:
            outcome = str(fields.get("status", "unknown"))
        if kind == "turn" and outcome == "failed" and fields.get("cancelled"):
            outcome = "cancelled"
        ids = {name: str(fields[name]) for name in _ID_FIELDS if fields.get(name) is not None}
        for name in _TEXT_FIELDS:
            if fields.get(name) is not None and name != "status":
                ids[name] = str(fields[name])
        numbers = {
            name: float(fields[name])
            for name in _NUMBER_FIELDS
            if isinstance(fields.get(name), int | float) and not isinstance(fields[name], bool)
        }
        channel = fields.get("channel")
        self._events.publish(
            HostEvent(
                kind=kind,
                outcome=outcome,
                channel=str(channel) if channel is not None else None,
                ids=ids,
                numbers=numbers,
            )
        )


_attached: dict[int, LogBridge] = {}


def attach(events: HostEvents) -> LogBridge:
    """Feed ``events`` from the ``agenthost`` logger (once per ``HostEvents``)."""
    bridge = _attached.get(id(events))
    if bridge is not None:
        return bridge
    bridge = LogBridge(events)
    logger = logging.getLogger("agenthost")
    if logger.getEffectiveLevel() > logging.INFO:
        bridge.lowered_from = logger.level
        logger.setLevel(logging.INFO)
    logger.addHandler(bridge)
    _attached[id(events)] = bridge
    return bridge


def detach(events: HostEvents) -> None:
    bridge = _attached.pop(id(events), None)
    if bridge is not None:
        logger = logging.getLogger("agenthost")
        logger.removeHandler(bridge)
        if bridge.lowered_from is not None:
            logger.setLevel(bridge.lowered_from)
