"""The Activity channel: its routes, its start-up, and the turn per activity.

Routes: ``POST {path}`` (default ``/activity/api/messages``: the bot's messaging endpoint
in Azure Bot Service) and ``GET {files_path}/{file_key}`` (files users sent, fetched
through the host).

Order on the messaging endpoint, so nothing of an unverified body is trusted:

1. the bearer token's signature and claims (``tokens``): else 401;
2. the body, bounded, parsed with the Activity models: else 400;
3. the token's binding to the activity (endorsed ``channelId``, ``serviceurl`` claim)
   and the service URL allowlist: else 401;
4. the conversation reference is stored; a message for the bot is recorded in the inbox
   (de-duplicated by activity id) and acknowledged 200, and its turn runs from there;
5. ``invoke`` activities are answered with an ``InvokeResponse``: an Adaptive Card
   ``adaptiveCard/action`` becomes a turn and is acknowledged with a message response,
   every other invoke is answered 501 (never a silent 200).

Decisions about identity, sessions and commands are the host's: the channel hands it the
text addressed to the bot (``<at>Bot</at> /new`` arrives as ``/new``) and renders what
comes back.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio
import httpx
from microsoft_agents.activity import Activity, ActivityTypes
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from agenthost.backends.bodies import BodyTooLarge, OversizedBodyResponse, read_limited
from agenthost.backends.channel import INHERIT, Channel, HostServices, Inherit
from agenthost.backends.configuration import choice
from agenthost.backends.host import ConfigurationError
from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.channels.activity import codec, pushes
from agenthost.channels.activity.codec import Addressing, Greeting, Ignored, Inbound
from agenthost.channels.activity.connector import (
    DEFAULT_SERVICE_URLS,
    Connector,
    ConnectorError,
    ServiceUrls,
)
from agenthost.channels.activity.credentials import (
    DEFAULT_AUTHORITY_HOST,
    BotTokens,
    Certificate,
    TokenUnavailable,
)
from agenthost.channels.activity.inbox import Inbox, InboxFull
from agenthost.channels.activity.replies import Reply
from agenthost.channels.activity.tokens import (
    BOT_FRAMEWORK_ISSUER,
    BOT_FRAMEWORK_METADATA_URL,
    EMULATOR_METADATA_URL,
    InvalidToken,
    SigningKeys,
    TokenVerifier,
)
from agenthost.recent import RecentMap
from agenthost.sansio_core import chat_replies
from agenthost.sansio_core.authorization import Allowlist
from agenthost.sansio_core.link_policy import DEFAULT_TIER
from agenthost.sansio_core.routing import Destination
from agenthost.sansio_core.turns import (
    TurnOutcome,
)
from agenthost.sansio_core.types import (
    ChannelCommand,
    ChannelIdentity,
    ContentPart,
    ContinuationToken,
    ConversationScope,
    MultitaskStrategy,
    TextPart,
    UriPart,
)
from agenthost.stores.base import ChannelRecord

log = logging.getLogger("agenthost.channels.activity")

FILE = "file"
ENTRA_SOURCE = "entra"
_REMEMBERED_CLAIMS = 10_000  # identities whose Teams claims this process already recorded

_CARD_ACCEPTED = "Working on it…"
# What an Entra refusal of the bot's token means, naming the setting to fix (for doctor).
_ENTRA_REFUSED = (
    "Entra refused a token for app_id {app_id} ({code}); check app_id, {credential} and "
    "tenant_id against the app registration"
)
_ENTRA_REFUSALS = {
    "invalid_client": (
        "Entra refused the bot's {credential} for app_id {app_id} (invalid_client); create a "
        "new one under Certificates & secrets of the app registration (secrets expire)"
    ),
    "unauthorized_client": (
        "Entra does not know app_id {app_id} in tenant {tenant} (unauthorized_client); copy "
        "app_id from the bot's app registration, and set tenant_id for a single-tenant bot"
    ),
    "invalid_request": (
        "Entra refused the token request for app_id {app_id} in tenant {tenant} "
        "(invalid_request); check tenant_id and app_id"
    ),
    "token_request_failed": (
        "no token could be requested from {authority_host} for tenant {tenant}: check "
        "authority_host and tenant_id, and that the {credential} can be loaded"
    ),
}


class ActivityChannel(Channel):
    """A Bot Framework bot (Azure Bot Service: Teams, Web Chat, Direct Line …) for the
    hosted target (``pip install 'agenthost[activity]'``).

    ``app_id`` is the bot's Entra app registration; ``app_secret`` or ``certificate`` its
    credential; ``tenant_id`` makes it a single-tenant bot. Inbound tokens are verified
    against ``openid_metadata_url`` (the Bot Framework's by default); Emulator and skill
    tokens only with ``allow_emulator=True``. Replies and pushes go only to a service URL
    that ``service_urls`` admits (the Bot Framework's and Teams' hosts by default, https).
    ``authority_host`` is where the bot's own token comes from (Entra's public cloud by
    default; a national cloud's host otherwise).

    ``addressing`` decides which group and channel messages are for the bot;
    ``conversation_scope`` which session they belong to. ``stream`` turns on Teams
    streaming in 1:1 chats. ``greeting`` is sent when the bot is added to a conversation.
    Files users send reach the target as short-lived host URLs on ``public_url`` (without
    it, they are described in text). ``entra_claims``: a Teams user's ``aadObjectId`` and
    tenant, which the verified token vouches for, are recorded as verified Entra claims
    (``tid``, ``oid``), so a ``LinkedClaimAllowlist`` admits them and an Entra sign-in on
    another channel links to them; set it to ``False`` with a custom identity resolver.
    """

    push_is_idempotent = False  # the connector does not drop a repeated send

    def __init__(
        self,
        app_id: str,
        *,
        app_secret: str | None = None,
        certificate: Certificate | None = None,
        tenant_id: str | None = None,
        name: str = "activity",
        path: str = "/activity/api/messages",
        files_path: str = "/activity/files",
        public_url: str | None = None,
        openid_metadata_url: str = BOT_FRAMEWORK_METADATA_URL,
        issuer: str = BOT_FRAMEWORK_ISSUER,
        allow_emulator: bool = False,
        emulator_metadata_url: str = EMULATOR_METADATA_URL,
        authority_host: str = DEFAULT_AUTHORITY_HOST,
        service_urls: Sequence[str] = DEFAULT_SERVICE_URLS,
        addressing: Addressing | str = Addressing.MENTION_ONLY,
        conversation_scope: ConversationScope | str = ConversationScope.PER_USER_PER_CONVERSATION,
        stream: bool = True,
        stream_interval: float = 1.0,
        typing_delay: float = 0.5,
        informative_text: str = "Working on it…",
        greeting: str | None = None,
        entra_claims: bool = True,
        key_refresh_interval: float = 300.0,
        dedupe_seconds: float = 24 * 3600.0,
        max_concurrent_conversations: int = 16,
        max_pending: int = 1000,
        max_body_bytes: int = 1024 * 1024,
        max_file_bytes: int = 20 * 1024 * 1024,
        file_url_ttl_seconds: float = 600.0,
        multitask: MultitaskStrategy | None = None,
        require_link: bool | Inherit = INHERIT,
        allowlist: Allowlist | Inherit | None = INHERIT,
        confidentiality_tier: str = DEFAULT_TIER,
        offers_link_commands: bool = True,
    ) -> None:
        if not isinstance(app_id, str) or not app_id.strip():
            raise ConfigurationError("app_id must be the bot's Microsoft App ID")
        if (app_secret is None) == (certificate is None):
            raise ConfigurationError(
                "give exactly one credential for the bot: app_secret= (a client secret) or "
                "certificate=Certificate(private_key_pem, thumbprint)"
            )
        for route_path in (path, files_path):
            if not route_path.startswith("/") or route_path.endswith("/"):
                raise ConfigurationError(f"{route_path!r} must start with '/' and not end with one")
        for url in (openid_metadata_url, emulator_metadata_url, authority_host):
            if not url.startswith(("https://", "http://")):
                raise ConfigurationError(f"{url!r} must be an http(s) URL")
        try:
            self.service_urls = ServiceUrls(service_urls)
        except ValueError as error:
            raise ConfigurationError(f"service_urls: {error}") from None
        if min(max_concurrent_conversations, max_pending, max_body_bytes, max_file_bytes) < 1:
            raise ConfigurationError(
                "max_concurrent_conversations, max_pending, max_body_bytes and max_file_bytes "
                "must be at least 1"
            )
        if dedupe_seconds <= 0 or file_url_ttl_seconds <= 0 or key_refresh_interval <= 0:
            raise ConfigurationError(
                "dedupe_seconds, file_url_ttl_seconds and key_refresh_interval must be positive"
            )
        if stream_interval < 0.5 or typing_delay < 0:
            raise ConfigurationError(
                "stream_interval must be at least 0.5 (Teams' pace) and typing_delay not negative"
            )
        self.addressing = choice(Addressing, addressing, "addressing")
        self.conversation_scope = choice(
            ConversationScope, conversation_scope, "conversation_scope"
        )

        self.name = name
        self.app_id = app_id
        self.path = path
        self.files_path = files_path
        self.public_url = public_url.rstrip("/") if public_url else None
        self.openid_metadata_url = openid_metadata_url
        self.issuer = issuer
        self.allow_emulator = allow_emulator
        self.emulator_metadata_url = emulator_metadata_url
        self.authority_host = authority_host
        self.stream = stream
        self.stream_interval = stream_interval
        self.typing_delay = typing_delay
        self.informative_text = informative_text
        self.greeting = greeting
        self.entra_claims = entra_claims
        self.provides_verified_claims = entra_claims
        self.key_refresh_interval = key_refresh_interval
        self.dedupe_seconds = dedupe_seconds
        self.max_concurrent_conversations = max_concurrent_conversations
        self.max_pending = max_pending
        self.max_body_bytes = max_body_bytes
        self.max_file_bytes = max_file_bytes
        self.file_url_ttl_seconds = file_url_ttl_seconds
        self.multitask = multitask
        self.require_link = require_link
        self.allowlist = allowlist
        self.confidentiality_tier = confidentiality_tier
        self.offers_link_commands = offers_link_commands
        self._secret = app_secret
        self._certificate = certificate
        self._tenant_id = tenant_id
        self._host: HostServices | None = None
        self._verifier: TokenVerifier | None = None
        self._tokens: BotTokens | None = None
        self._connector: Connector | None = None
        self._inbox: Inbox | None = None
        self._claimed: RecentMap[str, bool] = RecentMap(_REMEMBERED_CLAIMS)

    def __repr__(self) -> str:  # the credential stays out of reprs and logs
        return f"ActivityChannel(name={self.name!r}, app_id={self.app_id!r})"

    # --- the Channel seam --------------------------------------------------------------

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        return [
            Route(self.path, self._messages, methods=["POST"]),
            Route(f"{self.files_path}/{{file_key}}", self._serve_file, methods=["GET"]),
        ]

    def commands(self) -> Sequence[ChannelCommand]:
        return ()

    async def check_credentials(self, http: httpx.AsyncClient) -> str | None:
        """Ask Entra for the bot's Bot Framework token (client credentials), exactly as a
        reply would: a refusal here means no reply or push could ever be sent."""
        tokens = BotTokens(
            http,
            app_id=self.app_id,
            secret=self._secret,
            certificate=self._certificate,
            tenant_id=self._tenant_id,
            authority_host=self.authority_host,
        )
        credential = "app_secret" if self._secret is not None else "certificate"
        tenant = self._tenant_id or "botframework.com (multi-tenant)"
        try:
            await tokens.token()
        except TokenUnavailable as error:
            if error.code == "entra_unreachable":
                raise ConnectionError("Entra could not be reached") from None
            explained = _ENTRA_REFUSALS.get(error.code, _ENTRA_REFUSED).format(
                code=error.code,
                credential=credential,
                app_id=self.app_id,
                tenant=tenant,
                authority_host=self.authority_host,
            )
            raise ConfigurationError(explained) from None
        return f"app {self.app_id}: Entra issued a Bot Framework token (tenant {tenant})"

    async def startup(self, host: HostServices) -> None:
        channel_keys = SigningKeys(
            host.http, self.openid_metadata_url, refresh_interval=self.key_refresh_interval
        )
        emulator_keys = (
            SigningKeys(
                host.http, self.emulator_metadata_url, refresh_interval=self.key_refresh_interval
            )
            if self.allow_emulator
            else None
        )
        self._verifier = TokenVerifier(
            self.app_id, channel_keys, emulator_keys=emulator_keys, issuer=self.issuer
        )
        self._tokens = BotTokens(
            host.http,
            app_id=self.app_id,
            secret=self._secret,
            certificate=self._certificate,
            tenant_id=self._tenant_id,
            authority_host=self.authority_host,
        )
        self._connector = Connector(host.http, self._tokens, self.service_urls)
        inbox = Inbox(
            host,
            channel=self.name,
            handle=self._handle,
            dedupe_seconds=self.dedupe_seconds,
            max_concurrent_conversations=self.max_concurrent_conversations,
            max_pending=self.max_pending,
        )
        await inbox.recover()
        self._host, self._inbox = host, inbox
        host.start_task(inbox.run, name=f"{self.name} inbox")
        log.info("activity channel started", extra={"channel": self.name})

    async def shutdown(self) -> None:
        # Until the next start, activities are answered 503 and the connector retries.
        # The ones being handled finish (within the host's grace); recorded ones not yet
        # started stay in the inbox for another replica or the next start.
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            await inbox.stop()

    async def wait_idle(self) -> None:
        """Until every recorded activity has been handled (tests and benchmarks use it)."""
        if self._inbox is not None:
            await self._inbox.wait_idle()

    # --- pushing (ChannelPush) --------------------------------------------------------

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome:
        """Send a delivery through the stored conversation reference (see ``pushes``)."""
        host, connector = self._host, self._connector
        if host is None or connector is None:
            return PushOutcome.transient("the activity channel has not started")
        return await pushes.push(connector, host.store, self.name, destination, message)

    # --- inbound -----------------------------------------------------------------------

    async def _messages(self, request: Request) -> Response:
        verifier, inbox, host = self._verifier, self._inbox, self._host
        if verifier is None or inbox is None or host is None:
            return _error(503, "ServiceUnavailable", "The bot is starting.")
        try:
            verified = await verifier.verify(request.headers.get("authorization"))
        except InvalidToken as refused:
            return _unauthorized(refused.reason)
        try:
            raw = await read_limited(request, self.max_body_bytes)
            data = json.loads(raw)
            activity = codec.parse(data)
        except BodyTooLarge as too_large:
            return OversizedBodyResponse(
                {"error": {"code": "BadArgument", "message": str(too_large)}}
            )
        except (ValueError, codec.MalformedActivity):
            return _error(400, "BadArgument", "The body is not an activity.")
        try:
            verifier.check_binding(
                verified, channel_id=str(activity.channel_id), service_url=activity.service_url
            )
        except InvalidToken as refused:
            return _unauthorized(refused.reason)
        if not self.service_urls.allows(activity.service_url):
            return _unauthorized("service_url_not_allowed")
        return await self._accept(host, inbox, activity, data)

    async def _accept(
        self, host: HostServices, inbox: Inbox, activity: Activity, data: Mapping[str, Any]
    ) -> Response:
        decided = codec.interpret(activity, addressing=self.addressing)
        user_id = decided.user_id if isinstance(decided, Inbound) else _native_id(activity)
        references = pushes.reference_records(
            self.name, codec.reference_of(activity), user_id=user_id, now=host.now()
        )
        is_invoke = activity.type == ActivityTypes.invoke
        wanted = isinstance(decided, Inbound) or (
            isinstance(decided, Greeting) and self.greeting is not None
        )
        try:
            if wanted:
                await inbox.accept(
                    codec.dedupe_key(activity),
                    activity.conversation.id,
                    {"activity": dict(data)},
                    put=references,
                )
            elif references:
                await host.store.put_channel_records(references)
        except InboxFull:
            return _error(503, "ServiceUnavailable", "Too many activities are waiting.")
        except Exception as error:
            # Not recorded, so not acknowledged: the connector retries a 503.
            log.error("activity not recorded", extra={"error_type": type(error).__name__})
            return _error(503, "ServiceUnavailable", "The bot cannot take this activity now.")
        if is_invoke:
            if isinstance(decided, Inbound):
                return JSONResponse(codec.card_invoke_response(_CARD_ACCEPTED))
            return _error(501, "NotImplemented", "This bot does not handle that invoke.")
        if not wanted:
            log.debug(
                "activity not for a turn",
                extra={
                    "activity_type": activity.type,
                    "reason": decided.reason.value if isinstance(decided, Ignored) else "greeting",
                },
            )
        return Response(status_code=200)

    # --- one activity ------------------------------------------------------------------

    async def _handle(self, job: Mapping[str, Any]) -> None:
        host, connector = self._host, self._connector
        assert host is not None and connector is not None
        activity = codec.parse(job.get("activity"))
        decided = codec.interpret(activity, addressing=self.addressing)
        reference = codec.reference_of(activity)
        if isinstance(decided, Greeting):
            if self.greeting:
                try:
                    await connector.send(
                        activity.service_url,
                        decided.conversation_id,
                        codec.message(reference, self.greeting, markdown=True),
                    )
                except ConnectorError as error:
                    log.warning("greeting not delivered", extra={"status": error.status})
            return
        if not isinstance(decided, Inbound):
            return
        inbound = decided
        await self._present_claims(host, inbound)
        request = codec.channel_request(
            inbound,
            channel=self.name,
            file_parts=await self._file_parts(host, inbound),
            conversation_scope=self.conversation_scope,
            multitask=self.multitask,
            stream=self.stream,
        )
        reply = Reply(
            connector,
            inbound,
            reference,
            # A command's answer is the host's, at once: no stream to open for it.
            stream=self.stream and not inbound.text.startswith("/"),
            stream_interval=self.stream_interval,
            informative_text=self.informative_text,
        )
        async with anyio.create_task_group() as tasks:
            await reply.open_stream()
            tasks.start_soon(reply.keep_typing, self.typing_delay)
            # A run the hook sends elsewhere comes back as a continuation token: the chat
            # gets a short acknowledgement, and the reply goes where it was sent.
            outcome = await host.run_or_continue(
                request, on_update=reply.on_update if reply.streams else None
            )
            tasks.cancel_scope.cancel()
        await _answer(reply, outcome)

    async def _present_claims(self, host: HostServices, inbound: Inbound) -> None:
        """Record a Teams user's tenant and object id as verified Entra claims, once per
        identity and process (the token vouched that Teams sent them)."""
        if not (
            self.entra_claims
            and inbound.channel_id == codec.TEAMS
            and inbound.aad_object_id
            and inbound.tenant_id
        ):
            return
        remembered = f"{inbound.tenant_id}/{inbound.aad_object_id}"
        if self._claimed.get(remembered):
            return
        identity: ChannelIdentity = inbound.identity(self.name)
        result = await host.link_verified_claims(
            identity,
            {"tid": inbound.tenant_id, "oid": inbound.aad_object_id},
            source=ENTRA_SOURCE,
        )
        log.debug("teams claims presented", extra={"reason": result.reason.value})
        self._claimed.put(remembered, True)

    # --- files ---------------------------------------------------------------------------

    async def _file_parts(self, host: HostServices, inbound: Inbound) -> list[ContentPart]:
        parts: list[ContentPart] = []
        records: list[ChannelRecord] = []
        now = host.now()
        for attachment in inbound.attachments:
            if self.public_url is None:
                parts.append(TextPart("[The user sent a file that cannot be shown here.]"))
                continue
            key = secrets.token_urlsafe(32)  # the URL is the capability: unguessable
            records.append(
                ChannelRecord(
                    self.name,
                    FILE,
                    key,
                    {"url": attachment.url, "media_type": attachment.media_type},
                    created_at=now,
                    expires_at=now + self.file_url_ttl_seconds,
                )
            )
            parts.append(
                UriPart(f"{self.public_url}{self.files_path}/{key}", attachment.media_type)
            )
        if records:
            await host.store.put_channel_records(records)
        return parts

    async def _serve_file(self, request: Request) -> Response:
        host, connector = self._host, self._connector
        if host is None or connector is None:
            return PlainTextResponse("Not found", status_code=404)
        key = request.path_params["file_key"]
        record = await host.store.get_channel_record(self.name, FILE, key)
        if record is None:
            return PlainTextResponse("Not found", status_code=404)
        if record.expires_at is not None and record.expires_at <= host.now():
            return PlainTextResponse("This link has expired", status_code=410)
        url, media_type = record.value.get("url"), record.value.get("media_type")
        if not isinstance(url, str) or not isinstance(media_type, str):
            return PlainTextResponse("Not found", status_code=404)
        try:
            upstream = await connector.open_file(url)
        except ConnectorError:
            return PlainTextResponse("The file is unavailable", status_code=502)
        if upstream.status_code != 200:
            await upstream.aclose()
            return PlainTextResponse("The file is unavailable", status_code=502)
        headers = {
            "x-content-type-options": "nosniff",
            "content-security-policy": "sandbox",
            "cache-control": "private, max-age=60",
        }
        return StreamingResponse(
            _capped(upstream, self.max_file_bytes),
            media_type=media_type,
            headers=headers,
            background=BackgroundTask(upstream.aclose),
        )


async def _answer(reply: Reply, outcome: TurnOutcome | ContinuationToken) -> None:
    said = chat_replies.reply_for(outcome)
    if said is None:
        return
    if said.markdown:
        await reply.send_markdown(said.text)
    else:
        await reply.send_plain(said.text)


def _native_id(activity: Activity) -> str | None:
    sender = activity.from_property
    if codec.channel_of(activity) == codec.TEAMS and sender.aad_object_id:
        return sender.aad_object_id
    return sender.id


def _unauthorized(reason: str) -> Response:
    # The reason is a short code; the token and its claims are never logged.
    log.warning("activity refused: token not valid", extra={"reason": reason})
    return _error(401, "Unauthorized", "The request is not authorized.")


def _error(status: int, code: str, message: str) -> Response:
    # The Bot Framework's ErrorResponse shape.
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _capped(upstream: httpx.Response, limit: int) -> AsyncIterator[bytes]:
    sent = 0
    async for chunk in upstream.aiter_raw():
        sent += len(chunk)
        if sent > limit:
            return
        yield chunk
