"""Target adapters: run the hosted agent, workflow or callable for one turn.

An adapter receives the request and the session's stored state, runs the target once, and
answers the core's ``RunTarget`` effect with the result and the state to save. It streams
updates to ``on_update`` as the target produces them. Adapters never decide whether to
save: the core does (only after success).
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from agenthost.backends.asyncio_bridge import AsyncioBridge
from agenthost.backends.histories import ConvertedHistories
from agenthost.sansio_core.effects import TargetSucceeded
from agenthost.sansio_core.types import ChannelRequest, HostMessage, SessionRef, TextPart, UriPart
from agenthost.stores.codec import unstructure_messages


@attrs.frozen
class StreamUpdate:
    """One streamed piece of a run: ``text`` for simple wires, ``raw`` for full fidelity."""

    text: str
    raw: Any = None


UpdateSink = Callable[[StreamUpdate], Awaitable[None]]


@attrs.frozen
class TargetCall:
    request: ChannelRequest
    session_ref: SessionRef
    state: Mapping[str, Any] | None
    on_update: UpdateSink | None = None


class TargetAdapter(abc.ABC):
    """Runs one kind of target. Exceptions mean the run failed; the host records that."""

    @abc.abstractmethod
    async def run(self, call: TargetCall) -> TargetSucceeded: ...

    async def append_assistant_message(
        self, state: Mapping[str, Any] | None, text: str
    ) -> Mapping[str, Any] | None:
        """The session state with an assistant message (``Host.deliver``) added to its history.

        ``state`` is the stored state (``None`` for a session never run). The default keeps
        the state unchanged: a target whose history the host cannot write to does not see
        proactive messages in later turns.
        """
        return state


def json_safe(value: Any) -> Any:
    """A JSON-able copy of a framework object (its ``to_dict`` if it has one)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=str))


def input_messages(request: ChannelRequest) -> tuple[HostMessage, ...]:
    """The request input as host messages (a bare string counts as one user message)."""
    value = request.input
    if isinstance(value, str):
        return (HostMessage.user(value),)
    if isinstance(value, tuple) and all(isinstance(m, HostMessage) for m in value):
        return value
    raise TypeError(
        "this target takes messages; a run_hook that rewrites the input to another type "
        "needs a Workflow target whose start executor accepts it"
    )


# --- plain async callables ----------------------------------------------------------

TargetCallable = Callable[[list[HostMessage]], Awaitable[str] | AsyncIterator[str]]


class CallableTarget(TargetAdapter):
    """``async def target(messages) -> str`` or an async generator of text chunks.

    The host keeps the conversation for it: ``messages`` is the session's history followed
    by the new input, and the reply is appended to the history when the run succeeds.
    """

    def __init__(self, fn: TargetCallable) -> None:
        self._fn = fn
        self._histories = ConvertedHistories()

    async def run(self, call: TargetCall) -> TargetSucceeded:
        session_id = call.session_ref.session_id
        stored = (call.state or {}).get("messages", [])
        history = self._histories.messages(session_id, stored)
        new_input = list(input_messages(call.request))
        produced = self._fn([*history, *new_input])
        if inspect.isawaitable(produced):
            text = await produced
            if not isinstance(text, str):
                raise TypeError(f"the target returned {type(text).__name__}, not str")
            if call.on_update is not None and text:
                await call.on_update(StreamUpdate(text))
        else:
            chunks: list[str] = []
            async for chunk in produced:
                chunks.append(chunk)
                if call.on_update is not None:
                    await call.on_update(StreamUpdate(chunk))
            text = "".join(chunks)
        reply = HostMessage(role="assistant", parts=(TextPart(text),))
        # The stored history is already in stored form: only this turn's messages convert.
        saved = [*stored, *unstructure_messages([*new_input, reply])]
        self._histories.remember(session_id, saved, [*history, *new_input, reply])
        return TargetSucceeded(result=text, text=text, new_state={"messages": saved})

    async def append_assistant_message(
        self, state: Mapping[str, Any] | None, text: str
    ) -> Mapping[str, Any] | None:
        stored = (state or {}).get("messages", [])
        message = HostMessage(role="assistant", parts=(TextPart(text),))
        return {**(state or {}), "messages": [*stored, *unstructure_messages([message])]}


# --- Agent Framework agents ---------------------------------------------------------


def to_framework_messages(messages: Sequence[HostMessage]) -> list[Any]:
    from agent_framework import Content, Message

    converted = []
    for message in messages:
        contents = [
            Content.from_text(part.text)
            if isinstance(part, TextPart)
            else Content.from_uri(part.uri, media_type=part.media_type)
            for part in message.parts
            if isinstance(part, TextPart | UriPart)
        ]
        converted.append(Message(role=message.role, contents=contents))
    return converted


