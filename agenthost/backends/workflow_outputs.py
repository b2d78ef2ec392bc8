"""What a workflow turn produced, in the forms channels render: text, JSON data, a question.

A workflow yields outputs of any type. Channels that carry data (Invocations, Responses'
structured output) want them as JSON; chat channels want text. A workflow may also stop
to ask the user something (``ctx.request_info``): the turn then ends with an
``InputRequest`` that every channel shows as a question, and the session's next message
answers it. This module owns those renderings and nothing else: no I/O, no framework
calls beyond reading attributes, so channels may import it freely.

Rules:

1. A string output is text. An agent's response or streamed update is its ``text``.
2. A structured output (a pydantic model, a dataclass, an attrs instance, a mapping or a
   list) is JSON data; its text is that JSON, so a chat user still sees the values.
3. Anything else is text through ``str``, and carries no data.
4. A question's text is the request's own text: a string, or the first of its ``prompt``,
   ``question``, ``message`` or ``text`` attributes that is a string, else its JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

_PROMPT_FIELDS = ("prompt", "question", "message", "text")


@attrs.frozen
class InputRequest:
    """A question a paused workflow asks; the session's next message answers it."""

    request_id: str
    text: str
    data: Any = None  # the request's JSON form, for channels that carry data


@attrs.frozen
class WorkflowTurn:
    """One workflow turn: its outputs as yielded, their text and JSON, and open questions.

    ``data`` holds one JSON value per structured output (empty when every output is
    text). ``input_requests`` is non-empty when the workflow paused for input.
    """

    outputs: tuple[Any, ...]
    text: str
    data: tuple[Any, ...] = ()
    input_requests: tuple[InputRequest, ...] = ()

    @property
    def status(self) -> Literal["completed", "input_required"]:
        return "input_required" if self.input_requests else "completed"

    @property
    def finish_reason(self) -> str | None:
        """Read by channels that report why a response stopped short (Responses)."""
        return "input_required" if self.input_requests else None

    @property
    def messages(self) -> list[Any]:
        """The turn as assistant messages, the shape channels render an agent's answer from:
        an agent's response keeps its own messages; any other output, and each question, is
        one text message."""
        found: list[Any] = []
        for output in self.outputs:
            inner = getattr(output, "messages", None) if _is_framework_message(output) else None
            if isinstance(inner, list):
                found.extend(inner)
            else:
                found.append(_text_message(output_text(output)))
        found.extend(_text_message(request.text) for request in self.input_requests)
        return found

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with a background run's result: an agent response's shape
        (``messages``, ``finish_reason``) plus the workflow's own fields."""
        return {
            "status": self.status,
            "text": self.text,
            "data": list(self.data),
            "input_requests": [
                {"request_id": r.request_id, "text": r.text, "data": r.data}
                for r in self.input_requests
            ],
            "messages": [_json_copy(_as_dict(m)) for m in self.messages],
            "finish_reason": self.finish_reason,
        }


def structured_output(value: Any) -> Any | None:
    """The JSON form of a structured output, or ``None`` when it is not one (rules 1-3)."""
    if isinstance(value, str) or value is None:
        return None
    dump = getattr(value, "model_dump", None)  # pydantic v2
    if callable(dump) and not isinstance(value, type):
        return _json_copy(dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_copy(dataclasses.asdict(value))
    if attrs.has(type(value)):
        return _json_copy(attrs.asdict(value))
    if isinstance(value, Mapping) or (
        isinstance(value, Sequence) and not isinstance(value, bytes | bytearray)
    ):
        return _json_copy(value)
    return None


def output_text(value: Any) -> str:
    """The text a chat user sees for one output (rules 1-3)."""
    if isinstance(value, str):
        return value
    text = getattr(value, "text", None)
    if isinstance(text, str) and _is_framework_message(value):
        return text
    data = structured_output(value)
    if data is not None:
        return json.dumps(data, ensure_ascii=False)
    return str(value)


def question_text(value: Any) -> str:
    """The text of a workflow's request for input (rule 4)."""
    if isinstance(value, str):
        return value
    for name in _PROMPT_FIELDS:
        field = getattr(value, name, None)
        if isinstance(field, str) and field:
            return field
    return output_text(value)


def _is_framework_message(value: Any) -> bool:
    # Agent responses, updates and messages: text is what they say; their fields are not data.
    return type(value).__module__.startswith("agent_framework")


def _text_message(text: str) -> dict[str, Any]:
    return {"role": "assistant", "contents": [{"type": "text", "text": text}]}


def _as_dict(message: Any) -> Any:
    to_dict = getattr(message, "to_dict", None)
    return to_dict() if callable(to_dict) else message


def _json_copy(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
