"""Target adapters: run the hosted agent, workflow or callable for one turn.

An adapter receives the request and the session's stored state, runs the target once, and
answers the core's ``RunTarget`` effect with the result and the state to save. It streams
updates to ``on_update`` as the target produces them. Adapters never decide whether to
save: the core does (only after success). When a target raises, the operator's log gets
the exception's type and stack (:class:`FailureLogging`), never its message, which may
quote the user's input.

Function tools a caller declares travel in ``request.options["tools"]`` as dicts in the
OpenAI function-tool shape (``type: "function"``, ``name``, ``description``,
``parameters``): the caller runs them itself. Only an Agent Framework agent can take them
(:attr:`TargetAdapter.accepts_function_tools`); another target refuses the run rather than
quietly answering without them.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import inspect
import json
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from agenthost.backends.asyncio_bridge import AsyncioBridge
from agenthost.backends.histories import ConvertedHistories, LiveSessions, SerializedHistories
from agenthost.backends.workflow_outputs import (
    InputRequest,
    WorkflowTurn,
    output_text,
    question_text,
    structured_output,
)
from agenthost.sansio_core.effects import TargetSucceeded
from agenthost.sansio_core.types import ChannelRequest, HostMessage, SessionRef, TextPart, UriPart
from agenthost.sansio_core.values import builds_fast
from agenthost.stores.codec import unstructure_messages

if TYPE_CHECKING:
    from agenthost.backends.workflow_checkpoints import StoredWorkflow

log = logging.getLogger("agenthost.targets")

if TYPE_CHECKING:
    from agent_framework import Message

log = logging.getLogger("agenthost.target")


@attrs.frozen
class StreamUpdate:
    """One streamed piece of a run: ``text`` for simple wires, ``raw`` for full fidelity."""

    text: str
    raw: Any = None


UpdateSink = Callable[[StreamUpdate], Awaitable[None]]


@builds_fast  # one a turn
@attrs.frozen
class TargetCall:
    request: ChannelRequest
    session_ref: SessionRef
    state: Mapping[str, Any] | None
    on_update: UpdateSink | None = None


class FunctionToolsUnsupported(ValueError):
    """The request declares function tools and this target cannot call any."""


class FunctionToolConflict(ValueError):
    """A caller declared a function tool with the name of one of the agent's own tools."""


class TargetAdapter(abc.ABC):
    """Runs one kind of target. Exceptions mean the run failed; the host records that."""

    #: Whether the target can take caller-declared function tools (``options["tools"]``).
    accepts_function_tools: bool = False

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


class FailureLogging(TargetAdapter):
    """Wraps an adapter: a failing run is logged with its stack, then fails as before."""

    def __init__(self, inner: TargetAdapter) -> None:
        self.inner = inner

    async def run(self, call: TargetCall) -> TargetSucceeded:
        try:
            return await self.inner.run(call)
        except Exception as error:
            log.error(
                "the target raised",
                extra={"error_type": _qualified(type(error)), "stack": stack_of(error)},
            )
            raise

    async def append_assistant_message(
        self, state: Mapping[str, Any] | None, text: str
    ) -> Mapping[str, Any] | None:
        return await self.inner.append_assistant_message(state, text)

    @property
    def accepts_function_tools(self) -> bool:  # type: ignore[override]
        return self.inner.accepts_function_tools


def stack_of(error: BaseException) -> str:
    """The traceback of ``error`` and of the exceptions it was raised from, with the
    exceptions' types but not their messages (a message may quote request content)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = traceback.extract_tb(current.__traceback__)
        parts.append("".join(traceback.format_list(frames)) + _qualified(type(current)))
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return "\nwhich was raised while handling or from:\n".join(reversed(parts))


def _qualified(kind: type[BaseException]) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def json_safe(value: Any) -> Any:
    """A JSON-able copy of a framework object (its ``to_dict`` if it has one)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=str))