class AgentTarget(TargetAdapter):
    """An Agent Framework agent: anything with ``run(messages, session=, stream=)``.

    Its ``AgentSession`` is restored from and saved to the store with the framework's own
    ``to_dict``/``from_dict``. The agent runs on asyncio (through the bridge under trio).
    """

    def __init__(self, agent: Any, bridge: AsyncioBridge) -> None:
        self._agent = agent
        self._bridge = bridge

    async def run(self, call: TargetCall) -> TargetSucceeded:
        messages = to_framework_messages(input_messages(call.request))
        state = call.state
        stateful = call.session_ref.session_id is not None
        session = self._restore(state) if stateful else None
        options = dict(call.request.options)

        if call.on_update is None:
            response = await self._bridge.call(self._run_once, messages, session, options)
        else:
            sink = call.on_update
            final: list[Any] = []
            updates = self._bridge.iterate(
                lambda: self._run_streaming(messages, session, options, final)
            )
            async with contextlib.aclosing(updates):
                async for update in updates:
                    await sink(StreamUpdate(update.text or "", update))
            response = final[0]
        new_state = session.to_dict() if session is not None else None
        return TargetSucceeded(result=response, text=response.text or "", new_state=new_state)

    async def append_assistant_message(
        self, state: Mapping[str, Any] | None, text: str
    ) -> Mapping[str, Any] | None:
        """Save the message through the agent's history provider, into the session's state.

        That is the provider that loads history (the framework's default
        ``InMemoryHistoryProvider`` when the agent has none). A session whose history the
        service keeps (``service_session_id``) is left unchanged.
        """
        session = self._restore(state)
        if getattr(session, "service_session_id", None):
            return state
        await self._bridge.call(self._save_assistant_message, session, text)
        return dict(session.to_dict())

    async def _save_assistant_message(self, session: Any, text: str) -> None:
        from agent_framework import Content, HistoryProvider, InMemoryHistoryProvider, Message

        providers = getattr(self._agent, "context_providers", None) or []
        provider = next(
            (p for p in providers if isinstance(p, HistoryProvider) and p.load_messages),
            None,
        )
        if provider is None:
            provider = InMemoryHistoryProvider()
        message = Message(role="assistant", contents=[Content.from_text(text)])
        await provider.save_messages(
            session.session_id, [message], state=session.state.setdefault(provider.source_id, {})
        )

    def _restore(self, state: Mapping[str, Any] | None) -> Any:
        from agent_framework import AgentSession

        if state:
            return AgentSession.from_dict(dict(state))
        create = getattr(self._agent, "create_session", None)
        return create() if callable(create) else AgentSession()

    async def _run_once(self, messages: list[Any], session: Any, options: dict[str, Any]) -> Any:
        return await self._agent.run(messages, session=session, **_agent_kwargs(options))

    async def _run_streaming(
        self, messages: list[Any], session: Any, options: dict[str, Any], final: list[Any]
    ) -> AsyncIterator[Any]:
        stream = self._agent.run(messages, session=session, stream=True, **_agent_kwargs(options))
        async for update in stream:
            yield update
        final.append(await stream.get_final_response())


def _agent_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    # Channels forward model options under ``options``; the framework takes them the same way.
    return {"options": dict(options)} if options else {}


# --- Agent Framework workflows ------------------------------------------------------


class WorkflowTarget(TargetAdapter):
    """An Agent Framework ``Workflow``, checkpointed under the host's state directory.

    The input goes to the start executor as the request carries it (a ``run_hook`` adapts
    channel messages to a typed input); when the request still holds host messages and the
    start executor takes ``str``, the text of the last message is passed. Outputs are the
    workflow's yielded outputs. Runs are serialized per workflow instance, since a workflow
    object runs one invocation at a time; the session lease already serializes per session.
    A proactive message (``Host.deliver``) leaves the state unchanged: a workflow's history
    is its checkpoints, which the host does not write.
    """

    def __init__(self, workflow: Any, bridge: AsyncioBridge, checkpoint_root: Path) -> None:
        self._workflow = workflow
        self._bridge = bridge
        self._checkpoint_root = checkpoint_root
        self._lock = anyio.Lock()

    async def run(self, call: TargetCall) -> TargetSucceeded:
        message = self._start_message(call.request)
        folder = self._checkpoint_root / (call.session_ref.session_id or "stateless")
        await anyio.to_thread.run_sync(lambda: folder.mkdir(parents=True, exist_ok=True))
        async with self._lock:
            outputs = await self._bridge.call(self._run_workflow, message, folder, call)
        text = "\n".join(str(output) for output in outputs)
        if call.on_update is not None and text:
            await call.on_update(StreamUpdate(text))
        # The workflow's own state lives in its checkpoints; the session remembers where.
        return TargetSucceeded(
            result=outputs, text=text, new_state={"checkpoint_folder": folder.name}
        )

    def _start_message(self, request: ChannelRequest) -> Any:
        value = request.input
        if isinstance(value, tuple) and all(isinstance(m, HostMessage) for m in value):
            input_types = getattr(self._workflow, "input_types", [])
            if str in input_types:
                return value[-1].text if value else ""
            return to_framework_messages(value)
        return value

    async def _run_workflow(self, message: Any, folder: Path, call: TargetCall) -> list[Any]:
        from agent_framework import FileCheckpointStorage

        storage = FileCheckpointStorage(str(folder))
        result = await self._workflow.run(message, checkpoint_storage=storage)
        return list(result.get_outputs())


def adapt_target(target: Any, bridge: AsyncioBridge, state_dir: Path) -> TargetAdapter:
    """Choose the adapter for what the application handed the host."""
    if isinstance(target, TargetAdapter):
        return target
    try:
        from agent_framework import Workflow
    except ImportError:  # pragma: no cover - agent-framework-core is a dependency
        Workflow = None  # type: ignore[assignment,misc]
    if Workflow is not None and isinstance(target, Workflow):
        return WorkflowTarget(target, bridge, state_dir / "checkpoints")
    run = getattr(target, "run", None)
    if callable(run) and not inspect.isfunction(target):
        return AgentTarget(target, bridge)
    if callable(target):
        return CallableTarget(target)
    raise TypeError(
        f"cannot host {type(target).__name__}: pass an Agent Framework Agent or Workflow, "
        "or an async function taking a list of messages"
    )
