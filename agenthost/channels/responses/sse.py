"""Response stream events as Server-Sent Events frames: bytes only, no I/O.

:func:`frames` encodes any events. A streamed answer is mostly text deltas, and each
would cost a dict and a JSON encoding of it; :class:`TextDeltaFrames` builds a
``response.output_text.delta`` frame around the JSON-escaped text instead, byte for byte
what :func:`frames` makes of the event :class:`~.events.ResponseEvents` would have built
(its keys in the machine's order, written by :mod:`~agenthost.sansio_core.json_encoders`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agenthost.sansio_core.json_encoders import compact_bytes_encoder

_encode = compact_bytes_encoder()  # built once: a stream encodes one event after another

_SNAPSHOT_EVENT = ("type", "sequence_number", "response")


def frames(batch: Sequence[Mapping[str, Any]]) -> bytes:
    """``event:`` and ``data:`` lines for each event, in order.

    A response object is the bulk of the events that carry one, and events of a batch
    may share it (:meth:`~.events.ResponseEvents.started`): it is encoded once, and such
    an event is written around it.
    """
    encode = _encode
    written: list[bytes] = []
    response: Any = None
    response_json = b""
    for event in batch:
        kind = event["type"]
        written.append(f"event: {kind}\ndata: ".encode())
        if tuple(event) == _SNAPSHOT_EVENT:
            if event["response"] is not response:
                response = event["response"]
                response_json = encode(response)
            written += (
                b'{"type":',
                encode(kind),
                b',"sequence_number":',
                encode(event["sequence_number"]),
                b',"response":',
                response_json,
                b"}\n\n",
            )
        else:
            written += (encode(event), b"\n\n")
    return b"".join(written)


_DELTA = "response.output_text.delta"
_DELTA_HEAD = f'event: {_DELTA}\ndata: {{"type":"{_DELTA}","sequence_number":'.encode()
_DELTA_TAIL = b',"logprobs":[]}\n\n'


class TextDeltaFrames:
    """``response.output_text.delta`` frames of one stream (no ``stream_id``).

    What lies between the sequence number and the text depends only on the item, so it
    is built once per item.
    """

    __slots__ = ("_item_id", "_middle")

    def __init__(self) -> None:
        self._item_id: str | None = None
        self._middle = b""

    def frame(self, sequence_number: int, item_id: str, output_index: int, text: str) -> bytes:
        if item_id != self._item_id:
            self._item_id = item_id
            self._middle = b"".join(
                (
                    b',"item_id":',
                    _encode(item_id),
                    b',"output_index":%d,"content_index":0,"delta":' % output_index,
                )
            )
        return b"".join(
            (_DELTA_HEAD, b"%d" % sequence_number, self._middle, _encode(text), _DELTA_TAIL)
        )
