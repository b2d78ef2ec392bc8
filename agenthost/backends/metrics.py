"""The host's metrics in the Prometheus text format (version 0.0.4), with no client library.

Counters and histograms are fed by :class:`host_events.HostEvent`s (turns by channel and
outcome, denials, lease waits, run latency, retries, dead letters) and by the HTTP
middleware in ``tracing`` (request latency by channel). Gauges that must be true across
replicas (deliveries by state, the age of the oldest scheduled delivery, runs by status)
are read from the store when scraped, with bounded queries.

Labels are channel names, outcomes and states only: never ids, text or claims, so the
number of series stays bounded.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from agenthost.backends.host_events import HostEvent
from agenthost.sansio_core.delivery import DeliveryStatus
from agenthost.sansio_core.types import RunStatus
from agenthost.stores.base import Store

LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
# A scrape counts at most this many deliveries per state (a bound on its cost).
MAX_COUNTED = 10_000
_MAX_OPEN_RUNS = 10_000

Labels = tuple[tuple[str, str], ...]


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Mapping[str, str], amount: float = 1.0) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for labels, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(labels)} {_number(value)}")
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.help = help_text
        self.buckets = tuple(buckets)
        self.series: dict[Labels, tuple[list[int], float, int]] = {}

    def observe(self, labels: Mapping[str, str], value: float) -> None:
        key = tuple(sorted(labels.items()))
        counts, total, count = self.series.get(key, ([0] * len(self.buckets), 0.0, 0))
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                counts[index] += 1
        self.series[key] = (counts, total + value, count + 1)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, (counts, total, count) in sorted(self.series.items()):
            for bound, cumulative in zip(self.buckets, counts, strict=True):
                bucket = (*labels, ("le", _number(bound)))
                lines.append(f"{self.name}_bucket{_labels(bucket)} {cumulative}")
            lines.append(f"{self.name}_bucket{_labels((*labels, ('le', '+Inf')))} {count}")
            lines.append(f"{self.name}_sum{_labels(labels)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(labels)} {count}")
        return lines


class HostMetrics:
    """The host's counters and histograms; :meth:`observe` is a ``HostEvents`` listener."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._run_started: dict[str, tuple[float, str | None]] = {}
        self.turns = Counter("agenthost_turns_total", "Turns by channel and outcome.")
        self.denials = Counter("agenthost_denials_total", "Requests denied by the access policy.")
        self.lease_waits = Counter(
            "agenthost_lease_waits_total", "Turns that waited for their session's lease."
        )
        self.runs = Counter("agenthost_background_runs_total", "Background runs by outcome.")
        self.deliveries = Counter(
            "agenthost_delivery_events_total", "Delivery attempts' results by state."
        )
        self.retries = Counter("agenthost_delivery_retries_total", "Deliveries to be retried.")
        self.dead_letters = Counter(
            "agenthost_dead_letters_total", "Deliveries that became dead letters."
        )
        self.run_seconds = Histogram(
            "agenthost_run_duration_seconds",
            "Background runs, from start to their final status.",
            LATENCY_BUCKETS,
        )
        self.request_seconds = Histogram(
            "agenthost_request_duration_seconds",
            "Inbound HTTP requests by channel (a foreground turn is one request).",
            LATENCY_BUCKETS,
        )

    def observe(self, event: HostEvent) -> None:
        channel = event.channel or "none"
        with self._lock:
            if event.kind == "turn":
                self.turns.inc({"channel": channel, "outcome": event.outcome})
                if event.outcome == "denied":
                    self.denials.inc({"channel": channel})
            elif event.kind == "lease":
                self.lease_waits.inc({"channel": channel})
            elif event.kind == "run":
                self._observe_run(event)
            elif event.kind == "delivery":
                self.deliveries.inc({"channel": channel, "state": event.outcome})
                if event.outcome == DeliveryStatus.FAILED.value:
                    self.retries.inc({"channel": channel})
                elif event.outcome == DeliveryStatus.DEAD.value:
                    self.dead_letters.inc({"channel": channel})
            elif event.kind == "request" and "seconds" in event.numbers:
                self.request_seconds.observe({"channel": channel}, event.numbers["seconds"])

    def _observe_run(self, event: HostEvent) -> None:
        token = event.ids.get("token")
        if event.outcome == RunStatus.RUNNING.value and token is not None:
            if len(self._run_started) < _MAX_OPEN_RUNS:
                self._run_started[token] = (self._clock(), event.channel)
            return
        if event.outcome in ("completed", "failed", "cancelled"):
            self.runs.inc({"outcome": event.outcome})
            started = self._run_started.pop(token, None) if token is not None else None
            if started is not None:
                self.run_seconds.observe(
                    {"outcome": event.outcome}, max(self._clock() - started[0], 0.0)
                )

    async def render(self, store: Store, now: float) -> str:
        """The exposition: counters and histograms, then gauges read from ``store``."""
        with self._lock:
            lines: list[str] = []
            for metric in (
                self.turns,
                self.denials,
                self.lease_waits,
                self.runs,
                self.deliveries,
                self.retries,
                self.dead_letters,
            ):
                lines.extend(metric.render())
            lines.extend(self.run_seconds.render())
            lines.extend(self.request_seconds.render())
        lines.extend(await _store_gauges(store, now))
        return "\n".join(lines) + "\n"


async def _store_gauges(store: Store, now: float) -> list[str]:
    lines = [
        "# HELP agenthost_deliveries Deliveries in the outbox by state "
        f"(counted up to {MAX_COUNTED}).",
        "# TYPE agenthost_deliveries gauge",
    ]
    for status in DeliveryStatus:
        found = await store.list_deliveries([status], limit=MAX_COUNTED)
        lines.append(f'agenthost_deliveries{{state="{status.value}"}} {len(found)}')
    oldest = await store.list_deliveries([DeliveryStatus.SCHEDULED], limit=1)
    age = max(now - oldest[0].created_at, 0.0) if oldest else 0.0
    lines += [
        "# HELP agenthost_outbox_oldest_scheduled_age_seconds "
        "Age of the oldest delivery still scheduled (0 when none).",
        "# TYPE agenthost_outbox_oldest_scheduled_age_seconds gauge",
        f"agenthost_outbox_oldest_scheduled_age_seconds {_number(age)}",
        "# HELP agenthost_background_runs Background runs not yet final, by status.",
        "# TYPE agenthost_background_runs gauge",
    ]
    for run_status in (RunStatus.QUEUED, RunStatus.RUNNING):
        runs = await store.list_runs([run_status])
        lines.append(f'agenthost_background_runs{{status="{run_status.value}"}} {len(runs)}')
    return lines


def _labels(labels: Iterable[tuple[str, str]]) -> str:
    pairs = [f'{name}="{_escape(value)}"' for name, value in labels]
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))
