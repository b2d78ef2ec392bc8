"""One cattrs converter for everything a store writes.

Records are stored as JSON text. Enums are stored by value, mappings as plain dicts, and a
request's ``input`` is either a tuple of host messages or a JSON value a ``run_hook`` put
there, tagged so it reads back as it was written. Pickle is never used. The schema version
these shapes belong to is ``stores.base.SCHEMA_VERSION``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import attrs
import cattrs

from agenthost.sansio_core import leases
from agenthost.sansio_core.background import RunRecord
from agenthost.sansio_core.delivery import Delivery
from agenthost.sansio_core.json_encoders import compact_encoder
from agenthost.sansio_core.types import ContentPart, FunctionCall, HostMessage, TextPart, UriPart

T = TypeVar("T")

converter = cattrs.Converter()


def _unstructure_part(part: ContentPart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    return {"type": "uri", "uri": part.uri, "media_type": part.media_type}


def _structure_part(data: Mapping[str, Any], _: Any) -> ContentPart:
    if data["type"] == "text":
        return TextPart(data["text"])
    if data["type"] == "uri":
        return UriPart(data["uri"], data.get("media_type"))
    raise ValueError(f"unknown content part type {data['type']!r}")


def unstructure_message(message: HostMessage) -> dict[str, Any]:
    data: dict[str, Any] = {
        "role": message.role,
        "parts": [_unstructure_part(part) for part in message.parts],
    }
    # Written only when set, so a plain message keeps the shape older records have.
    if message.function_calls:
        data["function_calls"] = [
            {"call_id": c.call_id, "name": c.name, "arguments": c.arguments}
            for c in message.function_calls
        ]
    if message.tool_call_id is not None:
        data["tool_call_id"] = message.tool_call_id
    return data


def structure_message(data: Mapping[str, Any], _: Any = None) -> HostMessage:
    return HostMessage(
        data["role"],
        tuple(_structure_part(part, None) for part in data["parts"]),
        tuple(
            FunctionCall(c["call_id"], c["name"], c["arguments"])
            for c in data.get("function_calls", ())
        ),
        data.get("tool_call_id"),
    )


def unstructure_messages(messages: Iterable[HostMessage]) -> list[dict[str, Any]]:
    return [unstructure_message(message) for message in messages]


def structure_messages(data: Iterable[Mapping[str, Any]]) -> list[HostMessage]:
    return [structure_message(message) for message in data]


converter.register_unstructure_hook(TextPart, _unstructure_part)
converter.register_unstructure_hook(UriPart, _unstructure_part)
converter.register_structure_hook(ContentPart, _structure_part)
# Histories are the bulk of what a store reads and writes per turn: these two shapes get
# direct hooks rather than cattrs' generic per-field dispatch.
converter.register_unstructure_hook(HostMessage, unstructure_message)
converter.register_structure_hook(HostMessage, structure_message)


def unstructure_input(value: Any) -> dict[str, Any]:
    """Tag a request input so it reads back with the same shape."""
    if isinstance(value, tuple) and all(isinstance(m, HostMessage) for m in value):
        return {"kind": "messages", "messages": converter.unstructure(list(value))}
    json.dumps(value)  # fail now, with the value's own error, rather than half-write a record
    return {"kind": "json", "value": value}


def structure_input(data: Mapping[str, Any]) -> Any:
    if data["kind"] == "messages":
        return tuple(converter.structure(data["messages"], list[HostMessage]))
    if data["kind"] == "json":
        return data["value"]
    raise ValueError(f"unknown input kind {data['kind']!r}")


# Built once: see json_encoders.
to_json = compact_encoder(sort_keys=True)

# A session's state as the target adapter made it (JSON-shaped already), keys in its order;
# a NaN is refused rather than stored as a token other JSON readers refuse.
to_state_json = compact_encoder(allow_nan=False)


def dump(value: Any) -> str:
    return to_json(converter.unstructure(value))


def load(text: str, cls: type[T]) -> T:
    return converter.structure(json.loads(text), cls)


def dump_run(record: RunRecord) -> str:
    data = converter.unstructure(record)
    data["request"]["input"] = unstructure_input(record.request.input)
    return to_json(data)


def load_run(text: str) -> RunRecord:
    data = json.loads(text)
    request_input = structure_input(data["request"]["input"])
    data["request"]["input"] = None
    record = converter.structure(data, RunRecord)
    return attrs.evolve(record, request=attrs.evolve(record.request, input=request_input))


# A lease is written twice and read once or twice every turn: it gets its own encoder and
# decoder rather than cattrs' generic walk. Both produce exactly what ``dump`` and ``load``
# do (keys in sorted order, cattrs' conversions of each field), so stored text is unchanged.
_COMPACT = compact_encoder()


def dump_lease(state: leases.LeaseState) -> str:
    return _COMPACT(
        {
            "expires_at": state.expires_at,
            "grants": state.grants,
            "holder": state.holder,
            "interrupt_requested": state.interrupt_requested,
            "session_id": state.session_id,
            "waiters": [
                {"expires_at": waiter.expires_at, "run_id": waiter.run_id}
                for waiter in state.waiters
            ],
        }
    )


def load_lease(text: str) -> leases.LeaseState:
    data = json.loads(text)
    holder = data.get("holder")
    return leases.LeaseState(
        str(data["session_id"]),
        None if holder is None else str(holder),
        float(data.get("expires_at", 0.0)),
        bool(data.get("interrupt_requested", False)),
        tuple(
            leases.Waiter(str(waiter["run_id"]), float(waiter["expires_at"]))
            for waiter in data.get("waiters", ())
        ),
        int(data.get("grants", 0)),
    )


def load_delivery(text: str) -> Delivery:
    return load(text, Delivery)
