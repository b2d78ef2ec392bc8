"""The Invocations wire format, both ways, with no I/O.

Inbound: a JSON body ``{"input": ..., "session_id"?, "session_mode"?, "stream"?,
"background"?, "response_target"?}``. ``input`` is a string, a list of messages
(``{"role", "content"}`` with string content or ``text``/``input_text``/``image_url``/
``input_image`` parts), one such message, or (only where the channel takes typed input)
any other JSON object: a typed input for a workflow, which a ``run_hook`` adapts. Every
shape is checked here, before anything runs: a malformed message, an image whose URI no
target can read, or an object where no typed input is taken is a 4xx. Outbound: JSON
replies, Server-Sent Events and errors ``{"error": {"code", "message"}}``; a workflow's
reply adds its structured outputs (``data``) and, when it waits for the user,
``status: "input_required"`` with its ``input_requests`` (the session's next input answers
the first). Foundry platform headers of both generations are read here but trusted only
when the transport says the deployment sets them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from agenthost.backends.workflow_outputs import WorkflowTurn
from agenthost.sansio_core import strict_json
from agenthost.sansio_core.json_encoders import compact_encoder
from agenthost.sansio_core.media_uris import media_uri_problem
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ContentPart,
    ContinuationToken,
    HostMessage,
    ResponseTarget,
    SessionMode,
    TextPart,
    UriPart,
)
from agenthost.sansio_core.values import builds_fast

ANONYMOUS = "anonymous"
_ID_PATTERN = re.compile(r"[A-Za-z0-9\-_.:]{1,256}")  # always fullmatch: "$" allows a "\n"
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_MESSAGE_KEYS = frozenset({"role", "content", "type"})
MAX_MESSAGES = 256


class InvocationError(Exception):
    """Bad input from the caller: answered with ``status`` and a JSON error, nothing else."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@builds_fast  # one a request
@attrs.frozen
class InvocationBody:
    input: Any
    session_id: str | None = None
    session_mode: SessionMode = SessionMode.AUTO
    stream: bool = False
    background: bool = False
    response_target: ResponseTarget = attrs.field(factory=ResponseTarget)


def parse_body(raw: bytes, *, typed_input: bool = False) -> InvocationBody:
    try:
        data = strict_json.loads(raw)
    except strict_json.JsonRefused as refused:
        raise InvocationError(400, "invalid_json", refused.reason) from None
    if not isinstance(data, dict):
        raise InvocationError(400, "invalid_request", "The request body must be a JSON object.")
    if "input" not in data or data["input"] is None:
        raise InvocationError(422, "missing_input", "The request has no 'input'.")
    session_id = data.get("session_id")
    if session_id is not None and (
        not isinstance(session_id, str) or not _ID_PATTERN.fullmatch(session_id)
    ):
        raise InvocationError(
            422,
            "invalid_session_id",
            "'session_id' must be 1-256 characters of letters, digits, '-', '_', '.' or ':'.",
        )
    stream = _flag(data, "stream")
    background = _flag(data, "background")
    if stream and background:
        raise InvocationError(
            422, "invalid_request", "'stream' and 'background' cannot both be true."
        )
    target = parse_response_target(data.get("response_target"))
    if stream and not target.is_originating:
        raise InvocationError(
            422, "invalid_request", "'stream' needs the originating 'response_target'."
        )
    return InvocationBody(
        input=parse_input(data["input"], typed_input=typed_input),
        session_id=session_id,
        session_mode=_session_mode(data.get("session_mode")),
        stream=stream,
        background=background,
        response_target=target,
    )


_ORIGINATING = ResponseTarget.originating()  # frozen: every request may share it
_TARGET_KINDS = ("originating", "active", "channel", "channels", "identities", "all_linked", "none")


def parse_response_target(value: Any) -> ResponseTarget:
    """``"active"`` or ``{"kind", "channels"?, "identities"?, "echo_input"?}``.

    Whether the caller may choose it is the host's decision, not the codec's.
    """
    if value is None:
        return _ORIGINATING
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict) or value.get("kind") not in _TARGET_KINDS:
        raise InvocationError(
            422,
            "invalid_response_target",
            f"'response_target.kind' must be one of {', '.join(_TARGET_KINDS)}.",
        )
    kind = value["kind"]
    echo = _flag(value, "echo_input")
    if kind in ("channel", "channels"):
        names = value.get("channels", [value["channel"]] if "channel" in value else None)
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise InvocationError(
                422, "invalid_response_target", "'response_target.channels' must name channels."
            )
        return ResponseTarget.to_channels(names, echo_input=echo)
    if kind == "identities":
        found = value.get("identities")
        if (
            not isinstance(found, list)
            or not found
            or not all(
                isinstance(i, dict)
                and isinstance(i.get("channel"), str)
                and isinstance(i.get("native_id"), str)
                for i in found
            )
        ):
            raise InvocationError(
                422,
                "invalid_response_target",
                '\'response_target.identities\' must list {"channel", "native_id"} objects.',
            )
        identities = [ChannelIdentity(i["channel"], i["native_id"]) for i in found]
        return ResponseTarget.to_identities(identities, echo_input=echo)
    if kind == "all_linked":
        return ResponseTarget.all_linked(echo_input=echo)
    if kind == "active":
        return ResponseTarget.active()
    if kind == "none":
        return ResponseTarget.none()
    return ResponseTarget.originating()


