"""Sample: an Agent Framework ``Workflow`` with typed input, fed through ``run_hook``.

The workflow's start executor takes an ``Order`` (a dataclass), not text. The run hook
turns what each channel received into one: the Invocations JSON body's ``input`` object
(``{"item": "apples", "quantity": 3}``) or a chat line (``3 apples``). The workflow
answers with a quote.

Serve it with ``python -m agenthost serve samples.workflow_input.app:build_host``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any, Never

import attrs
from agent_framework import WorkflowBuilder, WorkflowContext, executor

from agenthost import Host
from agenthost.channels.invocations import InvocationsChannel
from agenthost.channels.responses import ResponsesChannel
from agenthost.sansio_core.types import ChannelRequest, TextPart

PRICES = {"apples": 0.5, "pears": 0.75, "plums": 0.3}
_CHAT_ORDER = re.compile(r"^\s*(\d{1,4})\s+([a-z]+)\s*$", re.I)


@dataclasses.dataclass
class Order:
    item: str
    quantity: int


@executor(id="quote")
async def quote(order: Order, ctx: WorkflowContext[Never, str]) -> None:
    price = PRICES.get(order.item)
    if price is None:
        await ctx.yield_output(f"We do not sell {order.item}; try {', '.join(PRICES)}.")
        return
    await ctx.yield_output(f"{order.quantity} {order.item} cost {order.quantity * price:.2f}.")


def to_order(request: ChannelRequest, *, target: Any, protocol_request: Any) -> ChannelRequest:
    """The channel's input as an ``Order`` (the workflow takes nothing else)."""
    if isinstance(request.input, Mapping):
        order = Order(str(request.input["item"]), int(request.input["quantity"]))
        return attrs.evolve(request, input=order)
    texts = [
        part.text
        for message in request.input
        for part in getattr(message, "parts", ())
        if isinstance(part, TextPart)
    ]
    found = _CHAT_ORDER.match(texts[-1] if texts else "")
    if found is None:
        return attrs.evolve(request, input=Order("nothing", 0))
    return attrs.evolve(request, input=Order(found[2].lower(), int(found[1])))


def build_host() -> Host:
    return Host(
        WorkflowBuilder(start_executor=quote, name="quotes").build(),
        channels=[InvocationsChannel(typed_input=True), ResponsesChannel()],
        run_hook=to_order,
        state_dir=os.environ.get("AGENTHOST_STATE_DIR", ".agenthost"),
    )
