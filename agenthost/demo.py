"""The demo host: a small tool-using Agent Framework agent that needs no network or key.

Its "model" is :class:`LocalChatClient`, a few deterministic rules over the conversation:
arithmetic questions become a call to the ``add`` or ``multiply`` tool (run by the
framework's real function-invocation loop), "what did I say first?" is answered from the
session's history, and anything else is echoed with its place in the conversation. That is
enough to show sessions, tools, streaming and background runs end to end.

It also calls tools a caller declares: ``call NAME {json arguments}`` calls the offered tool
``NAME`` (a Responses client's function tool reaches it as a declaration-only tool, so the
call goes back to the client). ``tool_choice`` is honoured as a model would: ``none``
makes no call, and a required function is called with the arguments the message gives.
"""

from __future__ import annotations

import json
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
_CALL = re.compile(r"\bcall (?P<name>[A-Za-z0-9_-]+)(?P<arguments>\s*\{.*\})?", re.I | re.S)


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
        reply = _reply_to(messages, options)
        if stream:
            return self._build_response_stream(_stream_words(reply))

        async def complete() -> ChatResponse:
            return ChatResponse(messages=[reply])

        return complete()


def _reply_to(messages: Sequence[Message], options: Mapping[str, Any] | None = None) -> Message:
    last = messages[-1]
    results = [c for c in last.contents if c.type == "function_result"]
    if results:
        return _assistant_text(f"The answer is {_number(results[0].result)}.")
    text = last.text or ""
    call = _tool_call(text, options or {}, len(messages))
    if call is not None:
        return Message(role="assistant", contents=[call])
    user_turns = [m.text for m in messages if m.role == "user"]
    if _RECALL.search(text):
        first = user_turns[0] if len(user_turns) > 1 else None
        return _assistant_text(
            f'You first said: "{first}"' if first else "This is the first thing you said."
        )
    return _assistant_text(f'You said: "{text}" (message {len(user_turns)} of this conversation)')


def _tool_call(text: str, options: Mapping[str, Any], turn: int) -> Content | None:
    """The tool call a message asks for, within what ``tools`` and ``tool_choice`` allow."""
    choice = options.get("tool_choice")
    if choice == "none":
        return None
    offered = {getattr(tool, "name", None) for tool in options.get("tools") or ()}
    required = choice.get("required_function_name") if isinstance(choice, Mapping) else None
    named = _CALL.search(text)
    if named and named["name"] in offered and required in (None, named["name"]):
        try:
            arguments = json.loads(named["arguments"] or "{}")
        except json.JSONDecodeError:
            arguments = {}
        return Content.from_function_call(
            call_id=f"call_{turn}", name=named["name"], arguments=arguments
        )
    match = _ARITHMETIC.search(text)
    if match:
        op = match["op"].lower()
        name = "add" if op in ("+", "plus") else "multiply"
        arguments = {"a": float(match["a"]), "b": float(match["b"])}
        return Content.from_function_call(call_id=f"call_{turn}", name=name, arguments=arguments)
    return None


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
