"""Serving as a user does, in a child process: signals stop it gracefully on both backends,
and every path logs one JSON format with run tokens replaced by references."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from agenthost.sansio_core.types import RunStatus
from agenthost.stores.sqlite import SQLiteStore
from tests.conftest import BACKEND
from tests.host_process import REPO, free_port, host_process
from tests.served import wait_ready

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

APP = "tests.kill_restart_app:build_host"


def app_env(state_dir: Path) -> dict[str, str]:
    return {
        "KILL_TEST_STATE_DIR": str(state_dir),
        "KILL_TEST_MAX_ATTEMPTS": "3",
        "KILL_TEST_GRACE_SECONDS": "0.5",
    }


async def start_long_run(base_url: str, state_dir: Path) -> str:
    """Submit a background run whose target blocks; return its token once it runs."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        accepted = await client.post(
            "/invocations/invoke", json={"input": "long", "background": True}
        )
        assert accepted.status_code == 202, accepted.text
    with anyio.fail_after(15):
        while not (state_dir / "first-attempt-started").exists():
            await anyio.sleep(0.05)
    token: str = accepted.json()["token"]
    return token


async def stored_run(state_dir: Path, token: str) -> Any:
    store = SQLiteStore(state_dir / "state.db")
    try:
        return await store.get_run(token)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("signum", "ignore_sigint"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
    ids=["SIGTERM", "SIGINT", "SIGINT-ignored-by-the-parent"],
)
async def test_a_signal_drains_and_suspends_the_running_run(
    tmp_path: Path, signum: signal.Signals, ignore_sigint: bool
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with host_process(APP, port, app_env(tmp_path), ignore_sigint=ignore_sigint) as process:
        await wait_ready(base_url, timeout=30)
        token = await start_long_run(base_url, tmp_path)
        process.send_signal(signum)
        with anyio.fail_after(20):
            while process.poll() is None:
                await anyio.sleep(0.05)
        assert process.returncode == 0
    # Drained, then suspended: back in the queue, its attempt not spent, for the next start.
    record = await stored_run(tmp_path, token)
    assert record is not None
    assert record.status is RunStatus.QUEUED
    assert record.attempts == 0


SERVE_FROM_PYTHON = (
    "import sys; from tests.kill_restart_app import build_host; "
    "build_host().serve(port=int(sys.argv[1]), backend=sys.argv[2])"
)


def serve_from_python(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``host.serve()`` called from an application's own script, its stderr captured."""
    return subprocess.Popen(
        [sys.executable, "-c", SERVE_FROM_PYTHON, str(port), BACKEND],
        cwd=REPO,
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
    )


async def test_host_serve_logs_json_lines_without_run_tokens(tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    process = serve_from_python(port, app_env(tmp_path))
    try:
        await wait_ready(base_url, timeout=30)
        token = await start_long_run(base_url, tmp_path)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=5)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    loggers = {entry["logger"] for entry in entries}
    assert {"agenthost.host", "hypercorn.error"} <= loggers, loggers
    accepted = [e for e in entries if e["message"] == "background run accepted"]
    assert len(accepted) == 1 and accepted[0]["token_ref"].startswith("ref_")
    assert "token" not in accepted[0]
    assert token not in err.decode()