def parse_input(value: Any, *, typed_input: bool = False) -> Any:
    """Messages as host messages; with ``typed_input``, any other JSON object (one with no
    ``role``, ``content`` or ``type``) passes through as a typed input."""
    if isinstance(value, str):
        if not value.strip():
            raise InvocationError(422, "invalid_input", "'input' must not be empty.")
        return (HostMessage.user(value),)
    if isinstance(value, list):
        if not value:
            raise InvocationError(422, "invalid_input", "'input' must not be an empty list.")
        if len(value) > MAX_MESSAGES:
            raise InvocationError(
                422, "invalid_input", f"'input' may hold at most {MAX_MESSAGES} messages."
            )
        return tuple(_message(item, f"input[{i}]") for i, item in enumerate(value))
    if isinstance(value, dict):
        if _MESSAGE_KEYS & value.keys():
            return (_message(value, "input"),)  # meant as a message: it must be a valid one
        if typed_input:
            return value
        raise InvocationError(
            422,
            "invalid_input",
            "'input' must be a string, a message or a list of messages; this agent takes "
            "no typed input.",
        )
    raise InvocationError(
        422, "invalid_input", "'input' must be a string, a message or a list of messages."
    )


def _message(item: Any, where: str) -> HostMessage:
    if isinstance(item, str):
        return HostMessage.user(item)
    if not isinstance(item, dict):
        raise InvocationError(422, "invalid_input", f"{where} must be a string or a message.")
    role = item.get("role", "user")
    if not isinstance(role, str) or role not in _ROLES:
        raise InvocationError(
            422, "invalid_input", f"{where}.role must be one of {', '.join(sorted(_ROLES))}."
        )
    content = item.get("content")
    if isinstance(content, str):
        return HostMessage(role=role, parts=(TextPart(content),))
    if isinstance(content, list) and content:
        return HostMessage(
            role=role, parts=tuple(_part(p, f"{where}.content[{i}]") for i, p in enumerate(content))
        )
    raise InvocationError(
        422, "invalid_input", f"{where}.content must be a string or a non-empty list of parts."
    )


def _part(part: Any, where: str) -> ContentPart:
    if isinstance(part, str):
        return TextPart(part)
    if not isinstance(part, dict):
        raise InvocationError(422, "invalid_input", f"{where} must be an object.")
    kind = part.get("type")
    if kind in ("text", "input_text") and isinstance(part.get("text"), str):
        return TextPart(part["text"])
    if kind in ("image_url", "input_image"):
        url = part.get("image_url")
        if isinstance(url, dict):
            url = url.get("url")
        media_type = part.get("media_type")
        if isinstance(url, str) and url and (media_type is None or isinstance(media_type, str)):
            problem = media_uri_problem(url)
            if problem is not None:
                raise InvocationError(422, "invalid_input", f"{where}.image_url: {problem}.")
            return UriPart(url, media_type)
    raise InvocationError(
        422, "invalid_input", f"{where} must be a text or image part with its value."
    )


def _flag(data: Mapping[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise InvocationError(422, "invalid_request", f"'{name}' must be true or false.")
    return value


def _session_mode(value: Any) -> SessionMode:
    if value is None:
        return SessionMode.AUTO
    try:
        return SessionMode(value)
    except ValueError:
        raise InvocationError(
            422, "invalid_request", "'session_mode' must be 'auto', 'required' or 'disabled'."
        ) from None


# --- platform headers ---------------------------------------------------------------


@attrs.frozen
class PlatformCaller:
    """Who the platform says is calling, when the deployment trusts its headers."""

    user_id: str
    conversation_id: str | None


def platform_caller(headers: Mapping[str, str]) -> PlatformCaller | None:
    """Read both Foundry header generations; the newer (2.0) wins when both are present."""
    user = headers.get("x-agent-user-id") or headers.get("x-agent-user-isolation-key")
    if not user:
        return None
    chat = headers.get("x-agent-chat-isolation-key")
    return PlatformCaller(user_id=user, conversation_id=chat if chat and chat != user else None)


def invocation_id(header: str | None) -> str | None:
    """The caller's invocation id if it is well formed (else the host makes one)."""
    if header and _ID_PATTERN.fullmatch(header):
        return header
    return None


# --- outbound -----------------------------------------------------------------------


def completed_body(
    *, text: str, session_id: str | None, invocation: str, result: Any = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "invocation_id": invocation,
        "status": "completed",
        "output": text,
        "session_id": session_id,
    }
    if isinstance(result, WorkflowTurn):
        body.update(_workflow_fields(result.to_dict()))
    return body


def _workflow_fields(turn: Mapping[str, Any]) -> dict[str, Any]:
    """A workflow's structured outputs as ``data``; a question as ``input_required``."""
    fields: dict[str, Any] = {}
    if turn.get("data"):
        fields["data"] = turn["data"]
    if turn.get("input_requests"):
        # The run ended with a question: the next input on this session answers the first.
        fields["status"] = "input_required"
        fields["input_requests"] = turn["input_requests"]
    return fields


def token_body(token: ContinuationToken, *, poll_url: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "token": token.token,
        "status": token.status.value,
        "created_at": token.created_at,
        "completed_at": token.completed_at,
        "poll_url": poll_url,
    }
    if token.result is not None:
        body["output"] = token.result.get("text", "")
        stored = token.result.get("output")
        if isinstance(stored, Mapping) and "input_requests" in stored:
            body.update(_workflow_fields(stored))
    if token.result is not None and "destinations" in token.result:
        body["destinations"] = token.result["destinations"]
    if token.error is not None:
        body["error"] = {"code": f"run_{token.status.value}", "message": token.error}
    return body


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


_ENCODE_EVENT = compact_encoder()  # one a streamed chunk: built once


def sse_event(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {_ENCODE_EVENT(data)}\n\n".encode()
