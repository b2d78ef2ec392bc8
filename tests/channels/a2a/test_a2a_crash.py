"""A host killed with SIGKILL mid-task, restarted on the same SQLite file: the A2A task is
finished by the new process (attempts remain) or ends ``failed`` (none remain) — never
left ``working``, never gone. Driven by the real ``a2a-sdk`` client."""

from __future__ import annotations

import signal
import subprocess
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest
from a2a.types import a2a_pb2 as pb

from tests.channels.a2a.support import (
    artifact_text,
    collect,
    in_client,
    sdk_client,
    send_request,
)
from tests.host_process import free_port, host_process
from tests.served import wait_ready

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def crash_host(state_dir: Path, port: int, attempts: int) -> AbstractContextManager[Any]:
    env = {"A2A_CRASH_STATE_DIR": str(state_dir), "A2A_CRASH_MAX_ATTEMPTS": str(attempts)}
    return host_process("tests.channels.a2a.crash_app:build_host", port, env)


@pytest.mark.parametrize("attempts", [3, 1], ids=["resumed", "failed"])
async def test_sigkill_mid_task_then_restart(tmp_path: Path, attempts: int) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"

    async def submit() -> Any:
        async with sdk_client(base_url, streaming=False, polling=True) as client:
            [answer] = await collect(client.send_message(send_request("survive")))
            return answer.task

    async def settled(task_id: str) -> Any:
        async with sdk_client(base_url, streaming=False) as client:
            with anyio.fail_after(20):
                while True:
                    task = await client.get_task(pb.GetTaskRequest(id=task_id))
                    if task.status.state in (pb.TASK_STATE_COMPLETED, pb.TASK_STATE_FAILED):
                        return task
                    await anyio.sleep(0.1)

    with anyio.fail_after(60):
        first: subprocess.Popen[bytes]
        with crash_host(tmp_path, port, attempts) as first:
            await wait_ready(base_url, timeout=30)
            task = await in_client(submit)
            while not (tmp_path / "first-attempt-started").exists():
                await anyio.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        with crash_host(tmp_path, port, attempts):
            await wait_ready(base_url, timeout=30)
            final = await in_client(lambda: settled(task.id))
    if attempts > 1:
        assert final.status.state == pb.TASK_STATE_COMPLETED
        assert artifact_text(final) == "finished after restart: survive"
    else:
        assert final.status.state == pb.TASK_STATE_FAILED
        assert final.status.message.parts[0].text == "The agent could not complete this task."
