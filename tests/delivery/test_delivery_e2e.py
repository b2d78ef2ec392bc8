"""Cross-channel delivery end to end: real HTTP to Hypercorn on loopback, asyncio and trio.

One host, three channels: Invocations (the caller named by ``x-agent-user-id``; the host
trusts wire targets only from callers sending ``x-test-trusted: yes``), a
``WebhookChannel`` pointed at a fake receiver that verifies signatures and answers what
the test scripts, and ``PushChat``, a chat channel that can push. The user ``alice`` is
linked across Invocations and the chat. Replies travel through the SQLite outbox.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest

from agenthost import ChannelIdentity, Host, HostMessage
from agenthost.channels.invocations import InvocationsChannel
from agenthost.channels.webhook import WebhookChannel
from agenthost.sansio_core.delivery import Delivery, DeliveryStatus, RetryPolicy
from agenthost.stores.sqlite import SQLiteStore
from tests.delivery.receiver import SECRET, PushChat, Receiver
from tests.served import served

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TIMEOUT = 30.0
REPO = Path(__file__).resolve().parents[2]
ALICE_INV = ChannelIdentity("invocations", "alice-inv")
ALICE_CHAT = ChannelIdentity("chat", "alice")
TRUSTED = {"x-agent-user-id": "alice-inv", "x-test-trusted": "yes"}


class Target:
    """Answers at once, except to "slow", which waits until the test releases it."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = anyio.Event()

    async def __call__(self, messages: list[HostMessage]) -> str:
        self.calls += 1
        text = messages[-1].text
        if text == "slow":
            await self.release.wait()
        return f"answer to {text}"


def trusted(request: Any, identity: ChannelIdentity) -> bool:
    return bool(request is not None and request.headers.get("x-test-trusted") == "yes")


