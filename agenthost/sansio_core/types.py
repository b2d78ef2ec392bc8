"""The host's vocabulary: frozen value types that every layer speaks.

This module owns the shapes only. It must not decide anything (that is the job of the
lifecycle modules beside it) and must not import I/O, clocks or randomness.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from agenthost.sansio_core.values import builds_fast, converts_inline


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # A private copy, so a caller mutating its dict later cannot change a frozen value.
    return dict(value) if value else {}


converts_inline(_frozen_mapping, "dict({value}) if {value} else {{}}")


class SessionMode(enum.Enum):
    """How a request finds its session."""

    AUTO = "auto"  # resolve the session, or create one
    REQUIRED = "required"  # a resolvable session must exist; never create one silently
    DISABLED = "disabled"  # run stateless


class ConversationScope(enum.Enum):
    """Which session a message in a multi-user conversation belongs to."""

    PER_USER = "per_user"
    PER_USER_PER_CONVERSATION = "per_user_per_conversation"
    PER_CONVERSATION = "per_conversation"


class MultitaskStrategy(enum.Enum):
    """What a message does when its session is busy with another run."""

    ENQUEUE = "enqueue"  # run after the current one, in arrival order
    REJECT = "reject"  # answer busy at once
    INTERRUPT = "interrupt"  # cancel the running one, then run


class RunStatus(enum.Enum):
    """Statuses of a background run (see ``background.py`` for the transitions)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_RUN_STATUSES


_FINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


@builds_fast
@attrs.frozen
class TextPart:
    text: str


@builds_fast
@attrs.frozen
class UriPart:
    """A reference to content the target may fetch (an image, a file)."""

    uri: str
    media_type: str | None = None


ContentPart = TextPart | UriPart


@builds_fast
@attrs.frozen
class FunctionCall:
    """A call the model made to a function tool that the *caller* runs (a client-declared
    tool), as it comes back in a later request's history."""

    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@builds_fast
@attrs.frozen
class HostMessage:
    """One input message in the host's neutral form; adapters translate it per target.

    ``function_calls`` (on an ``assistant`` message) are calls the caller ran;
    ``tool_call_id`` (on a ``tool`` message, whose text is the output) names the call it
    answers. Targets that take no tools see only the text.
    """

    role: str
    parts: tuple[ContentPart, ...]
    function_calls: tuple[FunctionCall, ...] = ()
    tool_call_id: str | None = None

    @classmethod
    def user(cls, text: str) -> HostMessage:
        return cls(role="user", parts=(TextPart(text),))

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.parts if isinstance(part, TextPart))


@builds_fast
@attrs.frozen(cache_hash=True)  # a key of sets and dicts on every routing decision
class ChannelIdentity:
    """The *user* as one channel sees them (never the chat).

    Equality is ``(channel, native_id)``; ``attributes`` carry display hints only.
    """

    channel: str
    native_id: str
    attributes: Mapping[str, Any] = attrs.field(
        default=None, converter=_frozen_mapping, eq=False, hash=False
    )


@builds_fast
@attrs.frozen
class ChannelSession:
    """What the channel knows of the session.

    ``key`` is set by channels whose callers name the session (a Responses
    ``previous_response_id``, an A2A ``contextId``, an Invocations ``session_id``).
    Host-tracked channels leave it ``None`` and the host's alias decides.
    """

    key: str | None = None
    conversation_id: str | None = None
    is_direct: bool = True  # a 1:1 conversation (always keyed on the user)
    caller_keyed: bool = False  # the caller names sessions; no key means a new session
    # Save this turn as a new session under ``fork_key``, starting from the session named by
    # ``key`` (or empty without one): each Responses response id is such a snapshot.
    fork_key: str | None = None
    attributes: Mapping[str, Any] = attrs.field(
        default=None, converter=_frozen_mapping, eq=False, hash=False
    )
    # The new session this request may create is named by a key minted for it that nobody
    # sees before the reply (a Responses response id not streamed): it is written with the
    # turn's save rather than before the run (``opening`` rule 5).
    private_until_reply: bool = False


