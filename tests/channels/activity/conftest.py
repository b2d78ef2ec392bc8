"""The Activity end-to-end harness: the fake Bot Framework (token issuer and connector),
the fake Entra token endpoint (https) and a host, all really served on loopback.

The host trusts the loopback certificate through ``SSL_CERT_FILE`` (read by httpx when the
host creates its client). The channel's base URLs point at the fakes: the OpenID metadata,
Entra's authority host and the allowed service URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest
from cryptography import x509

from agenthost import Host, HostMessage
from agenthost.channels.activity import ActivityChannel
from agenthost.stores.base import Store
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.activity.fake_bot_framework import (
    APP_ID,
    APP_SECRET,
    FakeChannelService,
    FakeEntra,
    Received,
)
from tests.channels.activity.tls import LoopbackCertificate, loopback_certificate, served_tls
from tests.served import served

TIMEOUT = 30.0


@pytest.fixture
def certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LoopbackCertificate:
    made = loopback_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(made.certfile))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return made


@attrs.define
class Services:
    service: FakeChannelService
    entra: FakeEntra


@asynccontextmanager
async def bot_framework(
    certificate: LoopbackCertificate, *, app_certificate: x509.Certificate | None = None
) -> AsyncIterator[Services]:
    """The fakes, served; ``app_certificate``: the app authenticates with it, not a secret."""
    service = FakeChannelService()
    entra = FakeEntra(service, certificate=app_certificate)
    async with (
        served(service.app) as service_url,
        served_tls(entra.app, certificate) as entra_url,
    ):
        service.base_url, entra.base_url = service_url, entra_url
        yield Services(service, entra)


def make_channel(services: Services, **options: Any) -> ActivityChannel:
    settings: dict[str, Any] = {
        "app_secret": APP_SECRET,
        "openid_metadata_url": services.service.metadata_url,
        "authority_host": services.entra.base_url,
        "service_urls": [services.service.base_url],
        "typing_delay": 5.0,  # no typing indicators unless a test wants them
        "stream": False,
    }
    settings.update(options)
    return ActivityChannel(APP_ID, **settings)


@attrs.define
class Bot:
    host: Host
    channel: ActivityChannel
    services: Services
    client: httpx.AsyncClient

    @property
    def service(self) -> FakeChannelService:
        return self.services.service

    async def post(
        self, activity: Mapping[str, Any], *, token: str | None = None, authorization: Any = ...
    ) -> httpx.Response:
        """POST an activity the way the connector does (a fresh valid token by default)."""
        headers: dict[str, str] = {}
        if authorization is ...:
            headers["authorization"] = f"Bearer {token or self.service.token()}"
        elif authorization is not None:
            headers["authorization"] = authorization
        return await self.client.post(self.channel.path, json=dict(activity), headers=headers)

    async def idle(self) -> None:
        with anyio.fail_after(TIMEOUT):
            await self.channel.wait_idle()

    async def exchange(self, activity: Mapping[str, Any], count: int = 1) -> list[Received]:
        """Post an activity; the ``count`` messages the bot sent into its conversation."""
        conversation = activity["conversation"]["id"]
        before = len(self.service.messages_to(conversation))
        response = await self.post(activity)
        assert response.status_code == 200, response.text
        await self.service.wait_until(
            lambda: len(self.service.messages_to(conversation)) >= before + count
        )
        await self.idle()
        return self.service.messages_to(conversation)[before:]


@asynccontextmanager
async def activity_host(
    target: Any,
    tmp_path: Path,
    services: Services,
    *,
    store: Store | None = None,
    host_options: Mapping[str, Any] | None = None,
    channels: tuple[Any, ...] = (),
    **channel_options: Any,
) -> AsyncIterator[Bot]:
    channel = make_channel(services, **channel_options)
    host = Host(
        target,
        channels=[*channels, channel],
        store=store or SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
        **dict(host_options or {}),
    )
    async with (
        served(host.app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client,
    ):
        yield Bot(host, channel, services, client)


class Recorder:
    """A callable target answering ``reply(text)`` (default: the user's words so far), and
    recording each call's message texts."""

    def __init__(self, reply: Any = None) -> None:
        self.calls: list[list[str]] = []
        self.inputs: list[list[HostMessage]] = []
        self._reply = reply

    async def __call__(self, messages: list[HostMessage]) -> str:
        self.calls.append([m.text for m in messages])
        self.inputs.append(list(messages))
        if self._reply is not None:
            return str(self._reply(messages[-1].text))
        return " | ".join(m.text for m in messages if m.role == "user")
