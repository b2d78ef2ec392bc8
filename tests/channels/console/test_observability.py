"""Metrics in the Prometheus text format, host events, and OpenTelemetry request spans."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agenthost import Host
from agenthost.backends.host_events import HostEvent, HostEvents, attach, detach
from agenthost.backends.metrics import Counter, Histogram, HostMetrics
from agenthost.channels.console import ConsoleChannel
from agenthost.channels.console.access import AccessSettings, host_header_name, may_reach
from agenthost.channels.invocations import InvocationsChannel
from agenthost.stores.memory import MemoryStore

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    trace.set_tracer_provider(provider)
    yield _exporter


def test_counters_and_histograms_render_in_the_text_format() -> None:
    counter = Counter("x_total", "Things.")
    counter.inc({"channel": 'a"b\\c'})
    counter.inc({"channel": 'a"b\\c'}, 2)
    assert counter.render() == [
        "# HELP x_total Things.",
        "# TYPE x_total counter",
        'x_total{channel="a\\"b\\\\c"} 3',
    ]
    histogram = Histogram("y_seconds", "Time.", (0.1, 1.0))
    for value in (0.05, 0.5, 5.0):
        histogram.observe({"k": "v"}, value)
    assert histogram.render()[2:] == [
        'y_seconds_bucket{k="v",le="0.1"} 1',
        'y_seconds_bucket{k="v",le="1"} 2',
        'y_seconds_bucket{k="v",le="+Inf"} 3',
        'y_seconds_sum{k="v"} 5.55',
        'y_seconds_count{k="v"} 3',
    ]


def test_host_events_feed_the_counters() -> None:
    ticks = iter([10.0, 12.5])
    metrics = HostMetrics(clock=lambda: next(ticks))
    metrics.observe(HostEvent("turn", "denied", "telegram"))
    metrics.observe(HostEvent("turn", "completed", "telegram"))
    metrics.observe(HostEvent("run", "running", "invocations", ids={"token": "t1"}))
    metrics.observe(HostEvent("run", "completed", None, ids={"token": "t1"}))
    metrics.observe(HostEvent("delivery", "failed", "telegram"))
    metrics.observe(HostEvent("delivery", "dead", "telegram"))
    assert metrics.turns.values == {
        (("channel", "telegram"), ("outcome", "denied")): 1,
        (("channel", "telegram"), ("outcome", "completed")): 1,
    }
    assert metrics.denials.values == {(("channel", "telegram"),): 1}
    assert metrics.retries.values == {(("channel", "telegram"),): 1}
    assert metrics.dead_letters.values == {(("channel", "telegram"),): 1}
    [(_, (_, total, count))] = metrics.run_seconds.series.items()
    assert (total, count) == (2.5, 1)


def test_the_log_bridge_keeps_ids_and_outcomes_only() -> None:
    events = HostEvents()
    seen: list[HostEvent] = []
    events.listen(seen.append)
    attach(events)
    try:
        logging.getLogger("agenthost.host").warning(
            "request denied",
            extra={"run_id": "run_1", "channel": "telegram", "reason": "denied",
                   "denied_native_id": "42"},
        )  # fmt: skip
        logging.getLogger("agenthost.host").info("something else", extra={"channel": "x"})
    finally:
        detach(events)
    assert seen == [
        HostEvent("turn", "denied", "telegram", ids={"run_id": "run_1", "reason": "denied"})
    ]


def test_the_loopback_rules() -> None:
    local = AccessSettings(allow_remote=False, login_required=False)
    assert host_header_name("[::1]:8000") == "[::1]"
    assert host_header_name("LOCALHOST:80") == "localhost"
    assert may_reach(local, "::1", "[::1]:8000")
    assert may_reach(local, "127.0.0.5", "127.0.0.1")
    assert not may_reach(local, "10.0.0.1", "127.0.0.1")
    assert not may_reach(local, "127.0.0.1", "rebound.example")
    assert not may_reach(local, None, "localhost")
    assert may_reach(AccessSettings(True, True), "203.0.113.9", "console.example")


@pytest.mark.anyio
async def test_a_request_span_continues_the_callers_trace(spans: InMemorySpanExporter) -> None:
    spans.clear()
    host = Host(
        _answer,
        channels=[ConsoleChannel(metrics=True), InvocationsChannel()],
        store=MemoryStore(),
    )
    async with host.running():
        transport = httpx.ASGITransport(app=host.app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            answered = await client.post(
                "/invocations/invoke",
                json={"input": "secret words"},
                headers={"traceparent": f"00-{TRACE_ID}-{PARENT}-01"},
            )
            assert answered.status_code == 200
            metrics = await client.get("/metrics")
            queued = await client.post(
                "/invocations/invoke", json={"input": "later words", "background": True}
            )
            assert queued.status_code == 202
            poll_url = queued.json()["poll_url"]
            with anyio.fail_after(10):
                while (await client.get(poll_url)).json()["status"] != "completed":
                    await anyio.sleep(0.02)
            page = await client.get("/console")
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
            assert csrf is not None
            chat = await client.post(
                "/console/chat", data={"message": "console words", "csrf": csrf[1]}
            )
            assert chat.status_code == 200
    [received] = [
        s
        for s in spans.get_finished_spans()
        if s.name == "agenthost.receive"
        and s.attributes
        and s.attributes.get("agenthost.channel") == "invocations"
        and format(s.context.trace_id, "032x") == TRACE_ID
    ]
    assert received.name == "agenthost.receive"
    assert format(received.context.trace_id, "032x") == TRACE_ID
    assert received.parent is not None and format(received.parent.span_id, "016x") == PARENT
    assert received.attributes is not None
    assert received.attributes["http.response.status_code"] == 200
    assert "secret words" not in repr(dict(received.attributes))
    finished = spans.get_finished_spans()
    [console_request] = [s for s in finished if s.attributes and
                         s.attributes.get("agenthost.channel") == "console" and
                         s.attributes.get("http.request.method") == "POST"]  # fmt: skip
    turns = {s.attributes["agenthost.channel"]: s for s in finished  # type: ignore[index]
             if s.name == "agenthost.turn"}  # fmt: skip
    # the foreground invocation's turn (the background run's turn is in another trace)
    turns["invocations"] = next(s for s in finished if s.name == "agenthost.turn"
                                and format(s.context.trace_id, "032x") == TRACE_ID)  # fmt: skip
    turn = turns["console"]
    assert turn.parent is not None and turn.parent.span_id == console_request.context.span_id
    # The invocations turn: under its request, and the turn's steps under it.
    invoked = turns["invocations"]
    assert invoked.parent is not None and invoked.parent.span_id == received.context.span_id
    steps = {s.name: s for s in finished if s.parent is not None
             and s.parent.span_id == invoked.context.span_id}  # fmt: skip
    assert set(steps) >= {"agenthost.resolve_session", "agenthost.run", "agenthost.save"}
    assert steps["agenthost.resolve_session"].attributes["agenthost.access"] == "allowed"  # type: ignore[index]
    assert steps["agenthost.save"].attributes["agenthost.saved"] is True  # type: ignore[index]
    for step in steps.values():
        assert "secret words" not in repr(dict(step.attributes or {}))
    # A background run has a span of its own, with the turn's steps under it.
    [background] = [s for s in finished if s.name == "agenthost.background_run"]
    assert background.attributes is not None
    assert background.attributes["agenthost.channel"] == "invocations"
    assert queued.json()["token"] not in repr(dict(background.attributes))  # a reference only
    below = {s.name for s in finished if s.parent is not None
             and s.parent.span_id == background.context.span_id}  # fmt: skip
    assert {"agenthost.run", "agenthost.save"} <= below
    assert turn.attributes is not None and turn.attributes["agenthost.outcome"] == "completed"
    assert "console words" not in repr(dict(turn.attributes))
    assert 'agenthost_request_duration_seconds_count{channel="invocations"} 1' in metrics.text
    assert 'agenthost_turns_total{channel="invocations",outcome="completed"} 1' in metrics.text


async def _answer(messages: Any) -> str:
    return "fine"


@pytest.mark.anyio
async def test_a_turn_that_waits_for_its_session_counts_as_a_lease_wait() -> None:
    started, release = anyio.Event(), anyio.Event()

    async def slow_first(messages: Any) -> str:
        if not started.is_set():
            started.set()
            await release.wait()
        return "done"

    host = Host(
        slow_first,
        channels=[ConsoleChannel(metrics=True), InvocationsChannel()],
        store=MemoryStore(),
    )
    async with host.running():
        transport = httpx.ASGITransport(app=host.app, client=("127.0.0.1", 5000))
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
            anyio.create_task_group() as tasks,
        ):

            async def invoke() -> None:
                await client.post("/invocations/invoke", json={"input": "hi", "session_id": "s"})

            tasks.start_soon(invoke)
            with anyio.fail_after(10):
                await started.wait()
            tasks.start_soon(invoke)  # the same session: it waits its turn
            with anyio.fail_after(10):
                while "agenthost_lease_waits_total{" not in (await client.get("/metrics")).text:
                    await anyio.sleep(0.02)
            release.set()
