"""The demo host: a small tool-using Agent Framework agent that needs no network or key.

Its "model" is :class:`LocalChatClient`, a few deterministic rules over the conversation:
arithmetic questions become a call to the ``add`` or ``multiply`` tool (run by the
framework's real function-invocation loop), "what did I say first?" is answered from the
session's history, and anything else is echoed with its place in the conversation. That is
enough to show sessions, tools, streaming and background runs end to end.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent_framework import (
    Agent,
    BaseChatClient,
    ChatResponse,
    ChatResponseUpdate,
    Content,
    FunctionInvocationLayer,
    Message,
    ResponseStream,
    tool,
)

_ARITHMETIC = re.compile(
    r"(?P<a>-?\d+(?:\.\d+)?)\s*(?P<op>\+|plus|\*|x|times)\s*(?P<b>-?\d+(?:\.\d+)?)", re.I
)
_RECALL = re.compile(r"what did i (say|ask) first", re.I)


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


class LocalChatClient(FunctionInvocationLayer[Any], BaseChatClient[Any]):
    """A deterministic stand-in for a model, for demos and tests (no network)."""

    OTEL_PROVIDER_NAME = "agenthost.local"

    def _inner_get_response(
        self,
        *,
        messages: Sequence[Message],
        stream: bool,
        options: Mapping[str, Any],
        **kwargs: Any,
    ) -> Awaitable[ChatResponse] | ResponseStream[ChatResponseUpdate, ChatResponse]:
        reply = _reply_to(messages)
        if stream:
            return self._build_response_stream(_stream_words(reply))

        async def complete() -> ChatResponse:
            return ChatResponse(messages=[reply])

        return complete()


def _reply_to(messages: Sequence[Message]) -> Message:
    last = messages[-1]
    results = [c for c in last.contents if c.type == "function_result"]
    if results:
        return _assistant_text(f"The answer is {_number(results[0].result)}.")
    text = last.text or ""
    match = _ARITHMETIC.search(text)
    if match:
        op = match["op"].lower()
        name = "add" if op in ("+", "plus") else "multiply"
        arguments = {"a": float(match["a"]), "b": float(match["b"])}
        call = Content.from_function_call(
            call_id=f"call_{len(messages)}", name=name, arguments=arguments
        )
        return Message(role="assistant", contents=[call])
    user_turns = [m.text for m in messages if m.role == "user"]
    if _RECALL.search(text):
        first = user_turns[0] if len(user_turns) > 1 else None
        return _assistant_text(
            f'You first said: "{first}"' if first else "This is the first thing you said."
        )
    return _assistant_text(f'You said: "{text}" (message {len(user_turns)} of this conversation)')


def _number(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else str(number)


def _assistant_text(text: str) -> Message:
    return Message(role="assistant", contents=[Content.from_text(text)])


async def _stream_words(reply: Message) -> AsyncIterator[ChatResponseUpdate]:
    for content in reply.contents:
        if content.type != "text" or not content.text:
            yield ChatResponseUpdate(role="assistant", contents=[content])
            continue
        words = content.text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            yield ChatResponseUpdate(role="assistant", contents=[Content.from_text(piece)])


def build_agent() -> Agent[Any]:
    return Agent(
        client=LocalChatClient(),
        tools=[add, multiply],
        name="demo",
        instructions="A local demo agent: arithmetic through tools, and it remembers.",
    )


def build_host(state_dir: str | Path = ".agenthost") -> Any:
    """The demo host on the SQLite default: Invocations and Responses, open to anyone (a
    demo: Responses takes any API key, and each key is its own caller)."""
    from agenthost.backends.host import Host
    from agenthost.channels.invocations import InvocationsChannel
    from agenthost.channels.responses import ResponsesChannel

    return Host(
        build_agent(),
        channels=[InvocationsChannel(), ResponsesChannel()],
        state_dir=state_dir,
    )
