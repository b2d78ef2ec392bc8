"""Every sample, served as its README serves it (``build_host()`` from its ``app.py``),
driven by the clients its README names; platform-bound ones against the test suite's fakes
of the platform. The replicas sample runs as real ``agenthost serve`` processes on
PostgreSQL (``AGENTHOST_TEST_POSTGRES``: skipped when unset, failing when unreachable).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest

from agenthost import Host
from tests.channels.telegram.conftest import fake_bot_api
from tests.channels.telegram.fake_bot_api import FakeBotApi
from tests.channels.telegram.telegram_updates import BOT_TOKEN, message, private_chat
from tests.served import served

pytestmark = pytest.mark.anyio

TIMEOUT = 30.0
CODE = re.compile(r"/link ([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})")
USER = 940_000_001


def sample_host(name: str) -> Host:
    module = importlib.import_module(f"samples.{name}.app")
    host = module.build_host()
    assert isinstance(host, Host)
    return host


@asynccontextmanager
async def telegram_sample(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str
) -> AsyncIterator[tuple[FakeBotApi, str]]:
    async with fake_bot_api() as (fake, api_url):
        for key, value in {
            "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
            "TELEGRAM_API_BASE_URL": api_url,
            "AGENTHOST_STATE_DIR": str(tmp_path),
            **env,
        }.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("TELEGRAM_WEBHOOK_URL", raising=False)
        async with served(sample_host(name).app) as base:
            await fake.wait_until(lambda: bool(fake.called("getUpdates")))
            yield fake, base


async def say(fake: FakeBotApi, text: str) -> str:
    """The user says ``text`` to the bot in their private chat; the bot's answer."""
    before = len(fake.sent_to(USER))
    fake.enqueue(message(fake.next_update_id(), user_id=USER, chat=private_chat(USER), text=text))
    await fake.wait_until(lambda: len(fake.sent_to(USER)) > before, timeout=TIMEOUT)
    return fake.sent_to(USER)[before].text


async def test_telegram_link_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with anyio.fail_after(TIMEOUT * 2):
        async with telegram_sample(
            "telegram_link", tmp_path, monkeypatch, RESPONSES_API_KEYS="k-alice=alice"
        ) as (fake, base):
            client = openai.AsyncOpenAI(
                api_key="k-alice", base_url=f"{base}/responses/v1", max_retries=0
            )
            unlinked = await client.responses.create(model="agenthost", input="what is 2 + 3")
            assert "5" in unlinked.output_text  # answered on the wire only
            assert (await say(fake, "hello")).startswith("You said")
            code = CODE.search(await say(fake, "/link"))
            assert code is not None
            linked = await client.responses.create(model="agenthost", input=f"/link {code[1]}")
            assert linked.output_text.startswith("Linked"), linked.output_text

            before = len(fake.sent_to(USER))
            asked = await client.responses.create(model="agenthost", input="what is 4 + 4")
            assert asked.background and asked.status == "queued"
            while asked.status in ("queued", "in_progress"):
                await anyio.sleep(0.05)
                asked = await client.responses.retrieve(asked.id)
            assert asked.status == "completed" and "8" in asked.output_text
            await fake.wait_until(lambda: len(fake.sent_to(USER)) >= before + 2, timeout=TIMEOUT)
            echo, answer = fake.sent_to(USER)[before : before + 2]
            assert echo.text == "You, via Responses: what is 4 + 4"
            assert "8" in answer.text
            await client.close()


async def test_scheduler_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with anyio.fail_after(TIMEOUT * 2):
        async with telegram_sample("scheduler", tmp_path, monkeypatch, REMINDER_SECONDS="0.3") as (
            fake,
            _,
        ):
            await say(fake, "remind me")
            await fake.wait_until(
                lambda: any(m.text == "Reminder: drink some water." for m in fake.sent_to(USER)),
                timeout=TIMEOUT,
            )
            other = USER + 1
            fake.enqueue(
                message(fake.next_update_id(), user_id=other, chat=private_chat(other), text="hi")
            )
            await fake.wait_until(lambda: bool(fake.sent_to(other)), timeout=TIMEOUT)
            reminders = len([m for m in fake.sent_to(USER) if m.text.startswith("Reminder")])
            await fake.wait_until(
                lambda: (
                    len([m for m in fake.sent_to(USER) if m.text.startswith("Reminder")])
                    > reminders
                ),
                timeout=TIMEOUT,
            )  # the schedule goes on...
            assert not [m for m in fake.sent_to(other) if m.text.startswith("Reminder")]


