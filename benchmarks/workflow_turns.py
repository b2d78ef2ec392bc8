"""Workflow turns per second at 1 and 8 concurrent sessions, next to an agent target.

Every row drives ``Host.run`` directly (no HTTP) on a host with the default store, SQLite
on a temporary file, under asyncio. The model is the demo's local chat client made to
take ``MODEL_SECONDS`` per answer, as a model call would; what is measured is how many
turns the host completes while its runs wait on the model.

- the baseline is the demo agent itself (``AgentTarget``: its session restored and saved
  every turn);
- "workflow factory" hosts a function building a one-executor workflow around the same
  agent: every run gets its own instance, and the newest checkpoint is saved with the
  session every turn;
- "built workflow" hosts one built instance of that workflow: the framework runs one
  invocation of an instance at a time, so its sessions take turns.

``N`` concurrent sessions means ``N`` workers, each sending one turn at a time on its own
session for ``BUDGET_SECONDS`` after a short warm-up. ``ratio`` is the row's turns per
second over the agent's at the same concurrency.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from benchmarks.report import Row
from benchmarks.timing import summarise

BUDGET_SECONDS = 2.0  # per row
WARMUP_SECONDS = 0.3  # per row, not reported
MODEL_SECONDS = 0.02  # one simulated model call
CONCURRENCY = (1, 8)
MAX_TURNS_PER_WORKER = 10_000  # a bound on each loop besides the clock


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="agenthost-bench-workflow-") as directory:
        return anyio.run(_rows, Path(directory), backend="asyncio")


async def _rows(directory: Path) -> list[Row]:
    from agent_framework import WorkflowBuilder

    def make_workflow() -> Any:
        return WorkflowBuilder(start_executor=_slow_agent(), name="bench").build()

    targets: Sequence[tuple[str, Callable[[], Any]]] = (
        ("agent", _slow_agent),
        ("workflow factory", lambda: make_workflow),
        ("built workflow", make_workflow),
    )
    rows: list[Row] = []
    agent_rate: dict[int, float] = {}
    for sessions in CONCURRENCY:
        for label, target in targets:
            state_dir = directory / f"{label.replace(' ', '-')}-{sessions}"
            row = await _measure(
                f"workflow turns: {label}, {sessions} sessions", target(), state_dir, sessions
            )
            if label == "agent":
                agent_rate[sessions] = row.ops_per_second
            else:
                row = Row(
                    row.name,
                    row.operations,
                    row.seconds,
                    {**row.extra, "ratio": f"{row.ops_per_second / agent_rate[sessions]:.2f}"},
                )
            rows.append(row)
    return rows


async def _measure(name: str, target: Any, state_dir: Path, sessions: int) -> Row:
    from agenthost import ChannelIdentity, ChannelRequest, Host, HostMessage
    from agenthost.channels.invocations import InvocationsChannel
    from agenthost.sansio_core.turns import TurnCompleted

    # A host needs a channel; the turns are driven through host.run directly.
    host = Host(target, channels=[InvocationsChannel()], state_dir=state_dir)

    def request(worker: int) -> ChannelRequest:
        return ChannelRequest(
            channel="invocations",
            identity=ChannelIdentity("invocations", f"user-{worker}"),
            input=(HostMessage.user("hello"),),
        )

    async def load(seconds: float, samples: list[float]) -> None:
        deadline = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            for _ in range(MAX_TURNS_PER_WORKER):
                if time.perf_counter() >= deadline:
                    return
                began = time.perf_counter()
                outcome = await host.run(request(w))
                samples.append(time.perf_counter() - began)
                if not isinstance(outcome, TurnCompleted) or "hello" not in outcome.result.text:
                    raise AssertionError(f"unexpected outcome {outcome!r}")

        async with anyio.create_task_group() as tasks:
            for w in range(sessions):
                tasks.start_soon(worker, w)

    async with host.running():
        await load(WARMUP_SECONDS, [])
        samples: list[float] = []
        started = time.perf_counter()
        with anyio.fail_after(BUDGET_SECONDS + 60.0):
            await load(BUDGET_SECONDS, samples)
        wall = time.perf_counter() - started
    # Turns per second over the wall clock (concurrent turns overlap), with their latency.
    return Row(name, len(samples), wall, summarise(name, samples).extra)


def _slow_agent() -> Any:
    """The demo agent, its model taking ``MODEL_SECONDS`` per answer."""
    from agent_framework import Agent

    from agenthost.demo import LocalChatClient, add, multiply

    class SlowLocalChatClient(LocalChatClient):
        def _inner_get_response(self, **kwargs: Any) -> Any:
            answer = super()._inner_get_response(**kwargs)
            if kwargs.get("stream"):
                return answer

            async def later() -> Any:
                await anyio.sleep(MODEL_SECONDS)
                return await answer

            return later()

    return Agent(client=SlowLocalChatClient(), tools=[add, multiply], name="bench")
