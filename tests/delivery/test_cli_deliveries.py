"""``agenthost deliveries list`` shows the newest first: the dead letter an operator looks
for is the recent one, not the 100 oldest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from agenthost.sansio_core import delivery
from agenthost.sansio_core.delivery import Delivery, FailureKind
from agenthost.sansio_core.types import ChannelIdentity
from agenthost.stores.sqlite import SQLiteStore
from tests.host_process import REPO

pytestmark = pytest.mark.anyio


async def dead_letters(db: Path, count: int) -> None:
    store = SQLiteStore(db)
    await store.open()
    try:
        for n in range(count):
            d = Delivery(
                delivery_id=f"dl_{n:03d}",
                isolation_key="ik",
                channel="telegram",
                identity=ChannelIdentity("telegram", "42"),
                conversation_id="42",
                reply={"text": "private words"},
                echo=None,
                created_at=1000.0 + n,
                next_attempt_at=1000.0 + n,
            )
            await store.schedule_deliveries([d])
            await store.claim_due_deliveries("w", 1000.0 + n, 60.0, 1)
            failed = delivery.SendFailed("w", 1000.5 + n, FailureKind.PERMANENT, "403", 0.0)
            await store.apply_delivery_event(d.delivery_id, failed)
    finally:
        await store.close()


def listed(db: Path, *options: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "agenthost", "deliveries", "list", "--db", str(db), *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


async def test_list_shows_the_newest_dead_letters_first(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    await dead_letters(db, 5)
    newest = await anyio.to_thread.run_sync(lambda: listed(db, "--status", "dead", "--limit", "2"))
    assert [d["delivery_id"] for d in newest] == ["dl_004", "dl_003"]
    assert all("private words" not in json.dumps(d) for d in newest)  # no message text
    oldest = await anyio.to_thread.run_sync(lambda: listed(db, "--limit", "2", "--oldest-first"))
    assert [d["delivery_id"] for d in oldest] == ["dl_000", "dl_001"]
