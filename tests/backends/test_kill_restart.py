"""A host killed with SIGKILL mid-run, restarted on the same SQLite file, loses nothing.

The background run is either finished by the new process (attempts remain) or reported
``failed`` with a reason (none remain) — never stuck in ``running``, never gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from agenthost.backends.serving import bound_socket
from tests.conftest import BACKEND
from tests.served import wait_ready

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    sock = bound_socket("127.0.0.1")
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


@contextmanager
def host_process(
    state_dir: Path, port: int, max_attempts: int
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "KILL_TEST_STATE_DIR": str(state_dir),
        "KILL_TEST_MAX_ATTEMPTS": str(max_attempts),
    }
    command = [
        sys.executable, "-m", "agenthost", "serve", "tests.kill_restart_app:build_host",
        "--port", str(port), "--backend", BACKEND, "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if process.stderr is not None:
            process.stderr.close()


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
        with host_process(tmp_path, port, max_attempts) as first:
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

        with host_process(tmp_path, port, max_attempts):
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
