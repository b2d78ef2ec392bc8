"""The seam between the host and its channels.

A channel translates one protocol: it contributes routes (and optionally middleware and
start-up/shutdown work) and turns native payloads into ``ChannelRequest``s, which it hands
to the host through :class:`HostServices`. Everything else (identity, sessions, leases,
background runs, authorization, linking, the host's commands) is the host's.

A channel declares its access and linking settings as class or instance attributes
(read once, when the ``Host`` is built; a wrong value raises ``ConfigurationError``):

- ``require_link``: ``True``, ``False`` or ``"inherit"`` (the host's ``require_link``);
- ``allowlist``: an ``authorization.Allowlist``, ``None`` (open) or ``"inherit"`` (the
  host's ``allowlist``);
- ``confidentiality_tier``: the tier the link policy compares (``"standard"``);
- ``offers_link_commands``: ``False`` keeps the host's ``/link``, ``/unlink``, ``/new``
  and ``/help`` off this channel (its messages all go to the target);
- ``bot_name``: the name ``/command@bot_name`` must use in groups (``None``: no ``@``
  form is this channel's);
- ``provides_verified_claims``: the channel records verified claims through
  ``Host.link_verified_claims`` (an OpenID Connect link channel): it is a claim source
  and a way to link.
- ``authenticates_callers``: ``False`` when the channel cannot tell its callers apart
  (every caller is the same identity, e.g. Invocations without ``authenticate=``). Then
  linking, an allowlist or ``require_link`` on it would admit every caller once one is
  admitted, so ``Host(...)`` refuses them unless ``allow_unauthenticated_access_control``
  is ``True`` (the application's explicit opt-in).

A channel whose callers can mint new identities at will (fresh bearer keys, anonymous
callers) records where each request came from in the identity's attributes under
``SOURCE_ATTRIBUTE`` (:func:`source_attributes`), so that limits on failed link codes
hold per source and not only per identity (``link_codes`` rule 5).

A request whose ``response_target`` is not ``originating`` (a caller chose where the
reply goes) must go to ``run_in_background`` (``turns.runs_in_background`` says which):
the channel answers with the token and the reply is pushed. The host refuses such a
target from callers its ``trust_wire_targets`` policy does not trust
(``RefusalReason.TARGET_NOT_ALLOWED``). A channel that can push implements
``backends.push.ChannelPush``.

A channel answers a refused turn (``TurnRefused``) with ``user_message`` only; for
``RefusalReason.DENIED`` that message is bland on purpose. A host command comes back as a
``TurnCompleted`` whose ``result.result`` is a ``commands.CommandReply``: render its text
like any reply.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from starlette.middleware import Middleware
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

from agenthost.backends.linking import SOURCE_ATTRIBUTE
from agenthost.sansio_core import background, commands
from agenthost.sansio_core.authorization import Allowlist
from agenthost.sansio_core.background import RunRecord
from agenthost.sansio_core.link_policy import DEFAULT_TIER
from agenthost.sansio_core.linking import LinkResult
from agenthost.sansio_core.routing import Destination
from agenthost.sansio_core.turns import ResolvedTurn, TurnOutcome, TurnRefused
from agenthost.sansio_core.types import (
    ChannelCommand,
    ChannelIdentity,
    ChannelRequest,
    ContinuationToken,
)

if TYPE_CHECKING:
    import httpx

    from agenthost.backends.targets import UpdateSink
    from agenthost.stores.base import ChannelRecord, Store

# A channel's own records of a foreground turn, from the outcome the turn will have; written
# in the commit that saves the turn (``Host.run``'s ``records``).
TurnRecords = Callable[[TurnOutcome], Sequence["ChannelRecord"]]

Inherit = Literal["inherit"]
INHERIT: Inherit = "inherit"


class HostServices(Protocol):
    """What a channel may ask of the host."""

    @property
    def http(self) -> httpx.AsyncClient: ...

    @property
    def store(self) -> Store:
        """The host's store, for the channel's own records (``*_channel_records``)."""
        ...

    def now(self) -> float:
        """The host's clock (wall time, seconds): use it for records' times."""
        ...

    def start_task(self, fn: Callable[[], Awaitable[None]], *, name: str) -> None:
        """Run ``fn`` in the host's lifespan task group (a poller, an inbox drain...).

        It is cancelled when the host stops. An exception from it is logged and ``fn`` is
        started again after a backoff (1 s, doubling to a minute); until it has run a
        while without failing, ``/readiness`` reports it down (503). ``fn`` returning
        ends it. Only callable while the host runs (from ``startup`` on).
        """
        ...

    async def push_later(
        self,
        destination: Destination,
        text: str,
        *,
        key: str,
        isolation_key: str,
        parts_sent: int = 0,
    ) -> bool:
        """Hand a reply the channel could not finish on its wire to the durable outbox.

        ``key`` names the reply (stable: handing the same one over twice schedules it
        once); ``parts_sent`` parts of it already went out and are skipped. Answers
        whether a delivery is scheduled (``False`` when the channel cannot push).
        """
        ...

    async def run(
        self,
        request: ChannelRequest,
        *,
        on_update: UpdateSink | None = None,
        protocol_request: Any = None,
        records: TurnRecords | None = None,
    ) -> TurnOutcome: ...

    async def run_or_continue(
        self,
        request: ChannelRequest,
        *,
        on_update: UpdateSink | None = None,
        protocol_request: Any = None,
        records: TurnRecords | None = None,
    ) -> TurnOutcome | ContinuationToken:
        """``run``, or a background run's token when the reply is pushed elsewhere (a
        target set by a trusted caller or by the ``run_hook``); see ``Host.run_or_continue``."""
        ...

    async def run_in_background(
        self, request: ChannelRequest, *, protocol_request: Any = None
    ) -> ContinuationToken | TurnRefused: ...

    async def get_continuation(self, token: str) -> ContinuationToken | None:
        """The run's token, whoever asks: a poll or cancel route answers a caller through
        :func:`owned_continuation` / :func:`cancel_owned_continuation` instead."""
        ...

    async def get_run_record(self, token: str) -> RunRecord | None:
        """The stored run (its request, so its owner), or ``None`` (missing or expired)."""
        ...

    async def cancel_continuation(self, token: str) -> ContinuationToken | None: ...

    async def link_verified_claims(
        self, identity: ChannelIdentity, claims: Mapping[str, str], *, source: str
    ) -> LinkResult:
        """Record claims a trusted source verified for ``identity`` and link it to the user
        already holding them (see ``Host.link_verified_claims``)."""
        ...

    def command_catalog(self, channel: str) -> Sequence[ChannelCommand]:
        """The host's commands on ``channel`` (for a platform's command menu)."""
        ...


@runtime_checkable
class TargetFeatures(Protocol):
    """Optional on a ``HostServices``: what the hosted target can take.

    A channel that finds it refuses up front (a clear 4xx) a request the target cannot
    serve; without it, the target's adapter refuses the run itself (a failed run, never a
    request quietly answered as if it had asked less).
    """

    @property
    def target_accepts_function_tools(self) -> bool:
        """Whether caller-declared function tools reach the target (``options["tools"]``);
        ``backends.targets.accepts_function_tools`` answers it for a target."""
        ...


class Channel(abc.ABC):
    """One protocol on the host. Subclasses set ``name`` and implement ``routes``.

    The access and linking attributes below are described in the module docstring.
    """

    name: str
    require_link: bool | Inherit = INHERIT
    allowlist: Allowlist | Inherit | None = INHERIT
    confidentiality_tier: str = DEFAULT_TIER
    offers_link_commands: bool = True
    bot_name: str | None = None
    provides_verified_claims: bool = False
    authenticates_callers: bool = True
    allow_unauthenticated_access_control: bool = False

    @abc.abstractmethod
    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        """The routes this channel serves (built once, when the host builds its app)."""

    def middleware(self) -> Sequence[Middleware]:
        return ()

    def commands(self) -> Sequence[ChannelCommand]:
        return ()

    async def startup(self, host: HostServices) -> None:  # noqa: B027 - optional hook
        """Start-up work (register a webhook, open a poller); runs in the host's lifespan."""

    async def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Stop what ``startup`` started: take nothing new, and let work in hand finish.

        The host calls every channel's shutdown side by side, with its run and delivery
        drains, and cancels what is still running when its shutdown grace ends."""

    async def check_credentials(self, http: httpx.AsyncClient) -> str | None:
        """For ``agenthost doctor``: ask the platform whether the channel's credentials work,
        without serving. Answer what was verified (no secret in it), ``None`` when there is
        nothing to verify; raise ``ConfigurationError`` when the platform refuses them."""
        return None

    def background_updates(self, record: RunRecord) -> UpdateSink | None:
        """Where a background run this channel started streams its updates (if anywhere).

        Called by the worker each time it runs the record (a re-run after a crash too).
        """
        return None

    async def background_finished(self, record: RunRecord) -> None:  # noqa: B027 - optional hook
        """A background run this channel started reached a final status (already stored)."""


def source_attributes(connection: HTTPConnection) -> dict[str, str]:
    """``{SOURCE_ATTRIBUTE: client address}`` for a request's identity (empty if unknown)."""
    client = connection.client
    return {SOURCE_ATTRIBUTE: client.host} if client is not None and client.host else {}


