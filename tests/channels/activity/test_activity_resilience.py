"""The Activity channel when things go wrong, or differently: a stream the user stopped, a
rate-limited reply, a crash between the acknowledgement and the answer, a full inbox, a
wrong credential, and a single-tenant bot authenticating with a certificate. Under asyncio
or trio (``AGENTHOST_TEST_BACKEND``)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from agenthost import HostMessage
from agenthost.channels.activity import Certificate
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.activity.conftest import TIMEOUT, Recorder, activity_host, bot_framework
from tests.channels.activity.fake_bot_framework import APP_ID
from tests.channels.activity.teams_activities import (
    group_conversation,
    message,
    new_user,
    personal_conversation,
)
from tests.channels.activity.tls import LoopbackCertificate

pytestmark = pytest.mark.anyio


async def test_a_stream_the_user_stopped_ends_with_an_ordinary_message(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()

    async def streaming(messages: list[HostMessage]) -> AsyncIterator[str]:
        for piece in ("first", " second", " third"):
            yield piece
            await anyio.sleep(0.6)

    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(streaming, tmp_path, services, stream=True, stream_interval=0.5) as bot,
        ):
            service = services.service
            service.stopped_streams.add(chat["id"])  # the user presses Stop at once
            await bot.exchange(message(ada, chat, "go", service_url=service.service_url))
            [informative, final] = service.sent_to(chat["id"])
            assert (informative.stream_info or {}).get("streamType") == "informative"
            [refused] = service.refused  # the first chunk; no more were tried
            assert refused.status == 403
            assert final.type == "message" and final.stream_info is None
            assert final.text == "first second third"


async def test_a_rate_limited_reply_is_retried_after_retry_after(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), group_conversation()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(Recorder(), tmp_path, services) as bot,
        ):
            service = services.service
            service.fail(chat["id"], 429, retry_after=0.4)
            [answer] = await bot.exchange(
                message(ada, chat, "busy?", service_url=service.service_url, mention_bot=True)
            )
            [limited] = service.refused
            assert limited.status == 429
            assert answer.text == "busy?"
            assert answer.at - limited.at >= 0.38


async def test_an_activity_acknowledged_before_a_crash_is_answered_after_the_restart(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    database = tmp_path / "state.db"
    started = anyio.Event()

    async def stuck(messages: list[HostMessage]) -> str:
        started.set()
        await anyio.sleep_forever()
        return "never"

    answered = Recorder(reply=lambda text: f"answered: {text}")
    with anyio.fail_after(TIMEOUT * 2):
        async with bot_framework(certificate) as services:
            url = services.service.service_url
            async with activity_host(
                stuck,
                tmp_path,
                services,
                store=SQLiteStore(database),
                host_options={"shutdown_grace_seconds": 0.2},
            ) as first:
                response = await first.post(message(ada, chat, "are you there?", service_url=url))
                assert response.status_code == 200  # recorded: the connector will not resend
                await started.wait()
            # The process stopped mid-turn; the activity is still in the inbox.
            assert services.service.messages_to(chat["id"]) == []
            async with activity_host(
                answered, tmp_path, services, store=SQLiteStore(database)
            ) as second:
                await services.service.wait_until(
                    lambda: bool(services.service.messages_to(chat["id"]))
                )
                await second.idle()
                [reply] = services.service.messages_to(chat["id"])
                assert reply.text == "answered: are you there?"
                assert answered.calls == [["are you there?"]]
                assert await second.host.store.list_channel_records("activity", "inbox") == []


async def test_a_full_inbox_answers_503_so_the_connector_retries(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada = new_user()
    release = anyio.Event()

    async def slow(messages: list[HostMessage]) -> str:
        await release.wait()
        return "done"

    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(slow, tmp_path, services, max_pending=1) as bot,
        ):
            url = services.service.service_url
            first = await bot.post(message(ada, personal_conversation(), "one", service_url=url))
            assert first.status_code == 200
            second = await bot.post(message(ada, personal_conversation(), "two", service_url=url))
            assert second.status_code == 503
            assert second.json()["error"]["code"] == "ServiceUnavailable"
            release.set()
            await bot.idle()
            again = await bot.post(message(ada, personal_conversation(), "three", service_url=url))
            assert again.status_code == 200


async def test_a_refused_credential_sends_nothing_and_breaks_nothing(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(target, tmp_path, services, app_secret="the-wrong-secret") as bot,
        ):
            url = services.service.service_url
            response = await bot.post(message(ada, chat, "hello", service_url=url))
            assert response.status_code == 200
            await bot.idle()
            assert target.calls == [["hello"]]  # the turn ran; only the answer could not go
            assert services.entra.token_requests and services.entra.issued == 0
            assert services.service.received == []


def _app_certificate() -> tuple[x509.Certificate, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agenthost test bot")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return certificate, pem


async def test_a_single_tenant_bot_authenticates_with_a_certificate(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    app_certificate, pem = _app_certificate()
    thumbprint = app_certificate.fingerprint(hashes.SHA1()).hex().upper()
    tenant = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate, app_certificate=app_certificate) as services,
            activity_host(
                Recorder(),
                tmp_path,
                services,
                app_secret=None,
                certificate=Certificate(pem, thumbprint),
                tenant_id=tenant,
            ) as bot,
        ):
            [answer] = await bot.exchange(
                message(ada, chat, "hello", service_url=services.service.service_url)
            )
            assert answer.text == "hello"
            [grant] = services.entra.token_requests
            assert grant["tenant"] == tenant
            assert grant["client_id"] == APP_ID
            assert "client_assertion" in grant and "client_secret" not in grant
            assert pem not in repr(bot.channel) and "PRIVATE" not in repr(Certificate(pem, "x"))