def refuse_function_tools(request: ChannelRequest) -> None:
    """Fail the run of a target without tools when the caller declared some, or required
    a tool call (``tool_choice``: ``required`` or a named function)."""
    choice = request.options.get("tool_choice")
    if request.options.get("tools") or choice == "required" or isinstance(choice, Mapping):
        raise FunctionToolsUnsupported(
            "this target cannot call tools: it was given tools or a tool choice it would ignore"
        )


def accepts_function_tools(target: Any) -> bool:
    """Whether the target the application hands the host can take caller-declared tools
    (asked of the adapter :func:`adapt_target` chooses for it)."""
    if isinstance(target, TargetAdapter):
        return target.accepts_function_tools
    return _adapter_kind(target) is AgentTarget


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
        refuse_function_tools(call.request)
        session_id = call.session_ref.session_id
        stored = (call.state or {}).get("messages", [])
        history = self._histories.messages(session_id, stored)
        new_input = input_messages(call.request)
        # The target gets a list of its own (it may change it); the history stays shared.
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
        saved = [*stored, *unstructure_messages((*new_input, reply))]
        self._histories.remember(session_id, saved, (*history, *new_input, reply))
        return TargetSucceeded(result=text, text=text, new_state={"messages": saved})

    async def append_assistant_message(
        self, state: Mapping[str, Any] | None, text: str
    ) -> Mapping[str, Any] | None:
        stored = (state or {}).get("messages", [])
        message = HostMessage(role="assistant", parts=(TextPart(text),))
        return {**(state or {}), "messages": [*stored, *unstructure_messages([message])]}


# --- Agent Framework agents ---------------------------------------------------------


def to_framework_messages(messages: Sequence[HostMessage]) -> list[Message]:
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
        if message.tool_call_id is not None:
            # The output of a call the caller ran: the framework pairs it by call id.
            contents = [Content.from_function_result(message.tool_call_id, result=message.text)]
        contents += [
            Content.from_function_call(call.call_id, call.name, arguments=call.arguments)
            for call in message.function_calls
        ]
        converted.append(Message(role=message.role, contents=contents))
    return converted


def declared_function_tools(tools: Sequence[Any], agent: Any) -> list[Any]:
    """The caller's function tools (dicts) as declaration-only ``FunctionTool``s; other
    tools (framework objects a ``run_hook`` put there) pass unchanged.

    The framework pauses on a call to one (a ``function_call`` marked
    ``user_input_request``) and ends the run, so the caller can run it and send the output
    in its next request. A name the agent's own tools already use is refused: the agent's
    call would otherwise be shown to the caller as one it must run.
    """
    from agent_framework import FunctionTool

    declared = [tool for tool in tools if isinstance(tool, Mapping)]
    own = {
        getattr(tool, "name", None)
        for tool in (getattr(agent, "default_options", None) or {}).get("tools") or ()
    }
    if any(tool.get("name") in own for tool in declared):
        raise FunctionToolConflict("a declared function tool has the name of an agent tool")
    return [
        FunctionTool(
            name=str(tool["name"]),
            description=str(tool.get("description") or ""),
            func=None,
            input_model=dict(tool.get("parameters") or {"type": "object", "properties": {}}),
        )
        if isinstance(tool, Mapping)
        else tool
        for tool in tools
    ]


