"""A host killed with SIGKILL mid-run, restarted on the same SQLite file, loses nothing.

The background run is either finished by the new process (attempts remain) or reported
``failed`` with a reason (none remain) — never stuck in ``running``, never gone.
"""

from __future__ import annotations

import signal
import subprocess
from contextlib import AbstractContextManager
from pathlib import Path

import anyio
import httpx
import pytest

from tests.host_process import free_port, host_process
from tests.served import wait_ready


def kill_test_host(
    state_dir: Path, port: int, max_attempts: int
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    env = {"KILL_TEST_STATE_DIR": str(state_dir), "KILL_TEST_MAX_ATTEMPTS": str(max_attempts)}
    return host_process("tests.kill_restart_app:build_host", port, env)


async def poll_until(
    client: httpx.AsyncClient, token: str, statuses: set[str]
) -> dict[str, object]:
    with anyio.fail_after(20):
        while True:
            body: dict[str, object] = (await client.get(f"/invocations/{token}")).json()
            if body["status"] in statuses:
                return body
            await anyio.sleep(0.1)


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.parametrize("max_attempts", [3, 1], ids=["resumed", "failed-with-reason"])
async def test_sigkill_mid_run_then_restart(tmp_path: Path, max_attempts: int) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        with kill_test_host(tmp_path, port, max_attempts) as first:
            await wait_ready(base_url, timeout=30)
            accepted = await client.post(
                "/invocations/invoke", json={"input": "survive", "background": True}
            )
            assert accepted.status_code == 202
            token = accepted.json()["token"]
            running = await poll_until(client, token, {"running"})
            assert running["status"] == "running"
            with anyio.fail_after(10):  # "running" is recorded just before the target starts
                while not (tmp_path / "first-attempt-started").exists():
                    await anyio.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            assert first.returncode == -signal.SIGKILL

        with kill_test_host(tmp_path, port, max_attempts):
            await wait_ready(base_url, timeout=30)
            final = await poll_until(client, token, {"completed", "failed", "cancelled"})

    if max_attempts > 1:
        assert final["status"] == "completed"
        assert final["output"] == "finished after restart: survive"
    else:
        assert final["status"] == "failed"
        error = final["error"]
        assert isinstance(error, dict)
        assert "host stopped" in str(error["message"])