def host_command_of(host: HostServices, request: ChannelRequest) -> commands.ParsedCommand | None:
    """The host command (``/link`` ...) ``request`` carries on its channel, if any.

    A command is answered at once and never queued, so a channel asked to run one in the
    background answers it in the foreground instead; its reply (a link code, say) then
    exists only in that one answer.
    """
    names = {command.name for command in host.command_catalog(request.channel)}
    return commands.command_named(request, names, bot_name=None)


async def owned_continuation(
    host: HostServices, token: str, caller: ChannelIdentity
) -> ContinuationToken | None:
    """The run ``token`` names if ``caller`` owns it (``background.is_owned_by``), else
    ``None``: answer that "not found", exactly as for a token that does not exist."""
    record = await host.get_run_record(token)
    if record is None or not background.is_owned_by(record, caller):
        return None
    return record.to_token()


async def cancel_owned_continuation(
    host: HostServices, token: str, caller: ChannelIdentity
) -> ContinuationToken | None:
    """Cancel the run ``token`` names if ``caller`` owns it; ``None`` (not found) otherwise."""
    if await owned_continuation(host, token, caller) is None:
        return None
    return await host.cancel_continuation(token)


__all__ = [
    "SOURCE_ATTRIBUTE",
    "Channel",
    "HostServices",
    "ResolvedTurn",
    "cancel_owned_continuation",
    "host_command_of",
    "owned_continuation",
    "source_attributes",
]
