"""Inbound token validation against the fake Bot Framework issuer: every way a token can be
wrong is a 401, the target never runs and nothing is recorded; the JWKS is cached and
refreshed only as the rules allow. Under asyncio or trio (``AGENTHOST_TEST_BACKEND``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.channels.activity.conftest import TIMEOUT, Bot, Recorder, activity_host, bot_framework
from tests.channels.activity.fake_bot_framework import (
    APP_ID,
    FakeChannelService,
    IssuerKey,
    rsa_key,
)
from tests.channels.activity.teams_activities import message, new_user, personal_conversation
from tests.channels.activity.tls import LoopbackCertificate

pytestmark = pytest.mark.anyio

Case = Callable[[FakeChannelService, dict[str, Any]], tuple[str | None, dict[str, Any]]]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_with_public_key(service: FakeChannelService) -> str:
    """The classic confusion: an HMAC token keyed with the issuer's public key."""
    key = service.keys[0]
    public = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    claims = {
        "iss": "https://api.botframework.com",
        "aud": APP_ID,
        "serviceurl": service.service_url,
        "exp": int(time.time()) + 3600,
    }
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"Bearer {header}.{payload}.{_b64(signature)}"


def _unsigned(service: FakeChannelService) -> str:
    claims = {
        "iss": "https://api.botframework.com",
        "aud": APP_ID,
        "serviceurl": service.service_url,
        "exp": int(time.time()) + 3600,
    }
    return "Bearer " + jwt.encode(
        claims, None, algorithm="none", headers={"kid": service.keys[0].kid}
    )


def _bearer(token: str) -> str:
    return f"Bearer {token}"


BAD_TOKENS: dict[str, Case] = {
    "no authorization header": lambda s, a: (None, a),
    "not a bearer token": lambda s, a: ("Basic " + _b64(b"user:pass"), a),
    "not a JWT": lambda s, a: ("Bearer not.a.jwt", a),
    "unsigned (alg none)": lambda s, a: (_unsigned(s), a),
    "HS256 keyed with the public key": lambda s, a: (_hs256_with_public_key(s), a),
    "RS512 instead of RS256": lambda s, a: (_bearer(s.token(algorithm="RS512")), a),
    "unknown key id": lambda s, a: (
        _bearer(s.token(key=IssuerKey("kid-nobody", rsa_key(), ["msteams"]))),
        a,
    ),
    "signed by another key": lambda s, a: (_bearer(s.token(signing_key=rsa_key())), a),
    "wrong issuer": lambda s, a: (_bearer(s.token(iss="https://api.botframework.example")), a),
    "wrong audience": lambda s, a: (
        _bearer(s.token(aud="00000000-1111-2222-3333-444444444444")),
        a,
    ),
    "no audience": lambda s, a: (_bearer(s.token(drop=("aud",))), a),
    "expired beyond the skew": lambda s, a: (_bearer(s.token(lifetime=-400)), a),
    "not valid yet beyond the skew": lambda s, a: (
        _bearer(s.token(nbf=int(time.time()) + 400)),
        a,
    ),
    "no expiry": lambda s, a: (_bearer(s.token(drop=("exp",))), a),
    "key not endorsed for the channel": lambda s, a: (
        _bearer(s.token(key=next(k for k in s.keys if k.endorsements == ["webchat"]))),
        a,
    ),
    "serviceurl claim differs": lambda s, a: (
        _bearer(s.token(serviceurl="https://smba.trafficmanager.net/emea/")),
        a,
    ),
    "no serviceurl claim": lambda s, a: (_bearer(s.token(drop=("serviceurl",))), a),
    "emulator token while the emulator is off": lambda s, a: (
        _bearer(
            s.token(iss="https://login.microsoftonline.com/tenant-1/v2.0", ver="2.0", azp=APP_ID)
        ),
        a,
    ),
    "service URL outside the allowlist": lambda s, a: (
        _bearer(s.token(serviceurl="http://127.0.0.2:9/amer/")),
        {**a, "serviceUrl": "http://127.0.0.2:9/amer/"},
    ),
}


async def _nothing_recorded(bot: Bot) -> None:
    store = bot.host.store
    for kind in ("ref", "inbox", "seen", "personal"):
        assert await store.list_channel_records("activity", kind) == [], kind