class TargetKind(enum.Enum):
    ORIGINATING = "originating"
    ACTIVE = "active"
    CHANNELS = "channels"
    IDENTITIES = "identities"
    ALL_LINKED = "all_linked"
    NONE = "none"


@attrs.frozen
class ResponseTarget:
    """Where a reply goes. Build one with the class methods, not the constructor."""

    kind: TargetKind = TargetKind.ORIGINATING
    channels: tuple[str, ...] = ()
    identities: tuple[ChannelIdentity, ...] = ()
    echo_input: bool = False

    @classmethod
    def originating(cls) -> ResponseTarget:
        return cls()

    @classmethod
    def active(cls) -> ResponseTarget:
        return cls(kind=TargetKind.ACTIVE)

    @classmethod
    def channel(cls, name: str, *, echo_input: bool = False) -> ResponseTarget:
        return cls(kind=TargetKind.CHANNELS, channels=(name,), echo_input=echo_input)

    @classmethod
    def to_channels(cls, names: Sequence[str], *, echo_input: bool = False) -> ResponseTarget:
        return cls(kind=TargetKind.CHANNELS, channels=tuple(names), echo_input=echo_input)

    @classmethod
    def to_identities(
        cls, identities: Sequence[ChannelIdentity], *, echo_input: bool = False
    ) -> ResponseTarget:
        return cls(kind=TargetKind.IDENTITIES, identities=tuple(identities), echo_input=echo_input)

    @classmethod
    def all_linked(cls, *, echo_input: bool = False) -> ResponseTarget:
        return cls(kind=TargetKind.ALL_LINKED, echo_input=echo_input)

    @classmethod
    def none(cls) -> ResponseTarget:
        return cls(kind=TargetKind.NONE)

    @property
    def is_originating(self) -> bool:
        return self.kind is TargetKind.ORIGINATING


# Every field of a ResponseTarget is immutable, so requests can share the default one.
_ORIGINATING = ResponseTarget()


@builds_fast
@attrs.frozen
class ChannelRequest:
    """One inbound request, as a channel's codec built it from the native payload.

    ``input`` is a tuple of :class:`HostMessage` as channels build it; a ``run_hook``
    may replace it with any value a workflow's start executor accepts.
    """

    channel: str
    identity: ChannelIdentity
    input: Any
    operation: str = "run"
    session: ChannelSession = attrs.field(factory=ChannelSession)
    options: Mapping[str, Any] = attrs.field(default=None, converter=_frozen_mapping, eq=False)
    session_mode: SessionMode = SessionMode.AUTO
    conversation_scope: ConversationScope = ConversationScope.PER_USER_PER_CONVERSATION
    multitask: MultitaskStrategy | None = None  # None: the host's default
    response_target: ResponseTarget = _ORIGINATING
    background: bool = False
    stream: bool = False
    metadata: Mapping[str, Any] = attrs.field(default=None, converter=_frozen_mapping, eq=False)
    attributes: Mapping[str, Any] = attrs.field(default=None, converter=_frozen_mapping, eq=False)


@builds_fast
@attrs.frozen
class SessionRef:
    """The session a turn ran in: enough to continue it, or to show it."""

    isolation_key: str
    session_id: str | None  # None when the run was stateless
    key: str | None = None  # the caller-supplied key, echoed back to the caller


@builds_fast
@attrs.frozen
class HostedRunResult:
    """The target's full-fidelity result, unchanged; channels decide what to render."""

    result: Any
    session: SessionRef
    text: str = ""


@attrs.frozen
class ContinuationToken:
    """The public face of a background run."""

    token: str
    status: RunStatus
    isolation_key: str
    created_at: float
    completed_at: float | None = None
    result: Mapping[str, Any] | None = None
    error: str | None = None
    response_target: ResponseTarget = attrs.field(factory=ResponseTarget)


@attrs.frozen
class ChannelCommand:
    """A command a channel offers (``/new``, ``/link``): shown in UIs when asked."""

    name: str
    description: str
    handle: Any = attrs.field(default=None, eq=False)
    expose_in_ui: bool = True
    metadata: Mapping[str, Any] = attrs.field(default=None, converter=_frozen_mapping, eq=False)
