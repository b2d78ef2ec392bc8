"""Several real ``agenthost serve`` processes on one PostgreSQL database behave as one host.

- concurrent turns to one session, sent through different replicas, run one at a time and
  none is lost;
- SIGKILL of the replica running a background run: another replica completes it, once;
- the outbox: replicas claim side by side and a delivery acknowledged once is never sent
  again by another replica;
- Telegram long polling: one replica polls the bot; when it is killed another takes over
  within seconds, and every update is answered exactly once;
- Telegram webhooks on every replica with one shared secret: an update Telegram delivers
  again, to another replica, is answered once.

The PostgreSQL cases need ``AGENTHOST_TEST_POSTGRES`` (skipped when unset, failing when
unreachable); the database schema is this test's own, migrated with ``agenthost migrate``
first.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from agenthost.sansio_core.delivery import DeliveryStatus
from agenthost.stores.base import Store
from agenthost.stores.postgres import PostgresStore
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.telegram.fake_bot_api import ApiError, FakeBotApi
from tests.channels.telegram.telegram_updates import BOT_TOKEN, BOT_USERNAME, message, private_chat
from tests.delivery.receiver import Receiver
from tests.host_process import REPO, free_port, host_process, stop_processes
from tests.postgres_fixture import postgres_schema
from tests.served import served, wait_ready

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TRUSTED = {"x-test-trusted": "yes"}


class SlowReceiver(Receiver):
    """A receiver that takes a moment per request, so replicas' claims overlap in time."""

    async def _hook(self, request: Request) -> Response:
        await anyio.sleep(0.05)
        return await super()._hook(request)


