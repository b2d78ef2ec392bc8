"""SIGTERM while a Telegram push is in flight, then a restart: no part is sent twice.

A real ``agenthost serve`` child process polls the fake Bot API served by the test. Its
reply (two messages, pushed by the outbox) is interrupted by SIGTERM while Telegram has
taken the second part but not answered. After a restart on the same state directory the
delivery is ``unknown`` with one part recorded, and nothing is resent blindly; an
operator's replay (``agenthost deliveries replay``) sends only the part not recorded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests.channels.telegram.conftest import fake_bot_api
from tests.channels.telegram.telegram_updates import message, private_chat
from tests.delivery.telegram_shutdown_app import LONG_ANSWER
from tests.host_process import REPO, free_port, host_process
from tests.served import wait_ready

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

APP = "tests.delivery.telegram_shutdown_app:build_host"
ACKNOWLEDGED = "Got it. The answer will be delivered where you asked for it."


def deliveries(state_dir: Path, *args: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "agenthost", "deliveries", *args, "--state-dir", str(state_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


async def test_sigterm_during_a_push_never_sends_a_part_twice(tmp_path: Path) -> None:
    ada = 940_000_001
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    async with fake_bot_api() as (fake, api_url):
        env = {"TG_SHUTDOWN_STATE_DIR": str(tmp_path), "TG_SHUTDOWN_API": api_url}
        fake.stall_sends(after=2)  # the acknowledgement and the first part go out
        with host_process(APP, port, env) as first:
            await wait_ready(base_url, timeout=30)
            fake.enqueue(
                message(fake.next_update_id(), user_id=ada, chat=private_chat(ada), text="go")
            )
            with anyio.fail_after(30):
                await fake.stalled.wait()  # Telegram has the second part; no answer yet
            first.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(lambda: first.wait(timeout=30))
            assert first.returncode == 0  # it drained and stopped; it was not killed
        fake.unstall.set()
        sent = [m.text for m in fake.sent_to(ada)]
        assert sent[0] == ACKNOWLEDGED and len(sent) == 3

        polls = len(fake.called("getUpdates"))
        with host_process(APP, port, env):
            await wait_ready(base_url, timeout=30)
            await fake.wait_until(lambda: len(fake.called("getUpdates")) > polls + 1, 30)
            await anyio.sleep(1.5)  # a blind resend would be on its way by now
            assert [m.text for m in fake.sent_to(ada)] == sent

            [unknown] = deliveries(tmp_path, "list", "--status", "unknown")
            assert unknown["parts_sent"] == 1 and unknown["attempts"] == 1
            # The operator checked the chat and lost the second part: a replay sends what
            # was not recorded, the second part only.
            deliveries(tmp_path, "replay", str(unknown["delivery_id"]))
            await fake.wait_until(lambda: len(fake.sent_to(ada)) == 4, 30)
    first_part, second_part, again = sent[1], sent[2], fake.sent_to(ada)[3].text
    assert first_part.startswith("word0 ") and second_part.endswith("word699")
    assert again == second_part
    assert (first_part + " " + second_part).split() == LONG_ANSWER.split()