class AgentTarget(TargetAdapter):
    """An Agent Framework agent: anything with ``run(messages, session=, stream=)``.

    Its ``AgentSession`` is saved to the store with the framework's own ``to_dict`` and
    restored with ``from_dict``; the session a turn ended with is kept (:class:`LiveSessions`)
    and continued by the next turn when the stored state is still the one it saved, so a
    conversation served by one process is not restored on every turn. The agent runs on
    asyncio (through the bridge under trio). Caller-declared function tools join the
    agent's own as declaration-only tools.
    """

    accepts_function_tools = True

    def __init__(self, agent: Any, bridge: AsyncioBridge) -> None:
        from agent_framework import AgentSession

        self._agent = agent
        self._bridge = bridge
        self._from_dict = AgentSession.from_dict
        create = getattr(agent, "create_session", None)
        self._new_session: Callable[[], Any] = create if callable(create) else AgentSession
        self._live: LiveSessions[Any] = LiveSessions()
        self._serialized = SerializedHistories()

    async def run(self, call: TargetCall) -> TargetSucceeded:
        messages = to_framework_messages(input_messages(call.request))
        stateful = call.session_ref.session_id is not None
        session = self._continue(call.state) if stateful else None
        options = dict(call.request.options)
        if options.get("tools"):
            options["tools"] = declared_function_tools(options["tools"], self._agent)

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
        new_state = None
        if session is not None:
            new_state = self._serialized.to_dict(session)
            self._live.keep(_own_id(new_state), new_state, session)
        return TargetSucceeded(result=response, text=response.text or "", new_state=new_state)

    async def append_assistant_message(
        self, state: Mapping[str, Any] | None, text: str
    ) -> Mapping[str, Any] | None:
        """Save the message through the agent's history provider, into the session's state.

        That is the provider that loads history (the framework's default
        ``InMemoryHistoryProvider`` when the agent has none). A session whose history the
        service keeps (``service_session_id``) is left unchanged.
        """
        session = self._continue(state)
        if getattr(session, "service_session_id", None):
            if state:
                self._live.keep(_own_id(state), state, session)  # unchanged: still current
            return state
        await self._bridge.call(self._save_assistant_message, session, text)
        new_state = self._serialized.to_dict(session)
        self._live.keep(_own_id(new_state), new_state, session)
        return new_state

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

    def _continue(self, state: Mapping[str, Any] | None) -> Any:
        """The session to run in: the one the last turn here ended with when ``state`` is
        still what it saved, else restored from ``state``, else a new one."""
        if not state:
            return self._new_session()
        live = self._live.take(_own_id(state), state)
        return live if live is not None else self._from_dict(dict(state))

    async def _run_once(self, messages: list[Any], session: Any, options: dict[str, Any]) -> Any:
        return await self._agent.run(messages, session=session, **_agent_kwargs(options))

    async def _run_streaming(
        self, messages: list[Any], session: Any, options: dict[str, Any], final: list[Any]
    ) -> AsyncIterator[Any]:
        stream = self._agent.run(messages, session=session, stream=True, **_agent_kwargs(options))
        async for update in stream:
            yield update
        final.append(await stream.get_final_response())


def _own_id(state: Mapping[str, Any]) -> str | None:
    """The framework's own id of a saved session (a fork keeps it), if the state has one."""
    value = state.get("session_id")
    return value if isinstance(value, str) else None


def _agent_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    # Channels forward model options under ``options``; the framework takes them the same way.
    return {"options": dict(options)} if options else {}


# --- Agent Framework workflows ------------------------------------------------------

WorkflowFactory = Callable[[], Any]


@attrs.frozen
class _RunPlan:
    """How one turn drives its workflow: a new message, or the answer to a question."""

    message: Any = None
    answer: tuple[str, Any] | None = None  # (request id, the user's answer)
    stored: StoredWorkflow | None = None  # restored first when present


