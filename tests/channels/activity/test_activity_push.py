"""Pushing to Teams through stored conversation references, end to end.

A proactive message after a restart (the reference read back from SQLite by a new host),
a cross-channel answer with its echo, the Bot Connector's 429 (``Retry-After``) and 5xx
retried through the outbox, 403 (uninstalled) dead-lettered with its reason, and long
messages split. Also: a Teams user's tenant and object id satisfy a
``LinkedClaimAllowlist``. Under asyncio or trio (``AGENTHOST_TEST_BACKEND``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from agenthost import ChannelIdentity, Host
from agenthost.backends.linking import OneTimeCodeLinker
from agenthost.channels.invocations import InvocationsChannel
from agenthost.sansio_core.authorization import LinkedClaimAllowlist
from agenthost.sansio_core.delivery import Delivery, DeliveryStatus, RetryPolicy
from agenthost.sansio_core.types import ResponseTarget
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.activity.conftest import (
    TIMEOUT,
    Bot,
    Recorder,
    activity_host,
    bot_framework,
)
from tests.channels.activity.teams_activities import (
    TENANT,
    message,
    new_user,
    personal_conversation,
)
from tests.channels.activity.tls import LoopbackCertificate

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(max_attempts=4, base_seconds=0.05, cap_seconds=0.2)
CODE = re.compile(r"/link ([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})")


async def settled(host: Host, count: int) -> list[Delivery]:
    """Until ``count`` deliveries exist and none is still on its way."""
    moving = {DeliveryStatus.SCHEDULED, DeliveryStatus.SENDING, DeliveryStatus.FAILED}
    with anyio.fail_after(TIMEOUT):
        while True:
            found = await host.list_deliveries()
            if len(found) >= count and not any(d.status in moving for d in found):
                return found
            await anyio.sleep(0.02)


async def isolation_key_of(bot: Bot, native_id: str) -> str:
    context = await bot.host.store.load_context(ChannelIdentity("activity", native_id), None)
    assert context.isolation_key is not None
    return context.isolation_key


async def test_a_proactive_message_reaches_teams_after_a_restart(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    database = tmp_path / "state.db"
    with anyio.fail_after(TIMEOUT * 2):
        async with bot_framework(certificate) as services:
            url = services.service.service_url
            async with activity_host(
                Recorder(), tmp_path, services, store=SQLiteStore(database)
            ) as first:
                await first.exchange(message(ada, chat, "hello", service_url=url))
                key = await isolation_key_of(first, ada.aad_object_id)
            tokens_before = len(services.entra.token_requests)

            # A new process: a new host, channel and store object over the same database.
            async with activity_host(
                Recorder(),
                tmp_path,
                services,
                store=SQLiteStore(database),
                host_options={"delivery_retry": FAST_RETRY},
            ) as second:
                scheduled = await second.host.deliver(
                    isolation_key=key,
                    message="Your **report** is ready.",
                    target=ResponseTarget.channel("activity"),
                )
                assert len(scheduled) == 1
                [delivered] = await settled(second.host, 1)
                assert delivered.status is DeliveryStatus.DELIVERED
                pushed = services.service.messages_to(chat["id"])[-1]
                assert pushed.text == "Your **report** is ready."
                assert pushed.activity["textFormat"] == "markdown"
                assert pushed.activity["recipient"]["id"] == ada.id
                assert pushed.reply_to is None
                # The new process fetched its own token for the connector.
                assert len(services.entra.token_requests) == tokens_before + 1


async def test_a_background_answer_from_invocations_is_pushed_to_teams_after_its_echo(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()

    def trusted(request: Any, identity: ChannelIdentity) -> bool:
        return bool(request is not None and request.headers.get("x-test-trusted") == "yes")

    with anyio.fail_after(TIMEOUT * 2):
        async with (
            bot_framework(certificate) as services,
            activity_host(
                Recorder(),
                tmp_path,
                services,
                channels=(InvocationsChannel(trust_platform_headers=True, session_keys="host"),),
                host_options={
                    "linker": OneTimeCodeLinker(),
                    "trust_wire_targets": trusted,
                    "delivery_retry": FAST_RETRY,
                },
            ) as bot,
        ):
            url = services.service.service_url
            headers = {"x-agent-user-id": "inv-ada", "x-test-trusted": "yes"}
            [shown] = await bot.exchange(message(ada, chat, "/link", service_url=url))
            code = CODE.search(shown.text)
            assert code is not None, shown.text
            linked = await bot.client.post(
                "/invocations/invoke", json={"input": f"/link {code[1]}"}, headers=headers
            )
            assert linked.json()["output"].startswith("Linked"), linked.text

            before = len(services.service.messages_to(chat["id"]))
            accepted = await bot.client.post(
                "/invocations/invoke",
                json={
                    "input": "ping",
                    "response_target": {
                        "kind": "channel",
                        "channels": ["activity"],
                        "echo_input": True,
                    },
                },
                headers=headers,
            )
            assert accepted.status_code == 202, accepted.text
            [delivery] = await settled(bot.host, 1)
            assert delivery.status is DeliveryStatus.DELIVERED
            echo, answer = services.service.messages_to(chat["id"])[before:]
            assert echo.text == "You, via Invocations: ping"
            assert echo.activity["textFormat"] == "plain"
            assert echo.activity["channelData"] == {"notification": {"alert": False}}
            assert answer.text == "ping"
            assert "channelData" not in answer.activity


async def test_a_rate_limited_push_is_retried_after_retry_after(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(
                Recorder(), tmp_path, services, host_options={"delivery_retry": FAST_RETRY}
            ) as bot,
        ):
            service = services.service
            await bot.exchange(message(ada, chat, "hello", service_url=service.service_url))
            service.fail(chat["id"], 429, retry_after=1)
            await bot.host.deliver(
                isolation_key=await isolation_key_of(bot, ada.aad_object_id),
                message="after the limit",
                target=ResponseTarget.channel("activity"),
            )
            [delivered] = await settled(bot.host, 1)
            assert delivered.status is DeliveryStatus.DELIVERED
            assert delivered.attempts == 2
            [limited] = service.refused
            sent = service.messages_to(chat["id"])[-1]
            assert limited.status == 429 and sent.text == "after the limit"
            assert sent.at - limited.at >= 0.95  # the backoff alone would be under 0.2 s


async def test_gateway_errors_are_retried(tmp_path: Path, certificate: LoopbackCertificate) -> None:
    ada, chat = new_user(), personal_conversation()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(
                Recorder(), tmp_path, services, host_options={"delivery_retry": FAST_RETRY}
            ) as bot,
        ):
            service = services.service
            await bot.exchange(message(ada, chat, "hello", service_url=service.service_url))
            service.fail(chat["id"], 502)
            service.fail(chat["id"], 412)
            await bot.host.deliver(
                isolation_key=await isolation_key_of(bot, ada.aad_object_id),
                message="eventually",
                target=ResponseTarget.channel("activity"),
            )
            [delivered] = await settled(bot.host, 1)
            assert delivered.status is DeliveryStatus.DELIVERED
            assert delivered.attempts == 3
            assert [r.status for r in service.refused] == [502, 412]


async def test_a_push_to_an_uninstalled_bot_is_dead_at_once(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(
                Recorder(), tmp_path, services, host_options={"delivery_retry": FAST_RETRY}
            ) as bot,
        ):
            service = services.service
            await bot.exchange(message(ada, chat, "hello", service_url=service.service_url))
            service.gone.add(chat["id"])
            key = await isolation_key_of(bot, ada.aad_object_id)
            await bot.host.deliver(
                isolation_key=key, message="still there?", target=ResponseTarget.channel("activity")
            )
            [dead] = await settled(bot.host, 1)
            assert dead.status is DeliveryStatus.DEAD
            assert dead.attempts == 1
            assert dead.last_error is not None
            assert "403" in dead.last_error and "BotNotInConversationRoster" in dead.last_error

            # Reinstalled, a replay delivers it.
            service.gone.discard(chat["id"])
            await bot.host.replay_delivery(dead.delivery_id)
            [again] = await settled(bot.host, 1)
            assert again.status is DeliveryStatus.DELIVERED
            assert service.messages_to(chat["id"])[-1].text == "still there?"


async def test_a_long_push_is_split_under_the_size_limit(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    paragraphs = [f"Paragraph {i}: " + "word " * 3000 for i in range(12)]  # ~180 KB
    text = "\n\n".join(p.strip() for p in paragraphs)
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(
                Recorder(), tmp_path, services, host_options={"delivery_retry": FAST_RETRY}
            ) as bot,
        ):
            service = services.service
            await bot.exchange(message(ada, chat, "hello", service_url=service.service_url))
            await bot.host.deliver(
                isolation_key=await isolation_key_of(bot, ada.aad_object_id),
                message=text,
                target=ResponseTarget.channel("activity"),
            )
            await settled(bot.host, 1)
            parts = [m.text for m in service.messages_to(chat["id"])[1:]]
            assert len(parts) == 3
            assert all(len(p.encode("utf-16-le")) // 2 <= 80_000 for p in parts)
            assert "\n\n".join(parts) == text  # cut at paragraph breaks, nothing lost


async def test_a_teams_tenant_satisfies_a_linked_claim_allowlist(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    outsider, outsider_chat = new_user("Mallory"), personal_conversation()
    outsider_chat["tenantId"] = "11111111-2222-3333-4444-555555555555"
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(
                target,
                tmp_path,
                services,
                host_options={"allowlist": LinkedClaimAllowlist("tid", [TENANT])},
            ) as bot,
        ):
            url = services.service.service_url
            [answer] = await bot.exchange(message(ada, chat, "hello", service_url=url))
            assert answer.text == "hello"
            other = message(outsider, outsider_chat, "let me in", service_url=url)
            other["channelData"] = {"tenant": {"id": outsider_chat["tenantId"]}}
            [refusal] = await bot.exchange(other)
            assert refusal.text == "Sorry, this agent is not available to you."  # bland
            assert target.calls == [["hello"]]

            # An Entra sign-in elsewhere proving the same person joins the Teams user.
            web = ChannelIdentity("web", "web-user-1")
            linked = await bot.host.link_verified_claims(
                web, {"tid": TENANT, "oid": ada.aad_object_id}, source="entra"
            )
            assert linked.linked
            assert linked.isolation_key == await isolation_key_of(bot, ada.aad_object_id)


async def test_a_vanished_conversation_is_a_dead_letter(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(
                Recorder(), tmp_path, services, host_options={"delivery_retry": FAST_RETRY}
            ) as bot,
        ):
            service = services.service
            await bot.exchange(message(ada, chat, "hello", service_url=service.service_url))
            service.fail(chat["id"], 404)
            await bot.host.deliver(
                isolation_key=await isolation_key_of(bot, ada.aad_object_id),
                message="anyone?",
                target=ResponseTarget.channel("activity"),
            )
            [dead] = await settled(bot.host, 1)
            assert dead.status is DeliveryStatus.DEAD and dead.attempts == 1
            assert dead.last_error is not None and "404" in dead.last_error


async def test_a_stored_reference_never_sends_the_token_to_a_host_off_the_allowlist(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(
                Recorder(), tmp_path, services, host_options={"delivery_retry": FAST_RETRY}
            ) as bot,
        ):
            service = services.service
            await bot.exchange(message(ada, chat, "hello", service_url=service.service_url))
            # Someone with write access to the store points the reference elsewhere.
            store = bot.host.store
            record = await store.get_channel_record("activity", "ref", chat["id"])
            assert record is not None
            tampered = attrs.evolve(
                record, value={**record.value, "serviceUrl": "http://127.0.0.2:9/amer/"}
            )
            await store.put_channel_records([tampered])
            await bot.host.deliver(
                isolation_key=await isolation_key_of(bot, ada.aad_object_id),
                message="secret plans",
                target=ResponseTarget.channel("activity"),
            )
            [dead] = await settled(bot.host, 1)
            assert dead.status is DeliveryStatus.DEAD
            # Refused before any connection: permanent at once, not a network error retried.
            assert dead.attempts == 1
            assert dead.last_error is not None and "not allowed" in dead.last_error
