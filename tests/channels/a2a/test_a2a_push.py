"""Push notifications through the host's outbox, to a receiver on loopback, with the real
``a2a-sdk`` client setting the configs; and the SSRF guard on push URLs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from a2a.types import a2a_pb2 as pb
from a2a.utils import errors

from agenthost.sansio_core.delivery import RetryPolicy
from tests.channels.a2a.support import (
    TIMEOUT,
    Gated,
    PushReceiver,
    collect,
    echo_target,
    in_client,
    make_channel,
    make_host,
    sdk_client,
    send_request,
    serving,
)
from tests.served import served

pytestmark = pytest.mark.anyio


def states(received: list[tuple[dict[str, str], Any]], generation: str) -> list[str]:
    if generation == "0.3":
        return [body["status"]["state"] for _, body in received]
    return [body["task"]["status"]["state"] for _, body in received]


@pytest.mark.parametrize("generation", ["1.0", "0.3"])
async def test_status_changes_are_pushed_with_the_configured_credentials(
    tmp_path: Path, generation: str
) -> None:
    receiver = PushReceiver()
    receiver.script = [503]  # the first attempt fails: the outbox retries it
    gated = Gated()
    channel = make_channel(push_retry=RetryPolicy(max_attempts=5, base_seconds=0.05))
    async with (
        served(receiver.app) as receiver_url,
        serving(make_host(gated, tmp_path, channel=channel)) as base_url,
    ):
        with anyio.fail_after(TIMEOUT):

            async def start() -> Any:
                async with sdk_client(
                    base_url, generation=generation, streaming=False, polling=True
                ) as client:
                    [answer] = await collect(client.send_message(send_request("notify me")))
                    config = pb.TaskPushNotificationConfig(
                        task_id=answer.task.id, id="hook", url=f"{receiver_url}/push",
                        token="task-token",
                    )  # fmt: skip
                    config.authentication.scheme = "Bearer"
                    config.authentication.credentials = "push-secret"
                    created = await client.create_task_push_notification_config(config)
                    listed = await client.list_task_push_notification_configs(
                        pb.ListTaskPushNotificationConfigsRequest(task_id=answer.task.id)
                    )
                    return answer.task, created, listed

            task, created, listed = await in_client(start)
            await gated.started.wait()
            gated.release.set()
            # Retries keep no order between notifications: wait for the refused one too.
            await receiver.wait_for(
                lambda got: (
                    _final_seen(got, generation)
                    and bool(receiver.refused)
                    and receiver.refused[0][0]["idempotency-key"]
                    in {h["idempotency-key"] for h, _ in got}
                )
            )
    assert created.url == f"{receiver_url}/push"
    assert [c.id for c in listed.configs] == ["hook"]
    delivered = [r for r in receiver.received]
    final_pushes = [
        (h, b)
        for h, b in delivered
        if states([(h, b)], generation)[0] in ("TASK_STATE_COMPLETED", "completed")
    ]
    headers, body = final_pushes[-1]
    assert headers["authorization"] == "Bearer push-secret"
    assert headers["x-a2a-notification-token"] == "task-token"
    assert headers["idempotency-key"].startswith("a2a:")
    final = body if generation == "0.3" else body["task"]
    assert final["id"] == task.id
    assert final["artifacts"][0]["parts"][0]["text"] == "one two three"
    # The refused first attempt was retried: the same notification, the same key.
    [(refused_headers, refused_body)] = receiver.refused
    assert refused_headers["idempotency-key"] in [h["idempotency-key"] for h, _ in delivered]
    assert refused_body in [b for _, b in delivered]


def _final_seen(received: list[tuple[dict[str, str], Any]], generation: str) -> bool:
    return bool(received) and states(received, generation)[-1] in (
        "TASK_STATE_COMPLETED",
        "completed",
    )


@pytest.mark.parametrize("generation", ["1.0", "0.3"])
async def test_a_push_config_in_the_message_notifies_the_end(
    tmp_path: Path, generation: str
) -> None:
    receiver = PushReceiver()
    async with (
        served(receiver.app) as receiver_url,
        serving(make_host(echo_target, tmp_path)) as base_url,
    ):

        async def send() -> Any:
            async with sdk_client(base_url, generation=generation, streaming=False) as client:
                request = send_request("hello")
                config = request.configuration.task_push_notification_config
                config.url = f"{receiver_url}/push"
                [answer] = await collect(client.send_message(request))
                return answer.task

        with anyio.fail_after(TIMEOUT):
            task = await in_client(send)
            await receiver.wait_for(lambda got: _final_seen(got, generation))
    body = receiver.received[-1][1]
    if generation == "0.3":  # the task itself, in v0.3's shape
        assert body["kind"] == "task" and body["id"] == task.id
    else:  # a StreamResponse holding the task
        assert body["task"]["id"] == task.id


async def test_push_urls_to_private_addresses_are_refused_by_default(tmp_path: Path) -> None:
    channel = make_channel(allow_private_push_targets=False)
    async with serving(make_host(echo_target, tmp_path, channel=channel)) as base_url:

        async def scenario() -> list[str]:
            refused: list[str] = []
            async with sdk_client(base_url, streaming=False) as client:
                [answer] = await collect(client.send_message(send_request("hi")))
                for url in (
                    "http://127.0.0.1:8080/hook",
                    "http://localhost/hook",
                    "http://10.1.2.3/hook",
                    "http://169.254.169.254/latest/meta-data",
                    "http://[::1]/hook",
                    "ftp://example.com/hook",
                ):
                    config = pb.TaskPushNotificationConfig(task_id=answer.task.id, url=url)
                    try:
                        await client.create_task_push_notification_config(config)
                    except errors.InvalidParamsError:
                        refused.append(url)
                request = send_request("again")
                request.configuration.task_push_notification_config.url = "http://127.0.0.1/x"
                try:
                    await collect(client.send_message(request))
                except errors.InvalidParamsError:
                    refused.append("in the message")
            return refused

        with anyio.fail_after(TIMEOUT):
            refused = await in_client(scenario)
    assert len(refused) == 7
