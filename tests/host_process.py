"""A host served by `agenthost serve` in a child process, for tests that kill it.

The child runs the real CLI on 127.0.0.1 under the suite's backend; on exit it is stopped
gracefully (SIGTERM), and killed if it does not stop in time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import anyio

from agenthost.backends.serving import bound_socket
from tests.conftest import BACKEND

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    sock = bound_socket("127.0.0.1")
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def host_process(
    target: str,
    port: int,
    env: Mapping[str, str],
    *,
    ignore_sigint: bool = False,
    stderr: int | None = subprocess.DEVNULL,
    cwd: Path = REPO,
) -> Iterator[subprocess.Popen[bytes]]:
    """Serve ``target`` (``module:factory``) on ``port``; yield the process.

    ``ignore_sigint``: start it with SIGINT ignored, as a non-interactive shell starts a
    background job.
    """
    command = [
        sys.executable, "-m", "agenthost", "serve", target,
        "--port", str(port), "--backend", BACKEND, "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, **env},
        stderr=stderr,
        preexec_fn=_ignore_sigint if ignore_sigint else None,
    )
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


async def stop_processes(processes: Sequence[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    """SIGTERM each live process and wait for them without blocking the event loop.

    A fake platform served by this test process must keep answering while the hosts drain:
    a host finishing its last reply waits for the fake's answer to it.
    """
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    with anyio.move_on_after(timeout):
        while any(process.poll() is None for process in processes):
            await anyio.sleep(0.05)