async def test_every_bad_token_is_401_and_nothing_runs(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    target = Recorder()
    with anyio.fail_after(TIMEOUT * 2):
        async with bot_framework(certificate) as services:
            services.service.rotate(("webchat",))  # a published key that may not sign msteams
            async with activity_host(target, tmp_path, services) as bot:
                url = services.service.service_url
                for name, case in BAD_TOKENS.items():
                    activity = message(ada, chat, f"attack: {name}", service_url=url)
                    authorization, activity = case(services.service, activity)
                    response = await bot.post(activity, authorization=authorization)
                    assert response.status_code == 401, name
                    assert response.json() == {
                        "error": {
                            "code": "Unauthorized",
                            "message": "The request is not authorized.",
                        }
                    }, name
                await bot.idle()
                assert target.calls == []
                assert services.service.received == []
                assert services.entra.token_requests == []  # the bot never even got a token
                await _nothing_recorded(bot)

                # The same activity with a good token runs: the refusals were the tokens'.
                [answer] = await bot.exchange(message(ada, chat, "hello", service_url=url))
                assert target.calls == [["hello"]] and answer.text == "hello"


async def test_a_bad_body_is_400_after_a_good_token(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(target, tmp_path, services) as bot,
        ):
            token = f"Bearer {services.service.token()}"
            for body in (b"not json", b"[]", b'{"type": "message"}', b'{"type": ""}'):
                response = await bot.client.post(
                    bot.channel.path,
                    content=body,
                    headers={"authorization": token, "content-type": "application/json"},
                )
                assert response.status_code == 400, body
                assert response.json()["error"]["code"] == "BadArgument"
            # An unverified body is never parsed: a bad token on a bad body is still 401.
            refused = await bot.client.post(bot.channel.path, content=b"not json")
            assert refused.status_code == 401
            assert target.calls == []


async def test_clock_skew_of_five_minutes_is_tolerated(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(target, tmp_path, services) as bot,
        ):
            url, service = services.service.service_url, services.service
            late = await bot.post(
                message(ada, chat, "late", service_url=url), token=service.token(lifetime=-200)
            )
            early = await bot.post(
                message(ada, chat, "early", service_url=url),
                token=service.token(nbf=int(time.time()) + 200),
            )
            assert late.status_code == 200 and early.status_code == 200
            await service.wait_until(lambda: len(service.messages_to(chat["id"])) == 2)
            await bot.idle()
            assert sorted(c[-1] for c in target.calls) == ["early", "late"]


async def test_signing_keys_are_cached_and_refreshed_only_as_allowed(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    target = Recorder(reply=lambda text: "ok")
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(target, tmp_path, services, key_refresh_interval=2.0) as bot,
        ):
            url, service = services.service.service_url, services.service
            for index in range(5):
                response = await bot.post(message(ada, chat, f"m{index}", service_url=url))
                assert response.status_code == 200
            assert service.key_fetches == 1  # cached after the first

            # A burst of invented key ids costs at most one more fetch.
            for index in range(10):
                forged = IssuerKey(f"kid-forged-{index}", rsa_key(), ["msteams"])
                response = await bot.post(
                    message(ada, chat, "forged", service_url=url), token=service.token(key=forged)
                )
                assert response.status_code == 401
            assert service.key_fetches <= 2

            # A rotated key is picked up once the refresh interval allows it.
            await anyio.sleep(2.1)
            rotated = service.rotate()
            response = await bot.post(
                message(ada, chat, "rotated", service_url=url), token=service.token(key=rotated)
            )
            assert response.status_code == 200
            await bot.idle()
            assert ["rotated"] in [c[-1:] for c in target.calls]
            assert all(c[-1] != "forged" for c in target.calls)


async def test_emulator_tokens_only_when_enabled(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with bot_framework(certificate) as services:
            service = services.service
            async with activity_host(
                target,
                tmp_path,
                services,
                allow_emulator=True,
                emulator_metadata_url=service.metadata_url,
            ) as bot:
                url = service.service_url
                v2 = service.token(
                    iss="https://login.microsoftonline.com/tenant-1/v2.0",
                    ver="2.0",
                    azp=APP_ID,
                    drop=("serviceurl",),
                )
                v1_other_app = service.token(
                    iss="https://sts.windows.net/tenant-1/",
                    ver="1.0",
                    appid="another-app",
                    drop=("serviceurl",),
                )
                refused = await bot.post(
                    message(ada, chat, "x", service_url=url), token=v1_other_app
                )
                assert refused.status_code == 401
                ok = await bot.post(
                    message(ada, chat, "from the emulator", service_url=url), token=v2
                )
                assert ok.status_code == 200
                await service.wait_until(lambda: bool(service.messages_to(chat["id"])))
                await bot.idle()
                assert target.calls == [["from the emulator"]]


async def test_activities_arriving_during_the_first_key_fetch_wait_for_it(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    target = Recorder(reply=lambda text: "ok")
    statuses: list[int] = []
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(target, tmp_path, services) as bot,
        ):
            url, service = services.service.service_url, services.service
            service.jwks_delay = 0.5  # the issuer answers slowly

            async def post_one(index: int) -> None:
                user, chat = new_user(), personal_conversation()
                response = await bot.post(message(user, chat, f"m{index}", service_url=url))
                statuses.append(response.status_code)

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(post_one, 0)
                # The first activity's fetch is under way; these arrive while it runs.
                await service.wait_until(lambda: service.key_fetches == 1)
                for index in range(1, 12):
                    tasks.start_soon(post_one, index)
            assert statuses == [200] * 12
            assert service.key_fetches == 1
            await bot.idle()
            assert len(target.calls) == 12