class WorkflowTarget(TargetAdapter):
    """An Agent Framework workflow, one instance per run, checkpointed in the session.

    ``source`` is a built ``Workflow``, a ``WorkflowBuilder``, or a function taking no
    arguments that builds one:

    - a function is called for every run, so concurrent sessions run in parallel;
    - a builder is copied for every run (its executors deep-copied, the agents inside
      them shared) and built, with the same effect;
    - a built ``Workflow`` is one instance, and the framework runs one invocation of an
      instance at a time: its runs are serialized here, across all sessions.

    The input goes to the start executor as the request carries it (a ``run_hook`` adapts
    channel messages to a typed input); when the request still holds host messages, the
    start executor gets the last message's text if it takes ``str``, else the messages.
    Output events stream as they are yielded (an agent's updates inside the workflow as
    text deltas). A workflow that asks for input (``ctx.request_info``) ends the turn with
    the question (``WorkflowTurn.input_requests``); the session's next message is the
    answer, and the workflow resumes from its checkpoint. The newest checkpoint is the
    session's state, so it is saved with the session, only when the run succeeded
    (``workflow_checkpoints``); once the workflow has no open question it is marked as
    expiring when the session idles (``Host(workflow_checkpoint_ttl_seconds=)``).
    Cancelling the run cancels the running executors.
    """

    def __init__(self, source: Any, bridge: AsyncioBridge) -> None:
        from agent_framework import Workflow, WorkflowBuilder

        from agenthost.backends.workflow_checkpoints import declared_type_keys

        self._bridge = bridge
        self._shared: Any = None
        self._lock: anyio.Lock | None = None
        if isinstance(source, Workflow):
            self._shared, self._lock, prototype = source, anyio.Lock(), source
            self._make: WorkflowFactory | None = None
        else:
            if isinstance(source, WorkflowBuilder):
                self._make = _builder_copies(source)
            elif callable(source):
                self._make = source
            else:
                raise TypeError(f"cannot host {type(source).__name__} as a workflow")
            # Built once now, so a factory that cannot build fails at start-up, not per run.
            prototype = self._make()
            if not isinstance(prototype, Workflow):
                raise TypeError(
                    f"the workflow factory returned {type(prototype).__name__}, not a Workflow; "
                    "pass a function that builds and returns the workflow"
                )
        self._graph: str = prototype.graph_signature_hash
        self._takes_text = str in prototype.input_types
        self._allowed_types = declared_type_keys(prototype)

    async def run(self, call: TargetCall) -> TargetSucceeded:
        refuse_function_tools(call.request)
        from agenthost.backends.workflow_checkpoints import (
            SessionCheckpointStorage,
            StoredWorkflow,
        )

        stateful = call.session_ref.session_id is not None
        stored = StoredWorkflow.from_state(call.state) if stateful else None
        if stored is not None and stored.graph != self._graph:
            # The workflow changed since this session last ran it: its checkpoint (and any
            # question it asked) cannot be restored into the new graph, so start over.
            log.warning(
                "workflow checkpoint dropped: the workflow graph changed",
                extra={"open_questions": len(stored.pending)},
            )
            stored = None
        plan = self._plan(call.request, stored)
        storage = SessionCheckpointStorage(self._allowed_types, seed=stored)
        sealed: list[tuple[str, dict[str, Any]] | None] = []
        fold = _TurnFold()
        guard = self._lock if self._lock is not None else contextlib.nullcontext()
        async with guard:
            if call.on_update is None:
                events = await self._bridge.call(self._collect, plan, storage, sealed)
                for event in events:
                    fold.take(event)
            else:
                sink = call.on_update
                stream = self._bridge.iterate(
                    lambda: self._events(plan, storage, sealed, stream=True)
                )
                async with contextlib.aclosing(stream):
                    async for event in stream:
                        update = fold.take(event)
                        if update is not None:
                            await sink(update)
        turn = fold.turn()
        saving: StoredWorkflow | None = None
        newest = sealed[0] if sealed else None
        if stateful and newest is not None:
            saving = StoredWorkflow(
                name=str(newest[1].get("workflow_name", "")),
                graph=self._graph,
                checkpoint_id=newest[0],
                checkpoint=newest[1],
                pending=tuple(r.request_id for r in turn.input_requests),
            )
        elif stateful:
            saving = stored
        return TargetSucceeded(
            result=turn,
            text=turn.text,
            new_state=saving.to_state() if saving is not None else None,
            # A finished workflow's checkpoint only carries executor state into the next
            # run, which can start afresh: it may expire. One waiting for an answer may not.
            state_expires_when_idle=saving is not None and not saving.pending,
        )

    def _plan(self, request: ChannelRequest, stored: StoredWorkflow | None) -> _RunPlan:
        value = request.input
        messages = isinstance(value, tuple) and all(isinstance(m, HostMessage) for m in value)
        if stored is not None and stored.pending:
            answer = value[-1].text if messages and value else value
            return _RunPlan(answer=(stored.pending[0], answer), stored=stored)
        if messages and self._takes_text:
            value = value[-1].text if value else ""
        elif messages:
            value = to_framework_messages(value)
        return _RunPlan(message=value, stored=stored)

    async def _collect(self, plan: _RunPlan, storage: Any, sealed: list[Any]) -> list[Any]:
        return [event async for event in self._events(plan, storage, sealed, stream=False)]

    async def _events(
        self, plan: _RunPlan, storage: Any, sealed: list[Any], *, stream: bool
    ) -> AsyncIterator[Any]:
        """Run one turn on the asyncio side, yielding the workflow's events as they come;
        at the end, ``sealed`` gets the newest checkpoint in its stored form."""
        workflow = self._make() if self._make is not None else self._shared
        run_options: dict[str, Any]
        if plan.answer is not None:
            assert plan.stored is not None
            request_id, answer = plan.answer
            answer = await _typed_answer(storage, plan.stored.checkpoint_id, request_id, answer)
            run_options = {
                "responses": {request_id: answer},
                "checkpoint_id": plan.stored.checkpoint_id,
            }
        else:
            if plan.stored is not None:
                # Continue the session's workflow: restore its state, then take the message.
                await workflow.run(
                    checkpoint_id=plan.stored.checkpoint_id, checkpoint_storage=storage
                )
            run_options = {"message": plan.message}
        if stream:
            async for event in workflow.run(**run_options, checkpoint_storage=storage, stream=True):
                yield event
        else:
            for event in await workflow.run(**run_options, checkpoint_storage=storage):
                yield event
        sealed.append(storage.seal())


