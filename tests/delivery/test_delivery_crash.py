"""SIGKILL after a run completed but before its pushes were all sent; restart on the same
SQLite file: every push is delivered, none is sent again to a destination that had
acknowledged, and each is processed once by idempotency key.

The receiver runs in the test process. ``hook_a`` acknowledges at once; ``hook_b`` answers
503 until the first host is dead, so its delivery is still in the outbox at the kill.
"""

from __future__ import annotations

import signal
import subprocess
from contextlib import AbstractContextManager
from pathlib import Path

import anyio
import httpx
import pytest

from agenthost.sansio_core.delivery import DeliveryStatus
from agenthost.stores.sqlite import SQLiteStore
from tests.delivery.receiver import Receiver
from tests.host_process import free_port, host_process
from tests.served import served, wait_ready

TARGET = {"kind": "channels", "channels": ["hook_a", "hook_b"]}
HEADERS = {"x-agent-user-id": "alice", "x-test-trusted": "yes"}


def crash_test_host(
    state_dir: Path, port: int, receiver: str
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    env = {"CRASH_TEST_STATE_DIR": str(state_dir), "CRASH_TEST_RECEIVER": receiver}
    return host_process("tests.delivery.crash_app:build_host", port, env)


async def wait_for(condition: object, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0.05)


@pytest.mark.anyio
@pytest.mark.slow
async def test_sigkill_before_the_pushes_then_restart(tmp_path: Path) -> None:
    receiver = Receiver()
    receiver.script("b", *([503] * 10_000))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    async with (
        served(receiver.app) as receiver_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
    ):
        with crash_test_host(tmp_path, port, receiver_url) as first:
            await wait_ready(base_url, timeout=30)
            accepted = await client.post(
                "/invocations/invoke",
                json={"input": "survive", "response_target": TARGET},
                headers=HEADERS,
            )
            assert accepted.status_code == 202, accepted.text
            token = accepted.json()["token"]
            await wait_for(lambda: receiver.accepted("a") and receiver.to("b"))
            # "acknowledged" means the host recorded it: read the outbox it writes
            delivered_a = f"{token}:hook_a:{polled_key(receiver, 'a')}"
            outbox = SQLiteStore(tmp_path / "state.db")
            try:
                with anyio.fail_after(20):
                    while True:
                        found = await outbox.get_delivery(delivered_a)
                        if found is not None and found.status is DeliveryStatus.DELIVERED:
                            break
                        await anyio.sleep(0.05)
            finally:
                await outbox.close()
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            assert first.returncode == -signal.SIGKILL
        assert not receiver.accepted("b")
        receiver.script("b")  # the destination is back

        with crash_test_host(tmp_path, port, receiver_url):
            await wait_ready(base_url, timeout=30)
            await wait_for(lambda: receiver.accepted("b"))
            await anyio.sleep(1.5)  # time for a wrong second send to show up
            polled = (await client.get(f"/invocations/{token}", headers=HEADERS)).json()

    assert polled["status"] == "completed"
    # hook_a acknowledged before the kill: the new process never sends it again
    assert len(receiver.to("a")) == 1
    # hook_b: delivered once (a send the dead process made may arrive too: the receiver
    # drops it by its idempotency key, as the webhook contract asks)
    assert receiver.accepted("a") == {f"{token}:hook_a:{polled_key(receiver, 'a')}": 1}
    assert receiver.accepted("b") == {f"{token}:hook_b:{polled_key(receiver, 'b')}": 1}
    assert all(r.body["text"] == "answer to survive" for r in receiver.received)


def polled_key(receiver: Receiver, hook: str) -> str:
    [isolation_key] = {r.body["isolation_key"] for r in receiver.to(hook)}
    return str(isolation_key)
