"""Push notifications: the configs callers set, which URLs may be called, and the sends.

A task's push configs turn its status changes into deliveries through the host's
durable outbox: each notification is one ``Delivery`` (its id, stable across retries,
is also sent as ``idempotency-key``) plus a ``push`` record holding the URL, headers and
body, written before the delivery is scheduled. The outbox's worker calls
:meth:`Pushes.send` with it, retries transient failures with backoff and parks
permanent ones as dead letters, so a notification is delivered at least once.

SSRF: a push URL must be http(s), and unless the channel allows private targets every
address its host resolves to must be public (no loopback, private, link-local,
reserved, multicast or unspecified address). The check runs when the config is set and
again before every send, since a name may resolve elsewhere later.

Credentials the caller gave (``authentication`` -> ``Authorization: {scheme}
{credentials}``, ``token`` -> ``X-A2A-Notification-Token``) are stored with the config
and never logged.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import httpx
from a2a.types import a2a_pb2 as pb
from a2a.utils import errors
from google.protobuf import json_format

from agenthost.backends.channel import HostServices
from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.channels.a2a import codec
from agenthost.channels.a2a.codec import Generation
from agenthost.channels.a2a.records import PUSH, PUSH_CONFIG, TaskRecords
from agenthost.channels.webhook import classify_response
from agenthost.sansio_core.delivery import Delivery, RetryPolicy
from agenthost.sansio_core.types import ChannelIdentity
from agenthost.stores.base import ChannelRecord

log = logging.getLogger("agenthost.channels.a2a")

TOKEN_HEADER = "X-A2A-Notification-Token"  # noqa: S105 - a header name
IDEMPOTENCY_HEADER = "idempotency-key"
MAX_URL_LENGTH = 2048


class PushTargetRefused(Exception):
    """The URL may not be called (its scheme, or an address that is not public)."""


def address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_global) and not ip.is_multicast


async def check_push_url(url: str, *, allow_private: bool) -> None:
    """Raise :class:`PushTargetRefused` unless ``url`` may be called (see the module)."""
    if len(url) > MAX_URL_LENGTH:
        raise PushTargetRefused("url too long")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise PushTargetRefused("not a url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise PushTargetRefused("not an http(s) url")
    if allow_private:
        return
    host = parsed.host
    try:
        addresses = [host] if _is_ip(host) else await _resolve(host, parsed.port)
    except OSError:
        raise PushTargetRefused("host does not resolve") from None
    if not addresses or not all(address_is_public(a) for a in addresses):
        raise PushTargetRefused("not a public address")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _resolve(host: str, port: int | None) -> list[str]:
    infos = await anyio.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def config_key(task_id: str, config_id: str) -> str:
    # Fixed length after the task id, so deleting one config by key never touches another.
    return f"{task_id}:{hashlib.sha256(config_id.encode()).hexdigest()[:32]}"


def config_record(
    records: TaskRecords,
    config: Any,
    generation: Generation,
    owner: str | None,
    *,
    expires_at: float | None,
) -> ChannelRecord:
    return records.record(
        PUSH_CONFIG,
        config_key(config.task_id, config.id),
        {"config": codec.to_dict(config), "generation": generation},
        owner,
        expires_at=expires_at,
    )


def config_from_record(record: ChannelRecord) -> Any:
    config = pb.TaskPushNotificationConfig()
    json_format.ParseDict(dict(record.value["config"]), config, ignore_unknown_fields=True)
    return config


def notification_body(task: Any, generation: Generation) -> bytes:
    """v1.0: a ``StreamResponse`` holding the task; v0.3: the task itself."""
    if generation == codec.V03:
        body: Any = codec.render_task(task, codec.V03)
    else:
        body = codec.to_dict(pb.StreamResponse(task=task))
    return json.dumps(body, separators=(",", ":")).encode()


def notification_headers(config: Any) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if config.token:
        headers[TOKEN_HEADER] = config.token
    if config.HasField("authentication") and config.authentication.credentials:
        scheme = config.authentication.scheme or "Bearer"
        headers["authorization"] = f"{scheme} {config.authentication.credentials}"
    return headers


class Pushes:
    """Schedules a task's notifications and sends them when the outbox asks."""

    def __init__(
        self,
        *,
        channel: str,
        host: HostServices,
        records: TaskRecords,
        allow_private: bool,
        retry: RetryPolicy,
        timeout_seconds: float,
    ) -> None:
        self._channel = channel
        self._host = host
        self._records = records
        self._allow_private = allow_private
        self._retry = retry
        self._timeout = timeout_seconds

    async def notify(
        self,
        task: Any,
        *,
        caller: str,
        owner: str | None,
        number: int,
        configs: Sequence[ChannelRecord] | None = None,
    ) -> int:
        """Schedule one notification of ``task`` (as of event ``number``) per config
        (``configs`` as already read, or read here)."""
        if configs is None:
            configs = await self._records.push_configs(task.id)
        if not configs:
            return 0
        now = self._host.now()
        payloads: list[ChannelRecord] = []
        deliveries: list[Delivery] = []
        for record in configs:
            config = config_from_record(record)
            delivery_id = f"{self._channel}:{task.id}:{record.key[-32:]}:{number:08d}"
            payload: Mapping[str, Any] = {
                "url": config.url,
                "headers": {
                    **notification_headers(config),
                    IDEMPOTENCY_HEADER: delivery_id,
                },
                "body": notification_body(task, record.value["generation"]).decode(),
            }
            payloads.append(
                self._records.record(PUSH, delivery_id, payload, owner, expires_at=now + 86400)
            )
            deliveries.append(
                Delivery(
                    delivery_id=delivery_id,
                    isolation_key=owner or "",
                    channel=self._channel,
                    identity=ChannelIdentity(self._channel, caller),
                    conversation_id=task.id,
                    reply={"text": ""},
                    echo=None,
                    created_at=now,
                    retry=self._retry,
                    next_attempt_at=now,
                    updated_at=now,
                )
            )
        # The payload first: a delivery is never claimed before what it sends exists.
        await self._records.put(payloads)
        await self._host.store.schedule_deliveries(deliveries)
        return len(deliveries)

    async def send(self, message: PushMessage) -> PushOutcome:
        record = await self._records.get(PUSH, message.delivery_id)
        if record is None:
            # Not a task notification (a reply routed here by a response target): A2A
            # callers are reached only through the push configs they set.
            return PushOutcome.permanent("no task notification under this delivery id")
        url = str(record.value["url"])
        try:
            await check_push_url(url, allow_private=self._allow_private)
        except PushTargetRefused:
            return PushOutcome.permanent("push target refused")
        try:
            response = await self._host.http.post(
                url,
                content=str(record.value["body"]).encode(),
                headers=dict(record.value["headers"]),
                timeout=self._timeout,
                follow_redirects=False,
            )
        except httpx.HTTPError as error:
            return PushOutcome.transient(f"network: {type(error).__name__}")
        return classify_response(response)


def refused_config_error() -> errors.A2AError:
    return errors.InvalidParamsError("The push notification URL cannot be used.")
