"""Where the A2A channel keeps tasks in the host's store, and who may read them.

Kinds and keys (all within the channel's name):

- ``task``, ``{caller}:{task id}``: the task (v1.0 ProtoJSON), the background run's token,
  the number of the last event the stored task reflects, and whether it has push configs;
- ``event``, ``{task id}:{number:08d}``: one stream event (a v1.0 ``StreamResponse``);
- ``push_config``, ``{task id}:{config id}``: a push-notification config and the
  generation it was set in;
- ``message``, ``{caller}:{digest of messageId}``: which task a message became, so a
  client's retry of the same ``messageId`` finds its task instead of running twice;
- ``push``, by delivery id: the URL, headers and body of one push, for the outbox;
- ``waiting``, ``{caller}:{digest of contextId}``: the task of that context that last
  stopped to wait for input, so a new message on the context is not taken for its answer.

``{caller}`` is a fixed-length digest of the authenticated caller's id: a task is found
only under its caller's prefix, so another caller's task id reads as missing (the
transport answers ``TaskNotFound`` alike for both). Every record's ``owner`` is the
isolation key of the user the run belongs to. Task ids have a fixed length and start
with their creation time, so prefixes never overlap and listing newest first is a key
order. Finished tasks, and everything that belongs to them, expire after the task TTL.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from agenthost.backends.channel import HostServices
from agenthost.backends.ids import ordered_hex
from agenthost.stores.base import ChannelRecord

TASK = "task"
EVENT = "event"
PUSH_CONFIG = "push_config"
MESSAGE = "message"
PUSH = "push"
WAITING = "waiting"

_PAGE = 500


def caller_namespace(caller: str) -> str:
    return hashlib.sha256(caller.encode()).hexdigest()[:32]


def new_task_id(now: float) -> str:
    return f"tsk_{int(now * 1000):012x}{secrets.token_hex(10)}"


def new_context_id() -> str:
    return f"ctx_{ordered_hex()}"  # in minting order: it keys stored records (backends.ids)


def task_key(caller: str, task_id: str) -> str:
    return f"{caller_namespace(caller)}:{task_id}"


def event_key(task_id: str, number: int) -> str:
    return f"{task_id}:{number:08d}"


def waiting_key(caller: str, context_id: str) -> str:
    digest = hashlib.sha256(context_id.encode()).hexdigest()[:32]
    return f"{caller_namespace(caller)}:{digest}"


def message_key(caller: str, message_id: str) -> str:
    digest = hashlib.sha256(message_id.encode()).hexdigest()[:32]
    return f"{caller_namespace(caller)}:{digest}"


class TaskRecords:
    """Typed reads and writes of the channel's records for one host."""

    def __init__(self, channel: str, host: HostServices, *, task_ttl: float) -> None:
        self.channel = channel
        self._host = host
        self.task_ttl = task_ttl

    def now(self) -> float:
        return self._host.now()

    def record(
        self,
        kind: str,
        key: str,
        value: Mapping[str, Any],
        owner: str | None,
        *,
        expires_at: float | None,
    ) -> ChannelRecord:
        return ChannelRecord(
            channel=self.channel,
            kind=kind,
            key=key,
            value=value,
            owner=owner,
            created_at=self._host.now(),
            expires_at=expires_at,
        )

    def expiry(self) -> float:
        return self._host.now() + self.task_ttl

    async def put(self, records: Sequence[ChannelRecord]) -> None:
        if records:
            await self._host.store.put_channel_records(records)

    async def insert(
        self, record: ChannelRecord, *, companions: Sequence[ChannelRecord] = ()
    ) -> bool:
        """Insert ``record`` unless its key exists, and then ``companions`` with it, in one
        write; ``True`` if this call inserted it."""
        inserted = await self._host.store.insert_channel_records(
            [record], companions={record.key: companions} if companions else None
        )
        return record.key in inserted

    async def get(self, kind: str, key: str) -> ChannelRecord | None:
        record = await self._host.store.get_channel_record(self.channel, kind, key)
        if record is None or self.expired(record):
            return None
        return record

    async def task(self, caller: str, task_id: str) -> ChannelRecord | None:
        """The caller's task ``task_id``, or ``None`` (absent, expired or someone else's)."""
        return await self.get(TASK, task_key(caller, task_id))

    async def tasks(self, caller: str, *, after: str | None, limit: int) -> list[ChannelRecord]:
        """The caller's tasks, newest first, strictly past the key ``after`` (expired ones
        included, so a short page means the end: skip them with :meth:`expired`)."""
        return await self._host.store.list_channel_records(
            self.channel,
            TASK,
            prefix=f"{caller_namespace(caller)}:",
            after=after,
            limit=limit,
            descending=True,
        )

    async def events_after(
        self, task_id: str, number: int, limit: int = _PAGE
    ) -> list[tuple[int, Any]]:
        after = event_key(task_id, number) if number > 0 else None
        page = await self._host.store.list_channel_records(
            self.channel, EVENT, prefix=f"{task_id}:", after=after, limit=limit
        )
        return [(int(record.key.rsplit(":", 1)[1]), record.value["event"]) for record in page]

    async def last_event_number(self, task_id: str) -> int:
        page = await self._host.store.list_channel_records(
            self.channel, EVENT, prefix=f"{task_id}:", limit=1, descending=True
        )
        return int(page[0].key.rsplit(":", 1)[1]) if page else 0

    async def push_configs(self, task_id: str) -> list[ChannelRecord]:
        page = await self._host.store.list_channel_records(
            self.channel, PUSH_CONFIG, prefix=f"{task_id}:", limit=_PAGE
        )
        return [record for record in page if not self.expired(record)]

    async def delete(self, kind: str, key: str) -> int:
        return await self._host.store.delete_channel_records(self.channel, kind, prefix=key)

    def expired(self, record: ChannelRecord) -> bool:
        return record.expires_at is not None and record.expires_at <= self._host.now()