async def test_workflow_input_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTHOST_STATE_DIR", str(tmp_path))
    with anyio.fail_after(TIMEOUT):
        async with served(sample_host("workflow_input").app) as base:
            async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
                typed = await http.post(
                    "/invocations/invoke", json={"input": {"item": "apples", "quantity": 3}}
                )
                assert typed.status_code == 200, typed.text
                assert typed.json()["output"] == "3 apples cost 1.50."
            client = openai.AsyncOpenAI(api_key="x", base_url=f"{base}/responses/v1")
            chat = await client.responses.create(model="quotes", input="4 pears")
            assert chat.output_text == "4 pears cost 3.00."
            await client.close()


async def test_a2a_mcp_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx2
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client

    monkeypatch.setenv("AGENTHOST_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("AGENT_KEYS", "k-bob=bob")
    auth = {"authorization": "Bearer k-bob"}
    with anyio.fail_after(TIMEOUT):
        async with served(sample_host("a2a_mcp").app) as base:
            async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
                card = (await http.get("/.well-known/agent-card.json")).json()
                assert card["name"] == "demo agent"
                sent = await http.post("/a2a", headers=auth, json=_a2a("what is 2 + 3"))
                task: dict[str, Any] = sent.json()["result"]
                assert task["status"]["state"] == "completed", task
                assert "5" in str(task["artifacts"])
                refused = await http.post("/a2a", json=_a2a("hi"))
                assert refused.status_code in (401, 403) or "error" in refused.json()
            async with (
                httpx2.AsyncClient(headers=auth, timeout=httpx2.Timeout(TIMEOUT)) as mcp_http,
                Client(streamable_http_client(f"{base}/mcp", http_client=mcp_http)) as client,
            ):
                result = await client.call_tool("ask", {"message": "what is 3 + 4"})
                assert not result.is_error
                assert "7" in str(result.content)


async def test_discord_bot_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.channels.discord.conftest import fake_discord
    from tests.channels.discord.interactions import APPLICATION_ID, ask, new_user
    from tests.channels.discord.interactions import BOT_TOKEN as DISCORD_TOKEN

    with anyio.fail_after(TIMEOUT):
        async with fake_discord() as (fake, api_url):
            for key, value in {
                "DISCORD_APPLICATION_ID": APPLICATION_ID,
                "DISCORD_PUBLIC_KEY": fake.signer.public_key_hex,
                "DISCORD_BOT_TOKEN": DISCORD_TOKEN,
                "DISCORD_API_BASE_URL": api_url,
                "AGENTHOST_STATE_DIR": str(tmp_path),
            }.items():
                monkeypatch.setenv(key, value)
            async with served(sample_host("discord_bot").app) as base:
                fake.endpoint = f"{base}/discord/interactions"
                payload = ask("what is 2 + 3", user=new_user())
                assert (await fake.deliver(payload)).status_code == 200
                await fake_answer(fake, str(payload["id"]), "5")
                async with httpx.AsyncClient() as http:
                    unsigned = await http.post(fake.endpoint, json=payload)
                assert unsigned.status_code == 401


async def fake_answer(fake: Any, interaction: str, expected: str) -> None:
    """Until the interaction's reply (original and follow-ups) contains ``expected``."""
    while True:
        delivered = fake.delivered.get(interaction)
        if delivered is not None and delivered.original is not None:
            shown = delivered.original.content + "".join(m.content for m in delivered.followups)
            if expected in shown:
                return
        await anyio.sleep(0.05)


def _a2a(text: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "message/send",
        "params": {
            "message": {
                "kind": "message",
                "messageId": f"m-{text}",
                "role": "user",
                "parts": [{"kind": "text", "text": text}],
            }
        },
    }


async def test_teams_bot_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.channels.activity.conftest import bot_framework
    from tests.channels.activity.fake_bot_framework import APP_ID, APP_SECRET
    from tests.channels.activity.teams_activities import message, new_user, personal_conversation
    from tests.channels.activity.tls import loopback_certificate

    certificate = loopback_certificate(tmp_path)  # the fake Entra is https, as Entra is
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.certfile))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    ada, chat = new_user(), personal_conversation()
    with anyio.fail_after(TIMEOUT * 2):
        async with bot_framework(certificate) as services:
            service = services.service
            for key, value in {
                "MICROSOFT_APP_ID": APP_ID,
                "MICROSOFT_APP_PASSWORD": APP_SECRET,
                "ACTIVITY_OPENID_METADATA_URL": service.metadata_url,
                "ACTIVITY_AUTHORITY_HOST": services.entra.base_url,
                "ACTIVITY_SERVICE_URLS": service.base_url,
                "AGENTHOST_STATE_DIR": str(tmp_path),
            }.items():
                monkeypatch.setenv(key, value)
            monkeypatch.delenv("MICROSOFT_APP_TENANT_ID", raising=False)
            async with (
                served(sample_host("teams_bot").app) as base,
                httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
            ):
                endpoint, url = "/activity/api/messages", service.service_url
                asked = message(ada, chat, "what is 2 + 3", service_url=url)
                signed = {"authorization": f"Bearer {service.token()}"}
                accepted = await http.post(endpoint, json=asked, headers=signed)
                assert accepted.status_code == 200, accepted.text
                await service.wait_until(
                    lambda: any("5" in m.text for m in service.messages_to(chat["id"])),
                    timeout=TIMEOUT,
                )
                assert [grant["grant_type"] for grant in services.entra.token_requests] == [
                    "client_credentials"
                ]
                forged = message(ada, chat, "what is 4 + 4", service_url=url)
                unsigned = await http.post(endpoint, json=forged)
                assert unsigned.status_code == 401
                answered = len(service.messages_to(chat["id"]))
                again = await http.post(
                    endpoint,
                    json=message(ada, chat, "what did I say first?", service_url=url),
                    headers={"authorization": f"Bearer {service.token()}"},
                )
                assert again.status_code == 200, again.text
                await service.wait_until(
                    lambda: any(
                        "You first said" in m.text
                        for m in service.messages_to(chat["id"])[answered:]
                    ),
                    timeout=TIMEOUT,
                )
                recalled = [m.text for m in service.messages_to(chat["id"])[answered:]]
                assert any('"what is 2 + 3"' in text for text in recalled), recalled


