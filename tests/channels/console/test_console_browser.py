"""The console in a real headless Chromium, against a real served host.

One host serves the console, Invocations (its caller named by a test header) and Telegram
(against the fake Bot API), with the demo Agent Framework agent and ``OneTimeCodeLinker``.
The browser types, clicks and reads the pages like an operator: a chat answer streams in,
two identities are linked through the link page and shown joined (then unlinked), a dead
letter is replayed and shown delivered, a background run is cancelled, and the live view
shows a turn made on another channel. Every page visited is saved as a screenshot (under
``docs/screenshots/`` for the docs when run by ``make screenshots``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest
from starlette.requests import Request

from agenthost import Host
from agenthost.backends.linking import OneTimeCodeLinker
from agenthost.backends.serving import bound_socket
from agenthost.channels.console import ConsoleChannel
from agenthost.channels.invocations import InvocationsChannel
from agenthost.channels.telegram import TelegramChannel
from agenthost.demo import build_agent
from agenthost.sansio_core.delivery import RetryPolicy
from agenthost.sansio_core.types import ChannelIdentity, HostMessage, ResponseTarget
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.console.browser import Browser, chromium
from tests.channels.telegram.conftest import fake_bot_api, make_channel, serve_on
from tests.channels.telegram.fake_bot_api import FakeBotApi
from tests.channels.telegram.telegram_updates import message, private_chat

pytestmark = pytest.mark.anyio

TIMEOUT = 60.0
CODE = re.compile(r"/link ([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})")
TELEGRAM_USER = 930_000_001


def caller(request: Request) -> str | None:
    return request.headers.get("x-test-user")


class Slow:
    """A target that takes far longer than the test: its run is there to be cancelled."""

    async def __call__(self, messages: Sequence[HostMessage]) -> str:
        await anyio.sleep(30)
        return "too late"


@attrs.define
class World:
    host: Host
    base: str
    fake: FakeBotApi
    telegram: TelegramChannel
    client: httpx.AsyncClient
    browser: Browser

    def url(self, path: str) -> str:
        return f"{self.base}/console{path}"

    async def invoke(self, text: str, user: str = "alice", **body: Any) -> httpx.Response:
        return await self.client.post(
            "/invocations/invoke", json={"input": text, **body}, headers={"x-test-user": user}
        )

    async def on_telegram(self, text: str) -> str:
        before = len(self.fake.sent_to(TELEGRAM_USER))
        update = message(
            self.fake.next_update_id(),
            user_id=TELEGRAM_USER,
            chat=private_chat(TELEGRAM_USER),
            text=text,
        )
        assert (await self.fake.deliver(update)).status_code == 200
        await self.fake.wait_until(lambda: len(self.fake.sent_to(TELEGRAM_USER)) > before)
        return self.fake.sent_to(TELEGRAM_USER)[before].text


@asynccontextmanager
async def world(tmp_path: Path, target: Any = None) -> AsyncIterator[World]:
    with anyio.fail_after(TIMEOUT * 3):
        async with fake_bot_api() as (fake, api_url), chromium() as browser:
            sock = bound_socket("127.0.0.1")
            telegram = make_channel("webhook", api_url, sock.getsockname()[1])
            host = Host(
                target if target is not None else build_agent(),
                channels=[
                    ConsoleChannel(metrics=True),
                    InvocationsChannel(authenticate=caller, session_keys="host"),
                    telegram,
                ],
                store=SQLiteStore(tmp_path / "state.db"),
                state_dir=tmp_path,
                linker=OneTimeCodeLinker(),
                delivery_retry=RetryPolicy(max_attempts=3, base_seconds=0.05, cap_seconds=0.2),
            )
            async with serve_on(sock, host.app) as base:
                await fake.wait_until(lambda: bool(fake.webhook_url))
                async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client:
                    yield World(host, base, fake, telegram, client, browser)


async def test_a_chat_answer_streams_into_the_page(tmp_path: Path) -> None:
    async with world(tmp_path) as w, w.browser.tab() as tab:
        await tab.goto(w.url(""))
        await tab.screenshot("console-chat-empty")
        await tab.type_into("textarea[name=message]", "what is 2 + 3")
        await tab.click("#chat button[type=submit]")
        answer = await tab.wait_for("document.querySelector('.turn.agent.done p')?.textContent")
        assert "5" in answer, answer
        deltas = await tab.evaluate("Number(document.querySelector('.turn.agent').dataset.deltas)")
        assert deltas >= 2, "the answer arrived in one piece, not streamed"
        # The question went in the POST body: it is nowhere in the page's address.
        assert "2 + 3" not in await tab.evaluate("location.href")
        await tab.type_into("textarea[name=message]", "what did I say first?")
        await tab.click("#chat button[type=submit]")
        await tab.wait_for("document.querySelectorAll('.turn.agent.done').length === 2")
        recalled = await tab.evaluate(
            "document.querySelectorAll('.turn.agent.done p')[1].textContent"
        )
        assert recalled == 'You first said: "what is 2 + 3"'
        await tab.screenshot("console-chat")
        assert tab.console_errors == []
        # A reload shows the conversation so far, from the stored session.
        await tab.goto(w.url(""))
        shown = await tab.evaluate(
            "[...document.querySelectorAll('#transcript .turn p')].map(p => p.textContent)"
        )
        assert shown == ["what is 2 + 3", answer, "what did I say first?", recalled], shown

        # The session and its history, as the operator browses to them.
        await tab.goto(w.url("/users?channel=console&native_id=operator"))
        await tab.submit("table a[href*='/sessions/']")
        await tab.wait_for("location.pathname.includes('/sessions/')")
        await tab.wait_for("document.readyState === 'complete'")
        history = await tab.evaluate(
            "[...document.querySelectorAll('.turn p')].map(p => p.textContent)"
        )
        assert "what is 2 + 3" in history and recalled in history, history
        await tab.screenshot("console-session")


async def test_linking_two_identities_shows_them_joined_and_unlink_parts_them(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w, w.browser.tab() as tab:
        started = await w.invoke("/link")
        assert started.status_code == 200, started.text
        code = CODE.search(started.json()["output"])
        assert code is not None, started.text

        await tab.goto(w.url("/link"))
        await tab.type_into("input[name=code]", code[1])
        await tab.submit("form.row button[type=submit]")
        reply = await tab.wait_for("document.querySelector('#link-reply')?.textContent")
        assert reply.startswith("Linked"), reply
        await tab.screenshot("console-link")

        await tab.goto(w.url("/users"))
        await tab.type_into("input[name=native_id]", "operator")
        await tab.evaluate("document.querySelector('select[name=channel]').value = 'console'")
        await tab.submit("form.row button[type=submit]")
        rows = await tab.wait_for(
            "document.querySelector('#identities') && [...document.querySelectorAll("
            "'#identities tr.identity')].map(r => r.cells[0].textContent + ':' + "
            "r.cells[1].textContent)"
        )
        assert sorted(rows) == ["console:operator", "invocations:alice"]
        await tab.screenshot("console-user")

        # Both identities now resolve to the same user in the store, as the page says.
        alice = await w.host.linked_identities(ChannelIdentity("invocations", "alice"))
        assert {i.native_id for i in alice} == {"alice", "operator"}

        await tab.submit("#identities tr.identity:nth-child(2) button")
        await tab.wait_for("document.querySelectorAll('#identities tr.identity').length === 1")
        remaining = await tab.evaluate(
            "document.querySelector('#identities tr.identity').cells[1].textContent"
        )
        assert remaining == "operator"
        alice = await w.host.linked_identities(ChannelIdentity("invocations", "alice"))
        assert [i.native_id for i in alice] == ["alice"]
        await tab.screenshot("console-user-unlinked")

        # The other way round: the console shows a code, another channel enters it.
        await tab.goto(w.url("/link"))
        await tab.submit("form.inline button[type=submit]")
        shown = await tab.wait_for("document.querySelector('#link-reply')?.textContent")
        code = CODE.search(shown)
        assert code is not None, shown
        entered = await w.invoke(f"/link {code[1]}", user="bob")
        assert entered.json()["output"].startswith("Linked"), entered.text
        operator = await w.host.linked_identities(ChannelIdentity("console", "operator"))
        assert {i.native_id for i in operator} == {"operator", "bob"}


async def test_a_dead_letter_shows_its_reason_and_is_delivered_after_replay(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w, w.browser.tab() as tab:
        assert (await w.on_telegram("hello")).startswith("You said")
        context = await w.host.store.load_context(
            ChannelIdentity("telegram", str(TELEGRAM_USER)), None
        )
        assert context.isolation_key is not None
        w.fake.blocked.add(TELEGRAM_USER)
        [scheduled] = await w.host.deliver(
            isolation_key=context.isolation_key,
            message="your report is ready",
            target=ResponseTarget.channel("telegram"),
        )

        await tab.goto(w.url("/deliveries?state=dead"))
        for _ in range(200):
            if await tab.evaluate(
                f"!!document.querySelector('tr.delivery.dead[data-id=\"{scheduled.delivery_id}\"]')"
            ):
                break
            await anyio.sleep(0.1)
            await tab.goto(w.url("/deliveries?state=dead"))
        reason = await tab.evaluate(
            "document.querySelector('tr.delivery.dead .reason').textContent"
        )
        assert "blocked" in reason, reason
        await tab.screenshot("console-dead-letters")
        scraped = (await w.client.get("/metrics")).text
        assert 'agenthost_deliveries{state="dead"} 1' in scraped
        assert 'agenthost_dead_letters_total{channel="telegram"} 1' in scraped

        w.fake.blocked.discard(TELEGRAM_USER)
        sent_before = len(w.fake.sent_to(TELEGRAM_USER))
        async with w.browser.tab() as live:
            await live.goto(w.url("/live"))
            await live.wait_for(
                "document.querySelector('#live-status').textContent === 'connected'"
            )
            await tab.submit("tr.delivery.dead button")
            shown = await live.wait_for(
                "[...document.querySelectorAll('#live li.kind-delivery')]"
                ".map(li => li.textContent).find(t => t.includes('delivered'))"
            )
            assert "telegram" in shown and scheduled.delivery_id in shown, shown
        await tab.wait_for("location.pathname.endsWith('/deliveries')")
        state = ""
        for _ in range(200):
            await tab.goto(w.url("/deliveries"))
            state = await tab.evaluate(
                f'document.querySelector(\'tr.delivery[data-id="{scheduled.delivery_id}"] '
                ".state')?.textContent"
            )
            if state == "delivered":
                break
            await anyio.sleep(0.1)
        assert state == "delivered"
        await tab.screenshot("console-deliveries")
        assert [m.text for m in w.fake.sent_to(TELEGRAM_USER)[sent_before:]] == [
            "your report is ready"
        ]


async def test_a_background_run_is_cancelled_from_the_runs_page(tmp_path: Path) -> None:
    async with world(tmp_path, target=Slow()) as w, w.browser.tab() as tab:
        accepted = await w.invoke("take your time", background=True)
        assert accepted.status_code == 202, accepted.text
        await tab.goto(w.url("/runs"))
        await tab.wait_for("!!document.querySelector('tr.run.running, tr.run.queued')")
        await tab.goto(w.url("/runs"))
        await tab.screenshot("console-runs")
        await tab.submit("tr.run button")
        status = await tab.wait_for(
            "location.pathname.endsWith('/runs') && "
            "document.querySelector('tr.run')?.cells[2].textContent"
        )
        assert status == "cancelled"
        poll = await w.client.get(  # as the run's owner: poll routes answer only them
            accepted.json()["poll_url"], headers={"x-test-user": "alice"}
        )
        assert poll.json()["status"] == "cancelled", poll.text


async def test_the_live_view_shows_turns_from_other_channels(tmp_path: Path) -> None:
    async with world(tmp_path) as w, w.browser.tab() as tab:
        await tab.goto(w.url("/live"))
        await tab.wait_for("document.querySelector('#live-status').textContent === 'connected'")
        answered = await w.invoke("hello from the api", user="bob")
        assert answered.status_code == 200
        line = await tab.wait_for(
            "document.querySelector('#live li.live-event.kind-turn')?.textContent"
        )
        assert "invocations" in line and "completed" in line, line
        assert "hello from the api" not in await tab.evaluate("document.body.textContent")
        assert await tab.evaluate("document.querySelectorAll('#live li.kind-request').length") == 0
        await tab.screenshot("console-live")

        metrics = await w.client.get("/metrics")
        assert metrics.status_code == 200
        assert 'agenthost_turns_total{channel="invocations",outcome="completed"} 1' in (
            metrics.text
        ), metrics.text


async def test_the_login_page_when_remote_access_is_configured(tmp_path: Path) -> None:
    async with chromium() as browser, browser.tab() as tab:
        host = Host(
            build_agent(),
            channels=[ConsoleChannel(allow_remote=True, token="correct-horse-battery-staple")],
            store=SQLiteStore(tmp_path / "state.db"),
            state_dir=tmp_path,
        )
        async with serve_on(bound_socket("127.0.0.1"), host.app) as base:
            await tab.goto(f"{base}/console/runs")
            assert await tab.wait_for("location.pathname") == "/console/login"
            await tab.type_into("input[name=token]", "not-the-token-at-all")
            await tab.submit("form button[type=submit]")
            await tab.wait_for("!!document.querySelector('p.error')")
            await tab.type_into("input[name=token]", "correct-horse-battery-staple")
            await tab.screenshot("console-login")
            await tab.submit("form button[type=submit]")
            await tab.wait_for("!!document.querySelector('#chat')")
            await tab.goto(f"{base}/console/runs")
            assert await tab.evaluate("document.querySelector('h1').textContent") == (
                "Background runs"
            )