@contextmanager
def database() -> Iterator[tuple[str, str, str]]:
    """A fresh schema migrated by ``agenthost migrate``: (dsn, schema, store URL)."""
    with postgres_schema() as (dsn, schema):
        url = f"{dsn}?schema={schema}"
        done = subprocess.run(
            [sys.executable, "-m", "agenthost", "migrate", "--store", url],
            cwd=REPO,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        yield dsn, schema, url


@asynccontextmanager
async def replicas(
    count: int,
    url: str,
    shared: Path,
    receiver: str,
    *,
    app: str = "tests.replicas.replica_app:build_host",
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[list[tuple[subprocess.Popen[bytes], str]]]:
    """``count`` replicas serving ``app`` on one database; (process, base URL)."""
    with ExitStack() as stack:
        started = []
        for index in range(count):
            port = free_port()
            settings = {
                "AGENTHOST_STORE": url,
                "REPLICA_TEST_DIR": str(shared),
                "REPLICA_NAME": f"r{index}",
                "REPLICA_TEST_RECEIVER": receiver,
                "REPLICA_PORT": str(port),
                **(env or {}),
            }
            process = stack.enter_context(host_process(app, port, settings))
            started.append((process, f"http://127.0.0.1:{port}"))
        try:
            for _, base in started:
                await wait_ready(base, timeout=30)
            yield started
        finally:
            await stop_processes([process for process, _ in started])


async def test_concurrent_turns_on_one_session_across_replicas_run_one_at_a_time(
    tmp_path: Path,
) -> None:
    turns = 9
    with database() as (_, _, url):
        async with (
            served(Receiver().app) as receiver,
            replicas(3, url, tmp_path, receiver) as running,
            httpx.AsyncClient(timeout=30) as client,
        ):
            answers: list[str] = []

            async def turn(index: int) -> None:
                base = running[index % len(running)][1]
                reply = await client.post(
                    f"{base}/invocations/invoke",
                    json={"input": f"turn {index}", "session_id": "shared"},
                    headers={"x-agent-user-id": "alice"},
                )
                assert reply.status_code == 200, reply.text
                answers.append(reply.json()["output"])

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for index in range(turns):
                        tg.start_soon(turn, index)
            last = await client.post(
                f"{running[0][1]}/invocations/invoke",
                json={"input": "count", "session_id": "shared"},
                headers={"x-agent-user-id": "alice"},
            )
    # One at a time: each turn saw every turn before it, so the counts are all distinct;
    # none lost: the history holds every turn, whichever replica ran it.
    assert sorted(int(a.rsplit(" ", 1)[1]) for a in answers) == list(range(turns))
    assert {a.split(" ", 1)[0] for a in answers} == {"r0", "r1", "r2"}
    assert last.json()["output"].endswith(f"saw {turns}")


async def test_sigkill_of_the_replica_running_a_background_run_another_completes_it(
    tmp_path: Path,
) -> None:
    with database() as (_, _, url):
        async with (
            served(Receiver().app) as receiver,
            replicas(2, url, tmp_path, receiver) as running,
            httpx.AsyncClient(timeout=10) as client,
        ):
            (first, first_url), (_, second_url) = running
            accepted = await client.post(
                f"{first_url}/invocations/invoke",
                json={"input": "block", "background": True},
                headers={"x-agent-user-id": "alice"},
            )
            assert accepted.status_code == 202, accepted.text
            token = accepted.json()["token"]
            marker = tmp_path / "blocked-by"
            with anyio.fail_after(20):
                while not marker.exists():
                    await anyio.sleep(0.05)
            assert marker.read_text() == "r0"  # the replica that accepted it runs it
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            with anyio.fail_after(30):
                while True:
                    polled = await client.get(
                        f"{second_url}/invocations/{token}", headers={"x-agent-user-id": "alice"}
                    )
                    body = polled.json()
                    if body["status"] in ("completed", "failed", "cancelled"):
                        break
                    await anyio.sleep(0.1)
    assert body["status"] == "completed", body
    assert body["output"] == "finished by r1"
    attempts = (tmp_path / "attempts.log").read_text().splitlines()
    assert attempts == ["r0 block", "r1 block"]  # taken over once, never run twice at once


async def test_replicas_share_the_outbox_and_never_send_an_acknowledged_delivery_twice(
    tmp_path: Path,
) -> None:
    runs = 24
    receiver = SlowReceiver()
    target = {"kind": "channels", "channels": ["hook_a", "hook_b"]}
    with database() as (dsn, schema, url):
        async with (
            served(receiver.app) as receiver_url,
            replicas(3, url, tmp_path, receiver_url) as running,
            httpx.AsyncClient(timeout=10) as client,
        ):
            store = PostgresStore(dsn, schema=schema)
            claimers: set[str | None] = set()  # who held the sends in flight, as seen

            async def watch_claimers() -> None:
                # From the first post on: sends may all be done by the time posting ends.
                while True:
                    sending = await store.list_deliveries([DeliveryStatus.SENDING])
                    claimers.update(d.owner for d in sending)
                    await anyio.sleep(0.02)

            try:
                await store.list_deliveries([DeliveryStatus.SENDING])  # connected before posting
                async with anyio.create_task_group() as watching:
                    watching.start_soon(watch_claimers)
                    for index in range(runs):
                        accepted = await client.post(
                            f"{running[index % 3][1]}/invocations/invoke",
                            json={"input": f"push {index}", "response_target": target},
                            headers={"x-agent-user-id": f"user{index}", **TRUSTED},
                        )
                        assert accepted.status_code == 202, accepted.text
                    with anyio.fail_after(60):
                        while (
                            len(receiver.accepted("a")) < runs or len(receiver.accepted("b")) < runs
                        ):
                            await anyio.sleep(0.02)
                    watching.cancel_scope.cancel()
                # Longer than a delivery's lease: a claim that wrongly lapsed would resend now.
                await anyio.sleep(3.0)
                delivered = await store.list_deliveries([DeliveryStatus.DELIVERED], limit=1000)
            finally:
                await store.close()
    assert not [r for r in receiver.received if r.duplicate]
    for hook in ("a", "b"):
        counts = receiver.accepted(hook)
        assert len(counts) == runs and set(counts.values()) == {1}
    assert len(delivered) == 2 * runs
    assert len(claimers) > 1  # the replicas really did share the work


class WatchedBotApi(FakeBotApi):
    """The fake Bot API, counting the 409s it answers to a second concurrent poller."""

    conflicts = 0

    async def _do_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            return await super()._do_getUpdates(params)
        except ApiError as error:
            if error.status == 409:
                self.conflicts += 1
            raise


@contextmanager
def shared_store(kind: str, directory: Path) -> Iterator[tuple[str, Callable[[], Store]]]:
    """A store several processes share: (its URL, a factory of a client of it here)."""
    if kind == "sqlite":
        path = directory / "state.db"
        yield f"sqlite:///{path}", lambda: SQLiteStore(path)
        return
    with database() as (dsn, schema, url):
        yield url, lambda: PostgresStore(dsn, schema=schema)


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
async def test_one_replica_polls_telegram_and_another_takes_over_when_it_dies(
    tmp_path: Path, kind: str
) -> None:
    fake = WatchedBotApi(BOT_TOKEN, username=BOT_USERNAME)
    chat = 4242

    async def say(update_id: int, text: str) -> str:
        before = len(fake.sent_to(chat))
        fake.enqueue(message(update_id, user_id=chat, chat=private_chat(chat), text=text))
        await fake.wait_until(lambda: len(fake.sent_to(chat)) > before, timeout=30)
        return fake.sent_to(chat)[before].text

    with shared_store(kind, tmp_path) as (url, client):
        async with (
            served(fake.app) as api_url,
            replicas(
                3,
                url,
                tmp_path,
                "",
                app="tests.replicas.telegram_app:build_host",
                env={"REPLICA_TEST_BOT_API": api_url},
            ) as running,
        ):
            first = await say(1, "one")
            leader = first.split(":", 1)[0]
            await anyio.sleep(3.0)  # three replicas side by side: were they all polling?
            assert fake.conflicts == 0
            assert await say(2, "two") == f"{leader}: two"
            # The inbox keeps an update until its handling ended (then the reply is out): a
            # kill inside that window has it handled again, at least once. Kill outside it.
            store = client()
            try:
                with anyio.fail_after(10):
                    while await store.list_channel_records("telegram", "inbox"):
                        await anyio.sleep(0.02)
            finally:
                await store.close()
            process = running[int(leader[1:])][0]
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            started = anyio.current_time()
            second = await say(3, "three")
            took_over = anyio.current_time() - started
            fourth = await say(4, "four")
    successor = second.split(":", 1)[0]
    assert successor != leader and fourth == f"{successor}: four"
    assert took_over < 15.0  # a lease of 6 s, renewed every 2 s, plus a poll
    handled = (tmp_path / "handled.log").read_text().splitlines()
    assert sorted(handled) == sorted(
        [f"{leader} one", f"{leader} two", f"{successor} three", f"{successor} four"]
    )


WEBHOOK_SECRET = "shared-replica-secret"


@dataclass
class WebhookReplicas:
    """Telegram replicas in webhook mode sharing one secret, and a client to reach them."""

    running: list[tuple[subprocess.Popen[bytes], str]]
    client: httpx.AsyncClient

    async def deliver(self, index: int, update: dict[str, Any], token: str = WEBHOOK_SECRET) -> int:
        """Post ``update`` to replica ``index``'s webhook; its status code."""
        answer = await self.client.post(
            f"{self.running[index][1]}/telegram/webhook",
            json=update,
            headers={"x-telegram-bot-api-secret-token": token},
        )
        return answer.status_code


@asynccontextmanager
async def telegram_webhook_replicas(
    fake: FakeBotApi, directory: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[WebhookReplicas]:
    """Two Telegram replicas in webhook mode on one PostgreSQL database."""
    with database() as (_, _, url):
        async with (
            served(fake.app) as api_url,
            replicas(
                2,
                url,
                directory,
                "",
                app="tests.replicas.telegram_app:build_host",
                env={
                    "REPLICA_TEST_BOT_API": api_url,
                    "REPLICA_TEST_WEBHOOK_SECRET": WEBHOOK_SECRET,
                    **(env or {}),
                },
            ) as running,
            httpx.AsyncClient(timeout=10) as client,
        ):
            yield WebhookReplicas(running, client)


async def test_telegram_webhooks_on_every_replica_answer_each_update_once(
    tmp_path: Path,
) -> None:
    fake = FakeBotApi(BOT_TOKEN, username=BOT_USERNAME)
    chat = 5151
    async with telegram_webhook_replicas(fake, tmp_path) as hooks:
        updates = [
            message(100 + n, user_id=chat, chat=private_chat(chat), text=f"hook {n}")
            for n in range(6)
        ]
        for n, update in enumerate(updates):
            # Telegram retries a delivery it thinks failed: here, to both replicas.
            assert await hooks.deliver(n % 2, update) == 200
            assert await hooks.deliver((n + 1) % 2, update) == 200
        assert await hooks.deliver(0, updates[0], token="wrong") == 401
        await fake.wait_until(lambda: len(fake.sent_to(chat)) >= len(updates), timeout=30)
        await anyio.sleep(1.0)  # a duplicate would be answered by now
    assert sorted(m.text.split(": ", 1)[1] for m in fake.sent_to(chat)) == sorted(
        f"hook {n}" for n in range(6)
    )
    handled = (tmp_path / "handled.log").read_text().splitlines()
    assert sorted(line.split(" ", 1)[1] for line in handled) == [f"hook {n}" for n in range(6)]
    assert {line.split(" ", 1)[0] for line in handled} == {"r0", "r1"}


async def test_what_a_killed_webhook_replica_was_handling_is_answered_by_another(
    tmp_path: Path,
) -> None:
    # Webhook replicas elect nobody: no restart of the dead one comes to recover its inbox,
    # so the live ones must take its records over once its inbox lease lapses.
    fake = FakeBotApi(BOT_TOKEN, username=BOT_USERNAME)
    chat = 6161
    log = tmp_path / "handled.log"
    async with telegram_webhook_replicas(fake, tmp_path, {"REPLICA_TEST_STALLS": "r0"}) as hooks:
        update = message(700, user_id=chat, chat=private_chat(chat), text="stall")
        assert await hooks.deliver(0, update) == 200
        with anyio.fail_after(10):
            while not (log.exists() and "r0 stall" in log.read_text()):
                await anyio.sleep(0.05)
        stalled = hooks.running[0][0]
        stalled.send_signal(signal.SIGKILL)
        stalled.wait(timeout=10)
        # The lease lapses 15 s after r0's last renewal; r1 sweeps every 5 s.
        await fake.wait_until(lambda: len(fake.sent_to(chat)) >= 1, timeout=40)
        await anyio.sleep(1.0)  # a second answer would be out by now
    assert [m.text for m in fake.sent_to(chat)] == ["r1: stall"]
    assert log.read_text().splitlines() == ["r0 stall", "r1 stall"]