@attrs.define
class World:
    client: httpx.AsyncClient
    host: Host
    receiver: Receiver
    chat: PushChat
    target: Target

    async def invoke(
        self, text: str, target: Any, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        body = {"input": text, "response_target": target}
        return await self.client.post(
            "/invocations/invoke", json=body, headers=TRUSTED if headers is None else headers
        )

    async def finished(self, response: httpx.Response) -> dict[str, Any]:
        assert response.status_code == 202, response.text
        poll_url = response.json()["poll_url"]
        owner = {"x-agent-user-id": response.request.headers["x-agent-user-id"]}
        with anyio.fail_after(TIMEOUT):
            while True:
                body: dict[str, Any] = (await self.client.get(poll_url, headers=owner)).json()
                if body["status"] in ("completed", "failed", "cancelled"):
                    return body
                await anyio.sleep(0.02)

    async def settled(self, count: int) -> list[Delivery]:
        """Wait until ``count`` deliveries exist and none is still on its way."""
        moving = {DeliveryStatus.SCHEDULED, DeliveryStatus.SENDING, DeliveryStatus.FAILED}
        with anyio.fail_after(TIMEOUT):
            while True:
                found = await self.host.list_deliveries()
                if len(found) >= count and not any(d.status in moving for d in found):
                    return found
                await anyio.sleep(0.02)


@asynccontextmanager
async def world(tmp_path: Path, **host_options: Any) -> AsyncIterator[World]:
    receiver = Receiver()
    target = Target()
    chat = PushChat()
    with anyio.fail_after(TIMEOUT * 2):
        async with served(receiver.app) as receiver_url:
            host = Host(
                target,
                channels=[
                    InvocationsChannel(trust_platform_headers=True),
                    WebhookChannel(url=f"{receiver_url}/hook/main", secret=SECRET),
                    chat,
                ],
                store=SQLiteStore(tmp_path / "state.db"),
                state_dir=tmp_path,
                trust_wire_targets=trusted,
                delivery_retry=RetryPolicy(max_attempts=4, base_seconds=0.05, cap_seconds=0.2),
                **host_options,
            )
            async with (
                served(host.app) as base_url,
                httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client,
            ):
                w = World(client, host, receiver, chat, target)
                # alice speaks on both channels, then links them (as an operator would).
                first = await client.post(
                    "/invocations/invoke", json={"input": "hello"}, headers=TRUSTED
                )
                assert first.status_code == 200, first.text
                linked = await host.link_identities(ALICE_INV, ALICE_CHAT)
                assert linked.linked
                said = await client.post("/chat/send", json={"user": "alice", "text": "hi"})
                assert said.status_code == 200, said.text
                yield w


async def test_channel_with_echo_goes_to_the_webhook_echo_first(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        done = await w.finished(
            await w.invoke("ping", {"kind": "channel", "channels": ["webhook"], "echo_input": True})
        )
        assert done["output"] == "answer to ping"
        [delivered] = await w.settled(1)
        assert delivered.status is DeliveryStatus.DELIVERED
        got = w.receiver.to("main")
        assert [(r.body["is_echo"], r.body["text"]) for r in got] == [
            (True, "You, via Invocations: ping"),
            (False, "answer to ping"),
        ]
        assert got[1].key == delivered.delivery_id
        assert got[0].key == f"{delivered.delivery_id}:echo"
        assert w.chat.pushed == []
        assert done["destinations"] == [{"channel": "webhook", "native_id": got[1].body[
            "isolation_key"]}]  # fmt: skip


async def test_channels_identities_all_linked_and_none(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.finished(
            await w.invoke("two", {"kind": "channels", "channels": ["chat", "webhook"]})
        )
        await w.settled(2)
        assert w.chat.texts() == ["answer to two"]
        assert [r.body["text"] for r in w.receiver.to("main")] == ["answer to two"]

        identities = {
            "kind": "identities",
            "identities": [{"channel": "chat", "native_id": "alice"}],
        }
        await w.finished(await w.invoke("mine", identities))
        await w.settled(3)
        assert w.chat.texts() == ["answer to two", "answer to mine"]
        assert len(w.receiver.to("main")) == 1

        await w.finished(await w.invoke("everywhere", {"kind": "all_linked"}))
        await w.settled(5)
        assert w.chat.texts()[-1] == "answer to everywhere"
        assert w.receiver.to("main")[-1].body["text"] == "answer to everywhere"

        # someone else's identity is never a destination: it falls back to polling
        strangers = {"kind": "identities", "identities": [{"channel": "chat", "native_id": "bob"}]}
        done = await w.finished(await w.invoke("stranger", strangers))
        assert done["output"] == "answer to stranger"

        done = await w.finished(await w.invoke("quiet", "none"))
        assert done["output"] == "answer to quiet"
        assert len(await w.settled(5)) == 5
        assert len(w.chat.pushed) == 3 and len(w.receiver.to("main")) == 2


async def test_active_is_where_the_user_spoke_last(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        accepted = await w.invoke("slow", "active")
        assert accepted.status_code == 202
        # while it runs, alice moves to the chat
        said = await w.client.post("/chat/send", json={"user": "alice", "text": "still there?"})
        assert said.status_code == 200
        w.target.release.set()
        await w.finished(accepted)
        await w.settled(1)
        assert w.chat.texts() == ["answer to slow"]
        [(destination, _)] = w.chat.pushed
        assert destination.identity == ALICE_CHAT
        assert w.receiver.to("main") == []


async def test_proactive_message_from_application_code(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        scheduled = await w.host.deliver(isolation_key=await _key_of(w.host), message="reminder")
        assert [d.channel for d in scheduled] == ["chat"]  # active: alice spoke on the chat last
        await w.settled(1)
        assert w.chat.texts() == ["reminder"]


async def _key_of(host: Host) -> str:
    context = await host.store.load_context(ALICE_CHAT, None)
    assert context.isolation_key is not None
    return context.isolation_key


async def test_500_twice_then_200_is_delivered_once(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        w.receiver.script("main", 500, 500, 200)
        await w.finished(await w.invoke("flaky", {"kind": "channel", "channels": ["webhook"]}))
        [delivered] = await w.settled(1)
        assert delivered.status is DeliveryStatus.DELIVERED
        assert delivered.attempts == 3
        assert [r.status for r in w.receiver.to("main")] == [500, 500, 200]
        assert w.receiver.accepted("main") == {delivered.delivery_id: 1}


async def test_403_is_dead_at_once_and_replay_sends_it_again(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        w.receiver.script("main", 403)
        await w.finished(await w.invoke("blocked", {"kind": "channel", "channels": ["webhook"]}))
        [dead] = await w.settled(1)
        assert dead.status is DeliveryStatus.DEAD
        assert dead.attempts == 1
        assert dead.last_error == "http 403"
        assert [d.delivery_id for d in await w.host.list_deliveries([DeliveryStatus.DEAD])] == [
            dead.delivery_id
        ]

        await w.host.replay_delivery(dead.delivery_id)
        [again] = await w.settled(1)
        assert again.status is DeliveryStatus.DELIVERED
        assert w.receiver.accepted("main") == {dead.delivery_id: 1}
        assert await w.host.purge_deliveries() == 0  # nothing is dead any more


async def test_429_is_retried_after_retry_after(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        w.receiver.script("main", (429, 1.0))
        await w.finished(await w.invoke("busy", {"kind": "channel", "channels": ["webhook"]}))
        [delivered] = await w.settled(1)
        assert delivered.status is DeliveryStatus.DELIVERED
        first, second = w.receiver.to("main")
        assert first.status == 429 and second.status == 200
        assert second.at - first.at >= 0.95  # the backoff alone would be under 0.2 s


async def test_a_failing_destination_does_not_hold_up_another(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        w.receiver.script("main", 503, 503, 503, 503)
        response = await w.invoke("both", {"kind": "channels", "channels": ["webhook", "chat"]})
        await w.finished(response)
        found = {d.channel: d for d in await w.settled(2)}
        assert found["chat"].status is DeliveryStatus.DELIVERED
        assert found["webhook"].status is DeliveryStatus.DEAD  # attempts ran out
        assert found["webhook"].attempts == 4


async def test_an_untrusted_caller_cannot_choose_a_target(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        calls = w.target.calls
        for headers in ({"x-agent-user-id": "alice-inv"}, {"x-agent-user-id": "mallory"}):
            refused = await w.invoke("push it", {"kind": "all_linked"}, headers=headers)
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "target_not_allowed"
        anonymous = await w.client.post(
            "/invocations/invoke", json={"input": "x", "response_target": "active"}
        )
        assert anonymous.status_code == 401  # no platform header: not even a caller
        await anyio.sleep(0.2)
        assert w.target.calls == calls
        assert await w.host.list_deliveries() == []
        assert w.chat.pushed == [] and w.receiver.received == []


async def test_a_bad_target_is_a_clear_422(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        bad = await w.invoke("x", {"kind": "somewhere"})
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "invalid_response_target"


async def cli(*args: str) -> tuple[int, str]:
    command = [sys.executable, "-m", "agenthost", "deliveries", *args]
    done = await anyio.run_process(command, check=False, cwd=REPO)
    return done.returncode, done.stdout.decode()


async def test_the_cli_lists_replays_and_purges_dead_letters(tmp_path: Path) -> None:
    # A short delivery lease makes the host's sweep (which notices a replay) frequent.
    async with world(tmp_path, delivery_lease_seconds=1.5) as w:
        w.receiver.script("main", 403, 403)
        for text in ("one", "two"):
            await w.finished(await w.invoke(text, {"kind": "channel", "channels": ["webhook"]}))
        await w.settled(2)
        db = str(tmp_path / "state.db")
        code, out = await cli("list", "--status", "dead", "--db", db)
        assert code == 0
        dead = [json.loads(line) for line in out.splitlines()]
        assert [d["last_error"] for d in dead] == ["http 403", "http 403"]
        assert "answer to" not in out  # list shows no message text

        code, out = await cli("replay", dead[0]["delivery_id"], "--db", db)
        assert code == 0 and json.loads(out)["status"] == "scheduled"
        with anyio.fail_after(TIMEOUT):
            while not w.receiver.accepted("main"):
                await anyio.sleep(0.05)
        assert w.receiver.accepted("main") == {dead[0]["delivery_id"]: 1}

        code, out = await cli("purge", "--db", db)
        assert code == 0 and json.loads(out) == {"purged": 1}
        code, _ = await cli("replay", dead[1]["delivery_id"], "--db", db)
        assert code == 1  # purged: nothing to replay
