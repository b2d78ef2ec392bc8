"""Response stream events as Server-Sent Events frames: bytes only, no I/O.

:func:`frames` encodes any events. A streamed answer is mostly text deltas, and each
would cost a dict and a JSON encoding of it; :class:`TextDeltaFrames` builds a
``response.output_text.delta`` frame around the JSON-escaped text instead, byte for byte
what :func:`frames` makes of the event :class:`~.events.ResponseEvents` would have built
(its keys in the machine's order, compact separators, ASCII escapes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

from agenthost.sansio_core.json_encoders import compact_encoder

_encode = compact_encoder()  # built once: a stream encodes one event after another

_SNAPSHOT_EVENT = ("type", "sequence_number", "response")


def frames(batch: Sequence[Mapping[str, Any]]) -> bytes:
    """``event:`` and ``data:`` lines for each event, in order.

    A response object is the bulk of the events that carry one, and events of a batch
    may share it (:meth:`~.events.ResponseEvents.started`): it is encoded once, and such
    an event is written around it.
    """
    encode = _encode
    written = []
    response: Any = None
    response_json = ""
    for event in batch:
        kind = event["type"]
        if tuple(event) == _SNAPSHOT_EVENT:
            if event["response"] is not response:
                response = event["response"]
                response_json = encode(response)
            sequence_number = encode(event["sequence_number"])
            data = (
                f'{{"type":{encode(kind)},"sequence_number":{sequence_number},'
                f'"response":{response_json}}}'
            )
        else:
            data = encode(event)
        written.append(f"event: {kind}\ndata: {data}\n\n")
    return "".join(written).encode()


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
            self._middle = (
                f',"item_id":{encode_basestring_ascii(item_id)}'
                f',"output_index":{output_index},"content_index":0,"delta":'
            ).encode()
        return b"".join(
            (
                _DELTA_HEAD,
                b"%d" % sequence_number,
                self._middle,
                encode_basestring_ascii(text).encode(),
                _DELTA_TAIL,
            )
        )
