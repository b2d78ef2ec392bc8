"""The seam between the host and its channels.

A channel translates one protocol: it contributes routes (and optionally middleware and
start-up/shutdown work) and turns native payloads into ``ChannelRequest``s, which it hands
to the host through :class:`HostServices`. Everything else (identity, sessions, leases,
background runs) is the host's.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from agenthost.sansio_core.background import RunRecord
from agenthost.sansio_core.turns import ResolvedTurn, TurnOutcome, TurnRefused
from agenthost.sansio_core.types import ChannelCommand, ChannelRequest, ContinuationToken

if TYPE_CHECKING:
    import httpx

    from agenthost.backends.targets import UpdateSink
    from agenthost.stores.base import Store


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

        It is cancelled when the host stops; an exception from it is logged and does not
        stop the host. Only callable while the host runs (from ``startup`` on).
        """
        ...

    async def run(
        self,
        request: ChannelRequest,
        *,
        on_update: UpdateSink | None = None,
        protocol_request: Any = None,
    ) -> TurnOutcome: ...

    async def run_in_background(
        self, request: ChannelRequest, *, protocol_request: Any = None
    ) -> ContinuationToken | TurnRefused: ...

    async def get_continuation(self, token: str) -> ContinuationToken | None: ...

    async def cancel_continuation(self, token: str) -> ContinuationToken | None: ...


class Channel(abc.ABC):
    """One protocol on the host. Subclasses set ``name`` and implement ``routes``."""

    name: str

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
        """Stop what ``startup`` started."""

    def background_updates(self, record: RunRecord) -> UpdateSink | None:
        """Where a background run this channel started streams its updates (if anywhere).

        Called by the worker each time it runs the record (a re-run after a crash too).
        """
        return None

    async def background_finished(self, record: RunRecord) -> None:  # noqa: B027 - optional hook
        """A background run this channel started reached a final status (already stored)."""


__all__ = ["Channel", "HostServices", "ResolvedTurn"]
