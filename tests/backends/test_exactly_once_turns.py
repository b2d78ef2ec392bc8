"""A background turn is applied once, whenever its process dies (SIGKILL).

The session's save and the run's completion are one commit: a process killed after the
save has also completed the run, so the next process never runs the turn again on a
session that already holds it.
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

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def exactly_once_host(
    state_dir: Path, port: int, *, stall: bool
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    env = {"EXACTLY_ONCE_STATE_DIR": str(state_dir), "EXACTLY_ONCE_STALL": "1" if stall else "0"}
    return host_process("tests.exactly_once_app:build_host", port, env)


async def status_of(client: httpx.AsyncClient, token: str) -> dict[str, object]:
    body: dict[str, object] = (await client.get(f"/invocations/{token}")).json()
    return body


async def test_sigkill_after_the_save_never_applies_the_turn_twice(tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        with exactly_once_host(tmp_path, port, stall=True) as first:
            await wait_ready(base_url, timeout=30)
            accepted = await client.post(
                "/invocations/invoke",
                json={"input": "first", "session_id": "s1", "background": True},
            )
            assert accepted.status_code == 202
            token = accepted.json()["token"]
            # Wait until the turn is saved: either the run is complete (one commit) or the
            # process stalls in the window between the save and the completion.
            with anyio.fail_after(20):
                while not (tmp_path / "stalled").exists():
                    if (await status_of(client, token))["status"] == "completed":
                        break
                    await anyio.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)

        with exactly_once_host(tmp_path, port, stall=False):
            await wait_ready(base_url, timeout=30)
            with anyio.fail_after(20):
                while (final := await status_of(client, token))["status"] != "completed":
                    await anyio.sleep(0.1)
            assert final["output"] == "first x1"
            again = await client.post(
                "/invocations/invoke", json={"input": "how many?", "session_id": "s1"}
            )
            assert again.status_code == 200
            assert again.json()["output"] == "first x1"  # the saved history holds it once
