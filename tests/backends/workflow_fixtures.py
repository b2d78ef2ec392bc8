"""Workflows the workflow-target tests and the benchmark host: small, real Agent Framework
graphs whose executors sleep, ask, yield structured data or wait for the test."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Never

import anyio
from agent_framework import (
    Executor,
    Workflow,
    WorkflowBuilder,
    WorkflowContext,
    handler,
    response_handler,
)


class Overlap:
    """Counts executors running at once, across threads and event loops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def enter(self) -> None:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.started.set()

    def leave(self) -> None:
        with self._lock:
            self.running -= 1


class Sleeper(Executor):
    """Takes ``seconds`` per message, then yields ``done: <text>``."""

    def __init__(self, overlap: Overlap, seconds: float) -> None:
        super().__init__(id="sleeper")
        self._overlap = overlap
        self._seconds = seconds

    @handler
    async def work(self, text: str, ctx: WorkflowContext[Never, str]) -> None:
        self._overlap.enter()
        try:
            await anyio.sleep(self._seconds)
        except anyio.get_cancelled_exc_class():
            self._overlap.cancelled.set()
            raise
        finally:
            self._overlap.leave()
        await ctx.yield_output(f"done: {text}")


def sleeper_builder(overlap: Overlap, seconds: float) -> WorkflowBuilder:
    return WorkflowBuilder(start_executor=Sleeper(overlap, seconds), name="sleeper")


def sleeper_factory(overlap: Overlap, seconds: float) -> Any:
    def build() -> Workflow:
        return sleeper_builder(overlap, seconds).build()

    return build


@dataclasses.dataclass
class NameQuestion:
    prompt: str
    asked_for: str


class Greeter(Executor):
    """Asks for a name, then greets; remembers how many people it greeted in its state."""

    def __init__(self) -> None:
        super().__init__(id="greeter")
        self.greeted = 0

    @handler
    async def start(self, text: str, ctx: WorkflowContext[Never, str]) -> None:
        await ctx.request_info(NameQuestion(f"Who should I greet for '{text}'?", text), str)

    @response_handler
    async def greet(
        self, question: NameQuestion, name: str, ctx: WorkflowContext[Never, str]
    ) -> None:
        self.greeted += 1
        await ctx.yield_output(f"Hello {name} (re: {question.asked_for}), greeting #{self.greeted}")

    async def on_checkpoint_save(self) -> dict[str, Any]:
        return {"greeted": self.greeted}

    async def on_checkpoint_restore(self, state: dict[str, Any]) -> None:
        self.greeted = int(state.get("greeted", 0))


def greeter_factory() -> Workflow:
    return WorkflowBuilder(start_executor=Greeter(), name="greeter").build()


@dataclasses.dataclass
class Invoice:
    number: int
    total: float
    lines: list[str]


class Invoicer(Executor):
    def __init__(self) -> None:
        super().__init__(id="invoicer")

    @handler
    async def make(self, text: str, ctx: WorkflowContext[Never, Invoice]) -> None:
        await ctx.yield_output(Invoice(number=7, total=12.5, lines=text.split(",")))


def invoicer_factory() -> Workflow:
    return WorkflowBuilder(start_executor=Invoicer(), name="invoicer").build()


class TwoParts(Executor):
    """Yields its first part, waits until the test has seen it, then yields the second."""

    def __init__(self, seen_first: threading.Event) -> None:
        super().__init__(id="two_parts")
        self._seen_first = seen_first

    @handler
    async def run(self, text: str, ctx: WorkflowContext[Never, str]) -> None:
        await ctx.yield_output(f"first part of {text}")
        with anyio.fail_after(10):
            while not self._seen_first.is_set():
                await anyio.sleep(0.01)
        await ctx.yield_output("second part")


@dataclasses.dataclass
class CountQuestion:
    prompt: str


class TwoQuestions(Executor):
    """Asks two questions at once: how many guests (an ``int``), and which room (text)."""

    def __init__(self) -> None:
        super().__init__(id="planner")
        self.answers: dict[str, Any] = {}

    @handler
    async def start(self, text: str, ctx: WorkflowContext[Never, str]) -> None:
        await ctx.request_info(CountQuestion(f"How many guests for {text}?"), int)
        await ctx.request_info(NameQuestion(f"Which room for {text}?", text), str)

    @response_handler
    async def on_count(
        self, question: CountQuestion, count: int, ctx: WorkflowContext[Never, str]
    ) -> None:
        self.answers["count"] = count
        await self._maybe_done(ctx)

    @response_handler
    async def on_room(
        self, question: NameQuestion, room: str, ctx: WorkflowContext[Never, str]
    ) -> None:
        self.answers["room"] = room
        await self._maybe_done(ctx)

    async def _maybe_done(self, ctx: WorkflowContext[Never, str]) -> None:
        if len(self.answers) == 2:
            count = self.answers["count"]
            await ctx.yield_output(f"{count + 1} seats in {self.answers['room']}")

    async def on_checkpoint_save(self) -> dict[str, Any]:
        return dict(self.answers)

    async def on_checkpoint_restore(self, state: dict[str, Any]) -> None:
        self.answers = dict(state)


def two_questions_factory() -> Workflow:
    return WorkflowBuilder(start_executor=TwoQuestions(), name="planner").build()


@dataclasses.dataclass
class Decision:
    approved: bool
    note: str = ""


class Approver(Executor):
    """Asks for a ``Decision`` (a dataclass answer) before it publishes."""

    def __init__(self) -> None:
        super().__init__(id="approver")

    @handler
    async def start(self, text: str, ctx: WorkflowContext[Never, str]) -> None:
        await ctx.request_info(f"Publish '{text}'?", Decision)

    @response_handler
    async def decided(
        self, question: str, decision: Decision, ctx: WorkflowContext[Never, str]
    ) -> None:
        verdict = "published" if decision.approved else "held back"
        await ctx.yield_output(f"{verdict} ({decision.note})")


def approver_factory() -> Workflow:
    return WorkflowBuilder(start_executor=Approver(), name="approver").build()


class Gate:
    """Holds a ``Tally`` run that got ``wait`` until the test opens it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()


class Tally(Executor):
    """Answers ``<text> #<n>``, counting its session's messages in its checkpointed state;
    a ``wait`` message holds its run at the gate."""

    def __init__(self, gate: Gate) -> None:
        super().__init__(id="tally")
        self._gate = gate
        self.seen = 0

    @handler
    async def count(self, text: str, ctx: WorkflowContext[Never, str]) -> None:
        if text == "wait":
            self._gate.entered.set()
            with anyio.fail_after(10):
                while not self._gate.opened.is_set():
                    await anyio.sleep(0.01)
        self.seen += 1
        await ctx.yield_output(f"{text} #{self.seen}")

    async def on_checkpoint_save(self) -> dict[str, Any]:
        return {"seen": self.seen}

    async def on_checkpoint_restore(self, state: dict[str, Any]) -> None:
        self.seen = int(state.get("seen", 0))


def tally_factory(gate: Gate) -> Any:
    def build() -> Workflow:
        return WorkflowBuilder(start_executor=Tally(gate), name="tally").build()

    return build
