"""Where the Responses channel keeps its own records in the host's store, and who may read them.

Kinds and keys (all within the channel's name):

- ``response``, by response id: the response object as created, its input items
  (``input_items``), its run token when it runs in the background, its conversation, and
  whether it is stored (``store``);
- ``result``, by response id: the final response object of a background run;
- ``input_item``, ``{response id}:{index:06d}``: one input item of a response stored before
  its record held them (read when the record has no ``input_items``, deleted with it);
- ``event``, ``{response id}:{sequence:08d}``: one stream event of a background run
  (these expire after a day);
- ``item``, by item id: an output item of a response stored before output item ids named
  their response (:func:`item_ids`), read for an ``item_reference`` whose id names none and
  deleted with its response; an item whose id names its response is found in that
  response's record;
- ``conversation``, by conversation id: the conversation, the number its next item gets,
  and the items added by the API that its session has not seen yet;
- ``conversation_item``, ``{conversation id}:{number:08d}``: one conversation item;
- ``conversation_item_ref``, ``{conversation id}:{item id}``: that item's number, for
  ``after=`` paging.

Every record's ``owner`` is the authenticated caller. :meth:`Records.owned` answers a
record only to its owner and only while it has not expired; anything else reads as missing,
so the transport answers 404 alike for "no such id" and "someone else's id". Ids the
channel mints have a fixed length, so deleting by a ``{id}:`` prefix never touches another
id's records.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agenthost.backends.channel import HostServices
from agenthost.stores.base import ChannelRecord

RESPONSE = "response"
RESULT = "result"
INPUT_ITEM = "input_item"
EVENT = "event"
ITEM = "item"
CONVERSATION = "conversation"
CONVERSATION_ITEM = "conversation_item"
CONVERSATION_ITEM_REF = "conversation_item_ref"

_PAGE = 500


def item_ids(response_id: str) -> Callable[[str], str]:
    """The ids of one response's output items, in the order they are made: the item kind's
    prefix, the response id's own part and a count (``msg_<that part>_0``), so that an
    item's id names its response (:func:`response_of_item`) and an ``item_reference`` is
    resolved from the response's record, with no record per item. The same response renders
    the same ids again. Unguessable as the response id is, and read only by its owner."""
    stem = response_id.removeprefix("resp_")
    count = itertools.count()
    return lambda prefix: f"{prefix}_{stem}_{next(count)}"


def response_of_item(item_id: str) -> str | None:
    """The id of the response whose output item ``item_id`` is, if the id says (see
    :func:`item_ids`); ``None`` for any other id."""
    head, _, number = item_id.rpartition("_")
    stem = head.rpartition("_")[2]
    if not stem or not number.isdigit():
        return None
    return f"resp_{stem}"


def event_key(response_id: str, sequence: int) -> str:
    return f"{response_id}:{sequence:08d}"


def conversation_item_key(conversation_id: str, number: int) -> str:
    return f"{conversation_id}:{number:08d}"


class Records:
    """The channel's records for one host: typed reads with the ownership check built in."""

    def __init__(
        self,
        channel: str,
        host: HostServices,
        *,
        response_ttl: float | None,
        event_ttl: float,
    ) -> None:
        self._channel = channel
        self._host = host
        self._response_ttl = response_ttl
        self._event_ttl = event_ttl

    def now(self) -> float:
        return self._host.now()

    def record(
        self,
        kind: str,
        key: str,
        value: Mapping[str, Any],
        owner: str,
        *,
        expires: bool = True,
    ) -> ChannelRecord:
        """A record to put; responses and their items expire with the response TTL."""
        now = self._host.now()
        ttl = self._event_ttl if kind == EVENT else self._response_ttl
        expires_at = now + ttl if expires and ttl is not None else None
        return ChannelRecord(
            channel=self._channel,
            kind=kind,
            key=key,
            value=value,
            owner=owner,
            created_at=now,
            expires_at=expires_at,
        )

    async def put(self, records: Sequence[ChannelRecord]) -> None:
        if records:
            await self._host.store.put_channel_records(records)

    async def owned(self, kind: str, key: str, caller: str) -> ChannelRecord | None:
        record = await self._host.store.get_channel_record(self._channel, kind, key)
        if record is None or record.owner != caller or self._expired(record):
            return None
        return record

    async def change(
        self,
        kind: str,
        key: str,
        caller: str,
        make: Callable[[ChannelRecord], Sequence[ChannelRecord]],
    ) -> list[ChannelRecord]:
        """Put what ``make`` makes of the caller's live record, atomically on every replica
        (``Store.change_channel_record``); return what was put (nothing without one)."""

        def change(record: ChannelRecord | None) -> Sequence[ChannelRecord]:
            if record is None or record.owner != caller or self._expired(record):
                return []
            return make(record)

        return await self._host.store.change_channel_record(self._channel, kind, key, change)

    async def get(self, kind: str, key: str) -> ChannelRecord | None:
        """A record whatever its owner: for the channel's own bookkeeping only."""
        record = await self._host.store.get_channel_record(self._channel, kind, key)
        if record is None or self._expired(record):
            return None
        return record

    async def list_records(
        self,
        kind: str,
        prefix: str,
        *,
        after: str | None = None,
        limit: int = _PAGE,
        descending: bool = False,
    ) -> list[ChannelRecord]:
        return await self._host.store.list_channel_records(
            self._channel, kind, prefix=prefix, after=after, limit=limit, descending=descending
        )

    async def all_values(self, kind: str, prefix: str, name: str) -> list[Any]:
        """``value[name]`` of every record under ``prefix``, in key order."""
        values: list[Any] = []
        after: str | None = None
        while True:
            page = await self.list_records(kind, prefix, after=after)
            values += [record.value[name] for record in page]
            if len(page) < _PAGE:
                return values
            after = page[-1].key

    async def delete(self, kind: str, prefix: str) -> int:
        return await self._host.store.delete_channel_records(self._channel, kind, prefix=prefix)

    # --- the event log of background responses --------------------------------------

    def event_records(
        self, response_id: str, events: Sequence[Mapping[str, Any]], owner: str
    ) -> list[ChannelRecord]:
        return [
            self.record(
                EVENT, event_key(response_id, event["sequence_number"]), {"event": event}, owner
            )
            for event in events
        ]

    async def events_after(
        self, response_id: str, sequence: int, limit: int
    ) -> list[dict[str, Any]]:
        after = event_key(response_id, sequence) if sequence >= 0 else None
        page = await self.list_records(EVENT, f"{response_id}:", after=after, limit=limit)
        return [dict(record.value["event"]) for record in page]

    async def last_sequence(self, response_id: str) -> int:
        """The last stored event's sequence number (-1 if none)."""
        page = await self.list_records(EVENT, f"{response_id}:", limit=1, descending=True)
        return int(page[0].value["event"]["sequence_number"]) if page else -1

    def _expired(self, record: ChannelRecord) -> bool:
        return record.expires_at is not None and record.expires_at <= self._host.now()