async def _typed_answer(storage: Any, checkpoint_id: str, request_id: str, answer: Any) -> Any:
    """The user's answer in the type the request asked for: text, or JSON for other types."""
    if not isinstance(answer, str):
        return answer  # a typed answer from a run_hook goes as it is
    checkpoint = await storage.load(checkpoint_id)
    pending = checkpoint.pending_request_info_events.get(request_id)
    response_type = getattr(pending, "response_type", str)
    if response_type is str or not answer.strip():
        return answer
    try:
        return json.loads(answer)
    except ValueError:
        return answer  # the framework coerces it, or refuses it as the wrong type


def _builder_copies(builder: Any) -> WorkflowFactory:
    """A factory building the builder's workflow from fresh copies of its executors.

    ``build()`` alone reuses the builder's executor objects, and the framework runs each
    executor's handlers one at a time, so every run would wait for the others. Each run
    therefore builds from a deep copy of the builder. What an executor holds that cannot
    be copied (a lock, a client, a connection) is shared by the copies, as are the agents
    wrapped in executors: they keep no per-run state (that is the executor's session) and
    hold clients that must not be duplicated. Which values to share is decided once, here.
    """
    shared: list[Any] = []
    for executor in getattr(builder, "_executors", {}).values():
        agent = getattr(executor, "_agent", None)
        if agent is not None:
            shared.append(agent)
        for name, value in vars(executor).items():
            if name == "_agent":
                continue
            try:
                copy.deepcopy(value)
            except Exception:  # whatever cannot be copied is shared
                shared.append(value)

    def build() -> Any:
        copied = copy.deepcopy(builder, {id(value): value for value in shared})
        return copied.build()

    return build