@pytest.mark.slow
async def test_replicas_postgres_sample(tmp_path: Path) -> None:
    from tests.host_process import free_port, host_process
    from tests.replicas.test_replicas import database
    from tests.served import wait_ready

    app = "samples.replicas_postgres.app:build_host"
    with database() as (_, _, url), ExitStack() as stack:
        bases = []
        for name in ("a", "b"):
            port = free_port()
            settings = {
                "AGENTHOST_STORE": url,
                "AGENTHOST_STATE_DIR": str(tmp_path / name),
                "RESPONSES_API_KEYS": "k-ada=ada,k-bob=bob",
            }
            stack.enter_context(host_process(app, port, settings))
            bases.append(f"http://127.0.0.1:{port}")
        with anyio.fail_after(TIMEOUT * 2):
            for base in bases:
                await wait_ready(base, timeout=TIMEOUT)
            first, second = (
                openai.AsyncOpenAI(api_key="k-ada", base_url=f"{b}/responses/v1", max_retries=0)
                for b in bases
            )
            began = await first.responses.create(model="agenthost", input="what is 2 + 3")
            assert "5" in began.output_text
            went_on = await second.responses.create(
                model="agenthost", input="what did I say first?", previous_response_id=began.id
            )
            assert went_on.output_text == 'You first said: "what is 2 + 3"'
            stranger = openai.AsyncOpenAI(
                api_key="k-bob", base_url=f"{bases[1]}/responses/v1", max_retries=0
            )
            with pytest.raises(openai.NotFoundError):  # another caller's response is not found
                await stranger.responses.create(
                    model="agenthost", input="hi", previous_response_id=began.id
                )
            for client in (first, second, stranger):
                await client.close()
