"""The host: one target, many channels, one app.

``Host`` wires the pieces and owns their lifetimes: the store, the asyncio bridge for Agent
Framework targets, the shared HTTP client, the background worker and the channels' own
start-up work all live inside the app's lifespan (or ``async with host.running()``), and
nothing outlives it. Decisions are the core's; this module only performs them.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agenthost.backends import tracing
from agenthost.backends.asyncio_bridge import AsyncioBridge
from agenthost.backends.channel import Channel, TurnRecords
from agenthost.backends.configuration import ConfigurationError as ConfigurationError
from agenthost.backends.configuration import check_host_configuration, identity_configuration
from agenthost.backends.destinations import DeliveryRouter
from agenthost.backends.http_client import HostHttpClient
from agenthost.backends.ids import ordered_hex
from agenthost.backends.interpreter import (
    IdentityResolver,
    InterpreterSettings,
    LocalRuns,
    RunHook,
    TurnInterpreter,
)
from agenthost.backends.linking import IdentityLinker
from agenthost.backends.outbox import DeliveryWorker, OutboxSettings, ResponseHook
from agenthost.backends.serving import Backend, serve_forever
from agenthost.backends.state_expiry import IdleStateExpiry, StateExpirySettings
from agenthost.backends.targets import UpdateSink, accepts_function_tools, adapt_target
from agenthost.backends.worker import BackgroundWorker, WorkerSettings
from agenthost.sansio_core import authorization, background, commands, delivery, linking, turns
from agenthost.sansio_core import effects as fx
from agenthost.sansio_core.authorization import AccessDecision, Allowlist
from agenthost.sansio_core.delivery import Delivery, DeliveryStatus, RetryPolicy
from agenthost.sansio_core.identity import candidate_isolation_key
from agenthost.sansio_core.link_policy import LinkPolicy
from agenthost.sansio_core.linking import LinkResult
from agenthost.sansio_core.routing import Destination
from agenthost.sansio_core.sessions import DIRECT, ScopeKey
from agenthost.sansio_core.types import (
    ChannelCommand,
    ChannelIdentity,
    ChannelRequest,
    ContinuationToken,
    MultitaskStrategy,
    ResponseTarget,
    SessionRef,
)
from agenthost.stores.base import ChannelRecord, FinishedTurn, RunNotFound, Store, TurnWrites

log = logging.getLogger("agenthost.host")

#: ``trust_wire_targets(protocol_request, identity) -> bool``: may this caller choose a
#: non-originating ``response_target`` on the wire?
WireTargetPolicy = Callable[[Any, ChannelIdentity], bool]

_CHANNEL_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # fullmatch: "$" accepts a final "\n"


class HostNotRunning(RuntimeError):
    """A run was asked of a host whose lifespan has not started."""


def _new_id() -> str:
    # In minting order: run ids become session ids and isolation keys, row keys a store
    # indexes (see backends.ids).
    return ordered_hex()


class Host:
    """Host ``target`` on ``channels``.

    ``target`` is an Agent Framework ``Agent`` (anything with ``run(messages, session=,
    stream=)``), an Agent Framework ``Workflow``, or ``async def (messages) -> str`` (or an
    async generator of text chunks). ``store`` defaults to the one ``AGENTHOST_STORE``
    names (a URL, see ``stores.selection``), else SQLite under ``state_dir``.

    Identity and access (``agenthost.sansio_core.authorization``, ``linking``):
    ``identity_resolver`` replaces the default resolver (one stable isolation key per
    ``(channel, native_id)``, issued and stored the first time it is seen) with the
    application's: it answers a key, or ``None`` to refuse. ``linker`` (one
    ``IdentityLinker`` or several, e.g. ``OneTimeCodeLinker()``) lets users link their
    identities; with one, ``/link`` and ``/unlink`` join every channel's commands
    (``/new`` and ``/help`` are there always). ``allowlist`` (``None``: open) and
    ``require_link`` are the defaults the channels inherit; they are checked on every
    message. ``link_policy``
    (default ``AllowAllLinks()``) decides which channels may be linked, from their
    ``confidentiality_tier``. Settings that cannot work raise ``ConfigurationError`` here.

    Delivery (``agenthost.sansio_core.routing``, ``delivery``): a request whose
    ``response_target`` is not ``originating`` runs in the background and its reply is
    pushed, through the durable outbox, to the channels that implement ``ChannelPush``.
    ``trust_wire_targets(protocol_request, identity)`` decides which callers may set such a
    target on the wire (default: nobody; a refused one is ``TurnRefused`` with
    ``TARGET_NOT_ALLOWED`` and nothing runs). A ``run_hook`` and ``deliver`` may always
    choose one. ``response_hook(message, *, context)`` shapes each pushed message (a clone
    per destination; ``context.is_echo``, ``context.originating``) and may return a new
    ``PushMessage``. ``delivery_retry`` bounds and paces retries: one ``RetryPolicy``
    (default: about an hour of capped, jittered backoff) or one per channel name, ``"*"``
    for the rest; ``max_concurrent_deliveries`` bounds the fan-out.
    ``delivery_lease_seconds`` must be longer than any channel's ``push_timeout_seconds``.

    Expiry: a workflow's checkpoint is kept in its session's state. Once the workflow has
    no open question, the checkpoint only carries executor state into the session's next
    run, so it is dropped when the session has been idle ``workflow_checkpoint_ttl_seconds``
    (default 7 days; ``None`` keeps every checkpoint) and its next message starts the
    workflow afresh. A checkpoint waiting for an answer never expires.
    """

    def __init__(
        self,
        target: Any,
        *,
        channels: Sequence[Channel] = (),
        store: Store | None = None,
        middleware: Sequence[Middleware] = (),
        identity_resolver: IdentityResolver | None = None,
        linker: IdentityLinker | Sequence[IdentityLinker] | None = None,
        allowlist: Allowlist | None = None,
        require_link: bool = False,
        link_policy: LinkPolicy | None = None,
        run_hook: RunHook | None = None,
        trust_wire_targets: WireTargetPolicy | None = None,
        response_hook: ResponseHook | None = None,
        delivery_retry: RetryPolicy | Mapping[str, RetryPolicy] | None = None,
        max_concurrent_deliveries: int = 16,
        delivery_lease_seconds: float = 60.0,
        state_dir: str | Path = ".agenthost",
        multitask: MultitaskStrategy = MultitaskStrategy.ENQUEUE,
        lease_seconds: float = 30.0,
        background_max_attempts: int = 3,
        background_ttl_seconds: float = 24 * 3600.0,
        workflow_checkpoint_ttl_seconds: float | None = 7 * 24 * 3600.0,
        max_concurrent_background_runs: int = 16,
        shutdown_grace_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        _check_channels(channels)
        _check_positive(
            lease_seconds=lease_seconds,
            background_ttl_seconds=background_ttl_seconds,
            shutdown_grace_seconds=shutdown_grace_seconds,
        )
        _check_positive(delivery_lease_seconds=delivery_lease_seconds)
        if workflow_checkpoint_ttl_seconds is not None:
            _check_positive(workflow_checkpoint_ttl_seconds=workflow_checkpoint_ttl_seconds)
        if (
            background_max_attempts < 1
            or max_concurrent_background_runs < 1
            or max_concurrent_deliveries < 1
        ):
            raise ConfigurationError(
                "background_max_attempts, max_concurrent_background_runs and "
                "max_concurrent_deliveries must be at least 1"
            )
        identities = identity_configuration(
            channels=channels,
            linker=linker,
            allowlist=allowlist,
            require_link=require_link,
            link_policy=link_policy,
            custom_resolver=identity_resolver is not None,
        )
        self.linkers = identities.linkers
        self.link_rules = identities.link_rules
        self._commands = identities.commands
        self.state_dir = Path(state_dir)
        if store is None:
            from agenthost.stores.selection import default_store

            store = default_store(self.state_dir)
        self.store = store
        self.channels = tuple(channels)
        self._middleware = tuple(middleware)
        self._clock = clock
        self._new_id = new_id
        self._owner = f"host_{new_id()}"
        self._bridge = AsyncioBridge()
        self._target = target
        self._adapter = adapt_target(target, self._bridge)
        self._trust_wire_targets = trust_wire_targets
        self._response_hook = response_hook
        self._router = DeliveryRouter(
            store=store,
            channels=self.channels,
            link_rules=self.link_rules,
            retry=delivery_retry or RetryPolicy(),
        )
        self._router.check_lease(delivery_lease_seconds)
        self._outbox_settings = OutboxSettings(
            max_concurrent_sends=max_concurrent_deliveries,
            lease_seconds=delivery_lease_seconds,
            sweep_seconds=max(min(delivery_lease_seconds / 3, 5.0), 0.2),
            keep_delivered_seconds=background_ttl_seconds,
        )
        self._outbox: DeliveryWorker | None = None
        self._turn_settings = turns.TurnSettings(
            lease_seconds=lease_seconds,
            record_last_seen=self._router.any_can_push,
            custom_resolver=identity_resolver is not None,
            run_hook=run_hook is not None,
            default_multitask=multitask,
            access=identities.access,
            commands=identities.commands,
        )
        self._background_max_attempts = background_max_attempts
        self._shutdown_grace = shutdown_grace_seconds
        self._local_runs = LocalRuns()
        self._interpreter = TurnInterpreter(
            store=store,
            target=self._adapter,
            clock=clock,
            local_runs=self._local_runs,
            settings=InterpreterSettings(lease_seconds=lease_seconds),
            identity_resolver=identity_resolver,
            run_hook=run_hook,
            target_object=target,
            linkers=self.linkers,
        )
        # --- construction-time checks of the whole host (backends.configuration) ---
        check_host_configuration(target, self.channels, identities, lambda c: c.routes(self))
        # --- end of construction-time checks ---
        for bound in self.linkers:
            bound.bind(self)
        self._bot_names = {channel.name: channel.bot_name for channel in channels}
        self._worker_settings = WorkerSettings(
            max_concurrent_runs=max_concurrent_background_runs,
            lease_seconds=lease_seconds,
            sweep_seconds=max(lease_seconds / 3, 0.2),
            result_ttl_seconds=background_ttl_seconds,
        )
        self._state_expiry = (
            IdleStateExpiry(
                store=store,
                clock=clock,
                settings=StateExpirySettings.for_ttl(workflow_checkpoint_ttl_seconds),
            )
            if workflow_checkpoint_ttl_seconds is not None
            else None
        )
        self._worker: BackgroundWorker | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._task_health: list[TaskHealth] = []
        self._http: httpx.AsyncClient | None = None
        self._app: Starlette | None = None

    # --- the app ------------------------------------------------------------------

    @property
    def app(self) -> Starlette:
        """The host's ASGI app (built once): channel routes, ``/readiness``, the lifespan."""
        if self._app is None:
            routes: list[BaseRoute] = [Route("/readiness", self._readiness, methods=["GET"])]
            middleware = list(self._middleware)
            for channel in self.channels:
                routes.extend(channel.routes(self))
                middleware.extend(channel.middleware())
            self._app = Starlette(routes=routes, middleware=middleware, lifespan=self._lifespan)
        return self._app

    def serve(
        self, host: str = "127.0.0.1", port: int = 8000, backend: Backend = "asyncio"
    ) -> None:
        """Serve the app with Hypercorn until interrupted (SIGINT/SIGTERM drain gracefully)."""
        serve_forever(
            self.app,
            host=host,
            port=port,
            backend=backend,
            graceful_timeout=self._shutdown_grace,
        )

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with self.running():
            yield

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Host]:
        """Start everything the host needs; on exit drain, then cancel. Used by the lifespan."""
        if self._worker is not None:
            raise HostNotRunning("this host is already running")
        await self.store.open()
        # Asked once: the application installs its tracer provider before serving.
        self._interpreter.traced = tracing.tracing_enabled()
        try:
            async with (
                self._bridge,
                HostHttpClient(timeout=httpx.Timeout(30.0)) as http,
                anyio.create_task_group() as tasks,
            ):
                self._http = http
                worker = BackgroundWorker(
                    store=self.store,
                    interpreter=self._interpreter,
                    clock=self._clock,
                    owner=self._owner,
                    settings=self._worker_settings,
                    turn_settings=self._turn_settings,
                    channels={channel.name: channel for channel in self.channels},
                    router=self._router,
                    on_scheduled=self._notify_outbox,
                )
                outbox = DeliveryWorker(
                    store=self.store,
                    router=self._router,
                    clock=self._clock,
                    owner=self._owner,
                    settings=self._outbox_settings,
                    response_hook=self._response_hook,
                )
                await tasks.start(worker.serve)
                tasks.start_soon(self._interpreter.renew_leases, name="lease renewals")
                if self._state_expiry is not None:
                    await tasks.start(self._state_expiry.serve, name="idle state expiry")
                if self._router.any_can_push:
                    await tasks.start(outbox.serve)
                    # Deliveries other replicas schedule wake this one's worker too.
                    tasks.start_soon(self.store.watch_deliveries, outbox.notify)
                    self._outbox = outbox
                self._tasks = tasks
                self._worker = worker
                started: list[Channel] = []
                try:
                    for channel in self.channels:
                        await channel.startup(self)
                        started.append(channel)
                    log.info("host started", extra={"channels": [c.name for c in started]})
                    yield self
                finally:
                    with anyio.CancelScope(shield=True):
                        # Channels stop (finishing what their inboxes handle), runs and
                        # sends drain, side by side within one grace period.
                        async with anyio.create_task_group() as draining:
                            for channel in reversed(started):
                                draining.start_soon(_stop_channel, channel, self._shutdown_grace)
                            draining.start_soon(worker.drain, self._shutdown_grace)
                            draining.start_soon(outbox.drain, self._shutdown_grace)
                    self._outbox = None
                    self._worker = None
                    self._tasks = None
                    self._task_health = []
                    tasks.cancel_scope.cancel()
        finally:
            self._http = None
            with anyio.CancelScope(shield=True):
                await self.store.close()
            log.info("host stopped")

    async def _readiness(self, request: Request) -> Response:
        if self._worker is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        now = anyio.current_time()
        down = [health.name for health in self._task_health if health.is_down(now)]
        if down:
            # Names only: which long-lived task (a poller, an inbox) is not working.
            return JSONResponse({"status": "degraded", "tasks_down": down}, status_code=503)
        return JSONResponse({"status": "healthy"})

    # --- what channels and applications call --------------------------------------

    def start_task(self, fn: Callable[[], Awaitable[None]], *, name: str) -> None:
        """Run ``fn`` in the lifespan's task group until it ends or the host stops; restart
        it with backoff when it fails (see ``HostServices.start_task``)."""
        if self._tasks is None:
            raise HostNotRunning("tasks can be started only while the host runs")
        health = TaskHealth(name)
        self._task_health.append(health)
        self._tasks.start_soon(_supervised, fn, health, name=name)

    @property
    def target_accepts_function_tools(self) -> bool:
        """Whether caller-declared function tools reach the target (``TargetFeatures``)."""
        return accepts_function_tools(self._adapter)

    def now(self) -> float:
        """The host's clock (wall time in seconds), as every record the host writes uses."""
        return self._clock()

    @property
    def http(self) -> httpx.AsyncClient:
        """The one shared outbound HTTP client (exists while the host runs)."""
        if self._http is None:
            raise HostNotRunning("the host's HTTP client exists only while the host runs")
        return self._http

    async def run(
        self,
        request: ChannelRequest,
        *,
        on_update: UpdateSink | None = None,
        protocol_request: Any = None,
        records: TurnRecords | None = None,
    ) -> turns.TurnOutcome:
        """Run one turn in the foreground; stream updates to ``on_update`` if given.

        A request whose ``response_target`` is not ``originating`` runs in the background:
        call :meth:`run_in_background` for it (``turns.runs_in_background`` says which).
        If the ``run_hook`` chooses such a target, the reply is answered here *and* pushed.

        ``records`` lets a channel store its own records of the turn (a stored response,
        say) in the commit that saves the turn's session: called once the target answered,
        with the outcome the turn will have. When it is not called (a stateless turn, one
        refused before it ran) the turn saved nothing and the channel writes on its own.
        """
        self._require_running()
        run_id = f"run_{self._new_id()}"
        refused = self._check_wire_target(request, protocol_request, run_id)
        if refused is not None:
            return refused
        if not request.response_target.is_originating:
            raise ValueError(
                "a request with a non-originating response_target runs in the background: "
                "call host.run_in_background(request) (see turns.runs_in_background)"
            )
        rewritten = [request]
        # Only a run hook can choose a push target for a foreground turn: then its pushes
        # are queued by the commit that saves the turn, as are the channel's records.
        writes = None
        if self._turn_settings.run_hook or records is not None:
            writes = _ForegroundWrites(self, run_id, rewritten, records)
        traced = self._interpreter.records_spans()
        with tracing.span(
            "agenthost.turn", enabled=traced, channel=request.channel, run_id=run_id
        ) as spanned:
            outcome = await self._interpreter.drive(
                turns.run_turn(
                    request,
                    run_id=run_id,
                    now=self._clock(),
                    settings=self._turn_settings,
                    bot_name=self._bot_names.get(request.channel),
                ),
                on_update=on_update,
                protocol_request=protocol_request,
                on_request=rewritten.append,
                finisher=writes,
            )
            spanned.set_attribute("agenthost.outcome", _outcome_name(outcome))
        _log_outcome(run_id, request.channel, outcome)
        chosen = rewritten[-1]
        if isinstance(outcome, turns.TurnCompleted) and not chosen.response_target.is_originating:
            if writes is not None and writes.recorded:
                if writes.deliveries:
                    self._notify_outbox()
            else:  # a stateless turn saves no session: its pushes go on their own
                await self._push_foreground_reply(run_id, chosen, outcome)
        return outcome

    async def run_or_continue(
        self,
        request: ChannelRequest,
        *,
        on_update: UpdateSink | None = None,
        protocol_request: Any = None,
        records: TurnRecords | None = None,
    ) -> turns.TurnOutcome | ContinuationToken:
        """Like :meth:`run`, for a wire that can answer with a continuation token.

        When the request's target is not ``originating`` (set on the wire: only for a
        trusted caller, see ``trust_wire_targets``), or the ``run_hook`` chooses such a
        target, the turn is not run here: it becomes a background run and its
        ``ContinuationToken`` is returned at once; the worker runs it (the hook again
        first, as for every background run) and pushes the reply. Otherwise the turn
        runs in the foreground and its outcome is returned. A command is answered at once.
        """
        worker = self._require_running()
        if not request.response_target.is_originating:
            return await self.run_in_background(request, protocol_request=protocol_request)
        if not self._turn_settings.run_hook:
            # Without a hook nothing can move the reply elsewhere: a plain foreground turn,
            # which opens in one store round trip.
            return await self.run(
                request, on_update=on_update, protocol_request=protocol_request, records=records
            )
        token = f"run_{self._new_id()}"
        now = self._clock()
        command = commands.command_of(
            request, self._turn_settings.commands, self._bot_names.get(request.channel)
        )
        if command is not None:
            answered = await self._interpreter.drive(
                turns.run_command(
                    request, command, run_id=token, now=now, settings=self._turn_settings
                )
            )
            _log_outcome(token, request.channel, answered)
            return answered
        resolved = await self._interpreter.drive(
            turns.resolve_turn(request, run_id=token, now=now, settings=self._turn_settings),
            protocol_request=protocol_request,
        )
        if isinstance(resolved, turns.TurnRefused):
            _log_outcome(token, request.channel, resolved)
            return resolved
        if resolved.request.response_target.is_originating:
            outcome = await self._interpreter.drive(
                turns.execute_turn(
                    resolved, run_id=token, now=self._clock(), settings=self._turn_settings
                ),
                on_update=on_update,
                protocol_request=protocol_request,
            )
            _log_outcome(token, request.channel, outcome)
            return outcome
        # The hook chose where the reply goes: the wire gets the token, the target the push.
        record = self._new_run(token, request, resolved.session_ref, now)
        await self.store.create_run(record)
        worker.submit(token)
        log.info(
            "run continued in the background",
            extra={"token": token, "channel": request.channel},
        )
        return record.to_token()

    async def _push_foreground_reply(
        self, run_id: str, request: ChannelRequest, outcome: turns.TurnCompleted
    ) -> None:
        deliveries = await self.plan_foreground_pushes(
            run_id, request, outcome.result.session.isolation_key, outcome.result.text
        )
        if deliveries:
            await self.store.schedule_deliveries(deliveries)
            self._notify_outbox()

    async def plan_foreground_pushes(
        self, run_id: str, request: ChannelRequest, isolation_key: str, text: str
    ) -> tuple[Delivery, ...]:
        """The deliveries of a foreground reply that a run hook also sent elsewhere."""
        plan = await self._router.plan_reply(
            key_prefix=run_id,
            request=request,
            target=request.response_target,
            isolation_key=isolation_key,
            reply_text=text,
            now=self._clock(),
            answered_on_wire=True,
        )
        return plan.deliveries

    def _check_wire_target(
        self, request: ChannelRequest, protocol_request: Any, run_id: str
    ) -> turns.TurnRefused | None:
        # A request reaching the host from a channel carries what its caller put on the
        # wire: a push target is honoured only for callers the application trusts.
        if request.response_target.is_originating:
            return None
        policy = self._trust_wire_targets
        if policy is not None and policy(protocol_request, request.identity):
            return None
        refused = turns.TurnRefused(
            turns.RefusalReason.TARGET_NOT_ALLOWED,
            "this caller may not choose where the reply is delivered",
        )
        _log_outcome(run_id, request.channel, refused)
        return refused

    async def run_in_background(
        self, request: ChannelRequest, *, protocol_request: Any = None
    ) -> ContinuationToken | turns.TurnRefused:
        """Record the run and return its token at once; the worker runs it."""
        worker = self._require_running()
        token = f"run_{self._new_id()}"
        refused = self._check_wire_target(request, protocol_request, token)
        if refused is not None:
            return refused
        now = self._clock()
        command = commands.command_of(
            request, self._turn_settings.commands, self._bot_names.get(request.channel)
        )
        if command is not None:
            return await self._command_in_background(request, command, token, now, worker)
        recorded = await self._record_background_run(request, token, now, protocol_request)
        if isinstance(recorded, turns.TurnRefused):
            _log_outcome(token, request.channel, recorded)
            return recorded
        worker.submit(token)
        log.info("background run accepted", extra={"token": token, "channel": request.channel})
        return recorded.to_token()

    async def _record_background_run(
        self, request: ChannelRequest, token: str, now: float, protocol_request: Any
    ) -> background.RunRecord | turns.TurnRefused:
        """Settle the request's turn and record its run (the request as it arrived: a hook
        runs again when the run starts): in one store write when no application callback
        comes between (``turns`` rule 11), else step by step."""
        settings = self._turn_settings
        if turns.opens_in_one_trip(request, settings):
            return await self._interpreter.drive(
                turns.record_background_turn(
                    request,
                    run_id=token,
                    now=now,
                    settings=settings,
                    max_attempts=self._background_max_attempts,
                ),
                protocol_request=protocol_request,
            )
        resolved = await self._interpreter.drive(
            turns.resolve_turn(request, run_id=token, now=now, settings=settings),
            protocol_request=protocol_request,
        )
        if isinstance(resolved, turns.TurnRefused):
            return resolved
        record = self._new_run(token, request, resolved.session_ref, now)
        await self.store.create_run(record)
        return record

    def _new_run(
        self, token: str, request: ChannelRequest, ref: SessionRef, now: float
    ) -> background.RunRecord:
        """The record of a background run of ``request`` (as it arrived: the hook runs
        again when the run starts) in the session ``ref``."""
        return background.new_run(
            token=token,
            request=request,
            isolation_key=ref.isolation_key,
            session_id=ref.session_id,
            session_key=ref.key,
            now=now,
            max_attempts=self._background_max_attempts,
        )

    async def _command_in_background(
        self,
        request: ChannelRequest,
        command: commands.ParsedCommand,
        token: str,
        now: float,
        worker: BackgroundWorker,
    ) -> ContinuationToken | turns.TurnRefused:
        # A command is answered at once, never queued for the target: its run is recorded
        # already completed, so the channel's poll route serves the reply like any result.
        outcome = await self._interpreter.drive(
            turns.run_command(request, command, run_id=token, now=now, settings=self._turn_settings)
        )
        _log_outcome(token, request.channel, outcome)
        if isinstance(outcome, turns.TurnRefused):
            return outcome
        ttl = self._worker_settings.result_ttl_seconds
        record = background.new_run(
            token=token,
            request=request,
            isolation_key=outcome.result.session.isolation_key,
            session_id=None,
            session_key=outcome.result.session.key,
            now=now,
            max_attempts=1,
        )
        await self.store.create_run(record)
        await self.store.apply_run_event(token, background.Start(self._owner, now, ttl))
        record = await self.store.apply_run_event(
            token,
            background.Complete(
                self._owner, self._clock(), {"text": outcome.result.text, "output": None}, ttl
            ),
        )
        await worker.announce_finished(record)
        return record.to_token()

    async def get_continuation(self, token: str) -> ContinuationToken | None:
        record = await self.store.get_run(token)
        if record is None or background.is_expired(record, self._clock()):
            return None
        return record.to_token()

    async def get_run_record(self, token: str) -> background.RunRecord | None:
        """The full stored record (its request and session), for channels that need more."""
        record = await self.store.get_run(token)
        if record is None or background.is_expired(record, self._clock()):
            return None
        return record

    async def cancel_continuation(self, token: str) -> ContinuationToken | None:
        """Cancel a background run (idempotent); ``None`` if no such run exists."""
        before = await self.store.get_run(token)
        if before is None:
            return None
        try:
            record = await self.store.apply_run_event(
                token,
                background.Cancel(self._clock(), self._worker_settings.result_ttl_seconds),
            )
        except RunNotFound:
            return None
        if self._worker is not None:
            self._worker.cancel_local(token)
            if not before.status.is_final:
                await self._worker.announce_finished(record)
        return record.to_token()

    # --- delivery ---------------------------------------------------------------------

    async def deliver(
        self,
        *,
        isolation_key: str,
        message: str,
        target: ResponseTarget | None = None,
        idempotency_key: str | None = None,
    ) -> list[Delivery]:
        """Push ``message`` to a user from application code (default target ``active``).

        The deliveries are routed like a reply (the user's own identities only; ``active``
        is the most recent channel that can reach them) and go through the durable outbox.
        When no destination is found nothing is recorded and ``[]`` is returned. Otherwise
        the message is recorded in the user's direct session as an assistant turn
        (``turns.record_proactive_message``: it waits for a run in progress there), so later
        turns see it in the history, and the deliveries are scheduled; they are returned.

        ``idempotency_key`` (any string the caller keeps for this message, e.g. a scheduler
        job's id) makes a retried call deliver once: a call whose deliveries exist already
        records nothing and returns them as they stand.
        """
        target = target or ResponseTarget.active()
        if target.is_originating:
            raise ValueError("a proactive message has no originating wire: choose a target")
        if idempotency_key is not None:
            digest = hashlib.sha256(f"{isolation_key}\0{idempotency_key}".encode()).hexdigest()
            key = f"msg_{digest[:32]}"
        else:
            key = f"msg_{self._new_id()}"
        plan = await self._router.plan_message(
            key_prefix=key,
            isolation_key=isolation_key,
            target=target,
            text=message,
            now=self._clock(),
        )
        if not plan.deliveries:
            log.info("proactive message has no destination", extra={"key": key})
            return []
        if idempotency_key is not None:
            existing = [await self.store.get_delivery(d.delivery_id) for d in plan.deliveries]
            if any(found is not None for found in existing):
                log.info("proactive message already scheduled", extra={"key": key})
                return [found for found in existing if found is not None]
        # The deliveries commit with the message's save in the session: one transaction.
        pushes = _ProactivePushes(tuple(plan.deliveries))
        await self._interpreter.drive(
            turns.record_proactive_message(isolation_key, message, run_id=key, now=self._clock()),
            finisher=pushes,
        )
        if not pushes.recorded:  # pragma: no cover - a proactive message always finishes
            await self.store.schedule_deliveries(plan.deliveries)
        self._notify_outbox()
        log.info(
            "proactive message scheduled", extra={"key": key, "deliveries": len(plan.deliveries)}
        )
        return list(plan.deliveries)

    async def push_later(
        self,
        destination: Destination,
        text: str,
        *,
        key: str,
        isolation_key: str,
        parts_sent: int = 0,
    ) -> bool:
        """Schedule what a channel could not finish on its wire (see ``HostServices``)."""
        if self._router.pusher(destination.channel) is None:
            return False
        (scheduled,) = delivery.plan(
            [destination],
            key_prefix=key,
            isolation_key=isolation_key,
            reply={"text": text},
            echo=None,
            now=self._clock(),
            retry=self._router.retry_for(destination.channel),
            parts_sent=parts_sent,
        )
        await self.store.schedule_deliveries([scheduled])
        self._notify_outbox()
        log.info(
            "reply handed to the outbox",
            extra={"delivery_id": scheduled.delivery_id, "parts_sent": parts_sent},
        )
        return True

    async def list_deliveries(
        self,
        statuses: Sequence[DeliveryStatus] | None = None,
        *,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[Delivery]:
        return await self.store.list_deliveries(statuses, limit=limit, newest_first=newest_first)

    async def replay_delivery(self, delivery_id: str) -> Delivery:
        """Send a dead (or ``unknown``) delivery again, attempts reset.

        Raises ``DeliveryNotFound`` or ``delivery.DeliveryTransitionRefused``.
        """
        replayed = await self.store.apply_delivery_event(
            delivery_id, delivery.Replay(self._clock())
        )
        log.info("delivery replayed", extra={"delivery_id": delivery_id})
        self._notify_outbox()
        return replayed

    async def purge_deliveries(self) -> int:
        """Delete the dead letters; return how many."""
        return await self.store.purge_deliveries([DeliveryStatus.DEAD])

    def _notify_outbox(self) -> None:
        if self._outbox is not None:
            self._outbox.notify()

    async def reset_session(self, isolation_key: str, *, qualifier: str = DIRECT) -> str:
        """Start a fresh session for a user (``/new``); the old one stays readable."""
        alias = await self.store.rotate_session(
            ScopeKey(isolation_key, qualifier), f"s_{self._new_id()}", self._clock()
        )
        log.info("session reset", extra={"generation": alias.generation})
        return alias.session_id

    # --- identity, linking and access ----------------------------------------------

    async def link_verified_claims(
        self,
        identity: ChannelIdentity,
        claims: Mapping[str, str],
        *,
        source: str,
        subject_claims: Sequence[str] = ("tid", "oid"),
    ) -> LinkResult:
        """Record claims a trusted source verified for ``identity``, and link it.

        For an OpenID Connect (Entra) link ceremony: call it from the callback route with
        the identity that began the ceremony and the verified claims, e.g.
        ``{"tid": ..., "oid": ...}``, and ``source`` naming the verifier (``"entra"``).

        ``subject_claims`` are the claims that together name the person (default Entra's
        ``tid`` and ``oid``; ``("iss", "sub")`` for another OpenID provider); each must be
        present. If another user already holds the same subject from the same source, the
        identity's user is merged onto that user's isolation key, silently, and so shares
        its sessions, provided the link policy permits the channels involved. Otherwise
        the identity becomes the subject's holder. All the claims are recorded for the
        identity (replacing its earlier claims from ``source``), so claim allowlists
        (``LinkedClaimAllowlist``) see them on its user's next message.

        Answers a ``LinkResult``: ``linked`` is true when the identity is now linked (to
        another identity, or as the holder of the verified account); ``isolation_key`` is
        its key afterwards; ``reason`` a ``LinkReason`` (``linked``, ``already_linked``,
        ``claims_recorded``; on refusal ``link_policy`` or ``conflicting_claims``, in which
        case nothing was recorded). Raises ``ValueError`` when a subject claim is missing.
        Claim values are never logged.
        """
        verified = linking.verified_claims(
            claims, source=source, subject_claims=subject_claims, now=self._clock()
        )
        candidate = candidate_isolation_key(identity, self._new_id())
        result = await self.store.link_verified_claims(
            identity, verified, self.link_rules, candidate_key=candidate, now=self._clock()
        )
        log.info(
            "verified claims presented",
            extra={"channel": identity.channel, "source": source, "reason": result.reason.value},
        )
        return result

    async def link_identities(
        self, anchor: ChannelIdentity, moving: ChannelIdentity, *, source: str = "operator"
    ) -> LinkResult:
        """Merge ``moving``'s user onto ``anchor``'s (an operator's link), under the policy."""
        result = await self.store.link_identities(
            anchor, moving, self.link_rules, source=source, now=self._clock()
        )
        log.info("identities linked", extra={"source": source, "reason": result.reason.value})
        return result

    async def unlink(self, identity: ChannelIdentity) -> LinkResult:
        """Give ``identity`` a fresh isolation key of its own (``/unlink``): it never reaches
        its former user's sessions again; the rest of that user keeps them."""
        new_key = candidate_isolation_key(identity, self._new_id())
        result = await self.store.unlink_identity(identity, new_key, self._clock())
        log.info("unlink", extra={"channel": identity.channel, "reason": result.reason.value})
        return result

    async def is_linked(self, identity: ChannelIdentity) -> bool:
        facts = await self.store.load_facts(identity)
        return facts is not None and facts.linked

    async def linked_identities(self, identity: ChannelIdentity) -> list[ChannelIdentity]:
        """Every identity of ``identity``'s user (itself included), or ``[]`` if unseen."""
        context = await self.store.load_context(identity, None)
        if context.isolation_key is None:
            return []
        return await self.store.list_identities(context.isolation_key)

    async def authorize(
        self, identity: ChannelIdentity, *, is_direct: bool = True
    ) -> AccessDecision:
        """The access decision for ``identity`` on its channel now (routing and delivery
        use it; every request is authorized by the turn itself)."""
        access = self._turn_settings.access.for_channel(identity.channel)
        facts = await self.store.load_facts(identity) if access.needs_facts else None
        return authorization.authorize(access, identity, facts, is_direct=is_direct)

    def command_catalog(self, channel: str) -> Sequence[ChannelCommand]:
        """The host's commands on ``channel`` (for a platform's command menu)."""
        return self._commands.channel_commands(channel)

    def _require_running(self) -> BackgroundWorker:
        if self._worker is None:
            raise HostNotRunning(
                "the host is not running: serve host.app with an ASGI server, call "
                "host.serve(), or use `async with host.running():`"
            )
        return self._worker


def _outcome_name(outcome: turns.TurnOutcome) -> str:
    """The outcome as spans and metrics name it: completed, failed, cancelled or the
    refusal's reason."""
    if isinstance(outcome, turns.TurnCompleted):
        return "completed"
    if isinstance(outcome, turns.TurnFailed):
        return "cancelled" if outcome.cancelled else "failed"
    return outcome.reason.value


#: A restarted task counts as up again once it has run this long without failing.
TASK_HEALTHY_AFTER_SECONDS = 5.0
TASK_RESTART_FIRST_SECONDS = 1.0
TASK_RESTART_MAX_SECONDS = 60.0


@attrs.define
class TaskHealth:
    """How one long-lived task is doing (times are ``anyio.current_time()``)."""

    name: str
    failures: int = 0  # in a row
    failed_at: float | None = None
    started_at: float = 0.0

    def is_down(self, now: float) -> bool:
        """Failed, and not restarted yet or not yet running long enough to count as up."""
        if self.failed_at is None:
            return False
        return self.started_at < self.failed_at or now - self.started_at < (
            TASK_HEALTHY_AFTER_SECONDS
        )


async def _stop_channel(channel: Channel, grace: float) -> None:
    """A channel's shutdown, cut short at ``grace``; a failing one does not stop the rest."""
    with anyio.move_on_after(grace) as scope:
        try:
            await channel.shutdown()
        except Exception:
            log.exception("a channel failed to shut down", extra={"channel": channel.name})
    if scope.cancelled_caught:
        log.warning("a channel's shutdown ran out of grace", extra={"channel": channel.name})


async def _supervised(fn: Callable[[], Awaitable[None]], health: TaskHealth) -> None:
    """Run ``fn``; on any exception log it, wait (doubling from a second to a minute;
    back to a second after a run that lasted), and run it again."""
    delay = TASK_RESTART_FIRST_SECONDS
    while True:
        health.started_at = anyio.current_time()
        try:
            await fn()
            return
        except Exception:
            now = anyio.current_time()
            if now - health.started_at >= TASK_HEALTHY_AFTER_SECONDS:
                delay = TASK_RESTART_FIRST_SECONDS
                health.failures = 0
            health.failures += 1
            health.failed_at = now
            log.exception(
                "a host task failed; restarting it",
                extra={"task": health.name, "failures": health.failures, "retry_in": delay},
            )
        await anyio.sleep(delay)
        delay = min(delay * 2, TASK_RESTART_MAX_SECONDS)


def _log_outcome(run_id: str, channel: str, outcome: turns.TurnOutcome | turns.TurnRefused) -> None:
    if isinstance(outcome, turns.TurnCompleted):
        if not log.isEnabledFor(logging.INFO):
            return  # the common case when serving quietly: build no extra fields
        reply = outcome.result.result
        if isinstance(reply, commands.CommandReply):
            log.info(
                "command answered",
                extra={"run_id": run_id, "channel": channel, "command": reply.command},
            )
            return
        log.info(
            "turn completed", extra={"run_id": run_id, "channel": channel, "saved": outcome.saved}
        )
    elif isinstance(outcome, turns.TurnFailed):
        log.warning(
            "turn failed",
            extra={"run_id": run_id, "channel": channel, "cancelled": outcome.cancelled},
        )
    elif isinstance(outcome.access, authorization.Denied):
        # The only place a denial's details go: a structured log line.
        details = {f"denied_{k}": v for k, v in outcome.access.log_details.items()}
        log.warning(
            "request denied",
            extra={
                "run_id": run_id,
                "channel": channel,
                "reason": outcome.reason.value,
                "reason_code": outcome.access.reason_code,
                **details,
            },
        )
    else:
        log.info(
            "turn refused",
            extra={"run_id": run_id, "channel": channel, "reason": outcome.reason.value},
        )


def _check_channels(channels: Sequence[Channel]) -> None:
    seen: set[str] = set()
    for channel in channels:
        if not isinstance(channel, Channel):
            raise ConfigurationError(
                f"{channel!r} is not a Channel; channels come from agenthost.channels.*"
            )
        name = getattr(channel, "name", None)
        if not isinstance(name, str) or not _CHANNEL_NAME.fullmatch(name):
            raise ConfigurationError(
                f"channel name {name!r} must be 1-32 lowercase letters, digits, '-' or '_'"
            )
        if name in seen:
            raise ConfigurationError(
                f"two channels are named {name!r}; pass name=... to one of them"
            )
        seen.add(name)


def _check_positive(**settings: float) -> None:
    for setting, value in settings.items():
        if not value > 0:
            raise ConfigurationError(f"{setting} must be greater than 0, not {value!r}")


@attrs.define
class _ForegroundWrites:
    """What a foreground turn writes besides its session, committed with it
    (``interpreter.TurnFinisher``): the pushes of a reply a run hook also sent elsewhere,
    and the channel's own records of the turn (``records``)."""

    host: Host
    run_id: str
    requests: list[ChannelRequest]  # as the run hook rewrote it, last
    records: TurnRecords | None = None
    deliveries: tuple[Delivery, ...] = ()
    recorded: bool = False

    async def writes_for(
        self, ran: fx.RunTarget | None, answer: fx.TargetSucceeded | fx.TargetFailed | None
    ) -> TurnWrites:
        if ran is None or answer is None:  # pragma: no cover - a foreground turn runs
            return TurnWrites()
        chosen = self.requests[-1]
        if isinstance(answer, fx.TargetSucceeded) and not chosen.response_target.is_originating:
            self.deliveries = await self.host.plan_foreground_pushes(
                self.run_id, chosen, ran.session_ref.isolation_key, answer.text
            )
        channel_records: Sequence[ChannelRecord] = ()
        if self.records is not None:
            outcome = turns.outcome_of(answer, ran.session_ref, saved=True)
            channel_records = self.records(outcome)
        return TurnWrites(deliveries=self.deliveries, channel_records=tuple(channel_records))

    def finished(self, result: FinishedTurn) -> None:
        self.recorded = True


@attrs.define
class _ProactivePushes:
    """Queues a proactive message's deliveries in the commit that saves it in the user's
    session (``interpreter.TurnFinisher``)."""

    deliveries: tuple[Delivery, ...]
    recorded: bool = False

    async def writes_for(
        self, ran: fx.RunTarget | None, answer: fx.TargetSucceeded | fx.TargetFailed | None
    ) -> TurnWrites:
        return TurnWrites(deliveries=self.deliveries)

    def finished(self, result: FinishedTurn) -> None:
        self.recorded = True