class _TurnFold:
    """Folds a run's events into stream updates and the turn's ``WorkflowTurn``."""

    def __init__(self) -> None:
        self._outputs: list[Any] = []
        self._texts: list[str] = []
        self._data: list[Any] = []
        self._requests: dict[str, InputRequest] = {}
        self._updates: list[Any] = []  # an agent's streamed updates, until its answer ends
        self._updates_from: str | None = None  # the executor those updates came from

    def take(self, event: Any) -> StreamUpdate | None:
        kind = getattr(event, "type", None)
        if kind == "output":
            value = event.data
            if _is_agent_update(value):
                if self._updates_from != event.executor_id:
                    self._end_updates()  # another agent speaks: its answer is a new output
                prefix = "" if self._updates else self._separator()
                self._updates.append(value)
                self._updates_from = event.executor_id
                return StreamUpdate(prefix + (value.text or ""), value)
            self._end_updates()
            text = output_text(value)
            update = StreamUpdate(self._separator() + text)
            self._add(value, text)
            return update
        if kind == "request_info" and event.request_id not in self._requests:
            self._end_updates()
            data = event.data
            question = InputRequest(event.request_id, question_text(data), structured_output(data))
            update = StreamUpdate(self._separator() + question.text)
            self._requests[question.request_id] = question
            self._texts.append(question.text)
            return update
        return None

    def turn(self) -> WorkflowTurn:
        self._end_updates()
        return WorkflowTurn(
            outputs=tuple(self._outputs),
            text="\n".join(self._texts),
            data=tuple(self._data),
            input_requests=tuple(self._requests.values()),
        )

    def _separator(self) -> str:
        return "\n" if self._texts else ""

    def _add(self, value: Any, text: str) -> None:
        self._outputs.append(value)
        self._texts.append(text)
        data = structured_output(value)
        if data is not None:
            self._data.append(data)

    def _end_updates(self) -> None:
        if not self._updates:
            return
        from agent_framework import AgentResponse

        response = AgentResponse.from_updates(self._updates)
        self._updates, self._updates_from = [], None
        self._add(response, response.text or "")


def _is_agent_update(value: Any) -> bool:
    from agent_framework import AgentResponseUpdate

    return isinstance(value, AgentResponseUpdate)


def adapt_target(target: Any, bridge: AsyncioBridge) -> TargetAdapter:
    """Choose the adapter for what the application handed the host (failures logged)."""
    return FailureLogging(_adapter_for(target, bridge))


def _adapter_for(target: Any, bridge: AsyncioBridge) -> TargetAdapter:
    if isinstance(target, TargetAdapter):
        return target
    kind = _adapter_kind(target)
    if kind is WorkflowTarget:
        return WorkflowTarget(target, bridge)
    if kind is AgentTarget:
        return AgentTarget(target, bridge)
    return CallableTarget(target)


def _adapter_kind(target: Any) -> type[TargetAdapter]:
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        # Decided without importing the Agent Framework, which a host of a plain async
        # function never needs (its import costs some 15 MiB of memory and start-up time).
        return CallableTarget
    try:
        from agent_framework import Workflow, WorkflowBuilder
    except ImportError:  # pragma: no cover - agent-framework-core is a dependency
        Workflow = WorkflowBuilder = None  # type: ignore[assignment,misc]
    if Workflow is not None and isinstance(target, Workflow | WorkflowBuilder):
        return WorkflowTarget
    run = getattr(target, "run", None)
    if callable(run) and not inspect.isfunction(target):
        return AgentTarget
    if callable(target) and _builds_without_arguments(target):
        return WorkflowTarget
    if callable(target):
        return CallableTarget
    raise TypeError(
        f"cannot host {type(target).__name__}: pass an Agent Framework Agent or Workflow "
        "(or a function building one), or an async function taking a list of messages"
    )


def _builds_without_arguments(target: Any) -> bool:
    """A plain function taking no arguments: a workflow factory (a target takes messages)."""
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        return False
    try:
        inspect.signature(target).bind()
    except (TypeError, ValueError):
        return False
    return True
