"""The SQLite store reads back a delivery row it wrote itself without decoding it again,
and only when the row still holds exactly what it wrote: a change by another process (here
a second store on the same file) is always seen."""

from __future__ import annotations

from pathlib import Path

import pytest

from agenthost.sansio_core import delivery
from agenthost.sansio_core.delivery import DeliveryStatus
from agenthost.stores.sqlite import SQLiteStore
from tests.stores.test_delivery_contract import make_delivery

pytestmark = pytest.mark.anyio


async def test_a_row_another_process_changed_is_read_as_it_now_is(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    here, elsewhere = SQLiteStore(path), SQLiteStore(path)
    await here.open()
    await elsewhere.open()
    try:
        await here.schedule_deliveries([make_delivery("d1")])
        [claimed] = await here.claim_due_deliveries("worker-a", 20.0, 60.0, 10)
        assert claimed.status is DeliveryStatus.SENDING
        # Read back unchanged: the very value this store wrote.
        assert await here.get_delivery("d1") is claimed

        # The other process finds the lease expired, recovers the send and claims it again.
        recover = delivery.Recover(100.0, idempotent_push=True)
        recovered = await elsewhere.apply_delivery_event("d1", recover)
        assert recovered.status is DeliveryStatus.SCHEDULED
        [taken] = await elsewhere.claim_due_deliveries("worker-b", 100.0, 60.0, 10)

        assert await here.get_delivery("d1") == taken
        assert [d.owner for d in await here.list_deliveries([DeliveryStatus.SENDING])] == [
            "worker-b"
        ]
        # This worker's late Sent is refused: the delivery is worker-b's now.
        [answer] = await here.apply_delivery_events([("d1", delivery.Sent("worker-a", 101.0))])
        assert not isinstance(answer, delivery.Delivery)
        [done] = await here.apply_delivery_events([("d1", delivery.Sent("worker-b", 102.0))])
        assert isinstance(done, delivery.Delivery)
        assert done.status is DeliveryStatus.DELIVERED
        assert await elsewhere.get_delivery("d1") == done
    finally:
        await here.close()
        await elsewhere.close()
