"""The A2A wire, both generations, with no I/O: requests in, tasks and events out.

Inbound, a JSON-RPC envelope (or an HTTP+JSON body) is checked and turned into a
:class:`Call`: the operation, the protocol generation it came in (``"1.0"`` or
``"0.3"``) and its parameters as an ``a2a-sdk`` v1.0 protobuf request. v0.3 parameters
are validated with the SDK's v0.3 models and converted with its conversions, so the
rest of the channel speaks v1.0 only. Outbound, v1.0 objects are rendered in the
caller's generation: ProtoJSON for v1.0, the v0.3 JSON shapes (``kind``, lower-case
states, ``final``) for v0.3.

Errors are :mod:`a2a.utils.errors` classes with messages written here, never an
exception's text: :func:`jsonrpc_error` and :func:`rest_error` render them.

Message parts map to host messages: text as text, a file by URL as a URI part, file
bytes (bounded) as a ``data:`` URI part, a data part as its JSON text.
"""

from __future__ import annotations

import base64
import fnmatch
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import pydantic
from a2a.compat.v0_3 import conversions
from a2a.compat.v0_3 import types as v03
from a2a.types import a2a_pb2 as pb
from a2a.utils import errors
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from agenthost.sansio_core.types import ContentPart, HostMessage, TextPart, UriPart

Generation = Literal["1.0", "0.3"]
V10: Generation = "1.0"
V03: Generation = "0.3"

# Operations, by each generation's JSON-RPC method name.
METHODS_V10: Mapping[str, str] = {
    "SendMessage": "send",
    "SendStreamingMessage": "stream",
    "GetTask": "get",
    "ListTasks": "list",
    "CancelTask": "cancel",
    "SubscribeToTask": "subscribe",
    "CreateTaskPushNotificationConfig": "push_set",
    "GetTaskPushNotificationConfig": "push_get",
    "ListTaskPushNotificationConfigs": "push_list",
    "DeleteTaskPushNotificationConfig": "push_delete",
    "GetExtendedAgentCard": "extended_card",
}
METHODS_V03: Mapping[str, str] = {
    "message/send": "send",
    "message/stream": "stream",
    "tasks/get": "get",
    # Not in v0.3's JSON-RPC binding (REST and gRPC only); served with v1.0's parameters
    # so a v0.3 caller can list too.
    "tasks/list": "list",
    "tasks/cancel": "cancel",
    "tasks/resubscribe": "subscribe",
    "tasks/pushNotificationConfig/set": "push_set",
    "tasks/pushNotificationConfig/get": "push_get",
    "tasks/pushNotificationConfig/list": "push_list",
    "tasks/pushNotificationConfig/delete": "push_delete",
    "agent/getAuthenticatedExtendedCard": "extended_card",
}
STREAMING_OPERATIONS = frozenset({"stream", "subscribe"})

_V10_REQUESTS: Mapping[str, type[ProtoMessage]] = {
    "send": pb.SendMessageRequest,
    "stream": pb.SendMessageRequest,
    "get": pb.GetTaskRequest,
    "list": pb.ListTasksRequest,
    "cancel": pb.CancelTaskRequest,
    "subscribe": pb.SubscribeToTaskRequest,
    "push_set": pb.TaskPushNotificationConfig,
    "push_get": pb.GetTaskPushNotificationConfigRequest,
    "push_list": pb.ListTaskPushNotificationConfigsRequest,
    "push_delete": pb.DeleteTaskPushNotificationConfigRequest,
    "extended_card": pb.GetExtendedAgentCardRequest,
}

TERMINAL_STATES = frozenset(
    {
        pb.TASK_STATE_COMPLETED,
        pb.TASK_STATE_FAILED,
        pb.TASK_STATE_CANCELED,
        pb.TASK_STATE_REJECTED,
    }
)
# A task in one of these has no run going on and waits for its caller: a stream or a
# blocking send ends there, as at a terminal state, but the task takes further messages.
INTERRUPTED_STATES = frozenset({pb.TASK_STATE_INPUT_REQUIRED, pb.TASK_STATE_AUTH_REQUIRED})
SUPPORTED_VERSIONS = ("1.0", "0.3")
MAX_ID_LENGTH = 256


@attrs.frozen
class Call:
    """One request, whatever its binding: the operation and its v1.0 parameters."""

    operation: str
    generation: Generation
    params: Any  # an a2a-sdk v1.0 protobuf request
    request_id: str | int | None = None


@attrs.frozen
class InputLimits:
    """What the channel accepts: media types (``fnmatch`` patterns) and a file size bound."""

    input_modes: tuple[str, ...]
    output_modes: tuple[str, ...]
    max_file_bytes: int


# --- the version header ----------------------------------------------------------------


def check_version(header: str | None) -> None:
    """``A2A-Version``, when sent, must name a generation served here (major.minor)."""
    if header is None or not header.strip():
        return
    major_minor = ".".join(header.strip().split(".")[:2])
    if major_minor not in SUPPORTED_VERSIONS:
        raise errors.VersionNotSupportedError("This protocol version is not supported.")


# --- JSON-RPC ---------------------------------------------------------------------------


def parse_jsonrpc(raw: bytes) -> Call:
    """The envelope and parameters of one JSON-RPC request (batches are not served)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise errors.JSONParseError("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise errors.InvalidRequestError("The request must be one JSON-RPC request object.")
    request_id = body.get("id")
    if (
        body.get("jsonrpc") != "2.0"
        or not isinstance(body.get("method"), str)
        or not (request_id is None or isinstance(request_id, str | int))
        or isinstance(request_id, bool)
    ):
        raise errors.InvalidRequestError("The request is not a JSON-RPC 2.0 request.")
    method = body["method"]
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise errors.InvalidParamsError("'params' must be an object.")
    if method in METHODS_V10:
        operation = METHODS_V10[method]
        return Call(operation, V10, _parse_v10(operation, params), request_id)
    if method in METHODS_V03:
        operation = METHODS_V03[method]
        return Call(operation, V03, _parse_v03(operation, body, request_id), request_id)
    raise errors.MethodNotFoundError("This method is not served.")


def request_id_of(raw: bytes) -> str | int | None:
    """The id of a request that failed to parse further, when it has a usable one."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    request_id = body.get("id") if isinstance(body, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        return None
    return request_id


def parse_rest(operation: str, params: Mapping[str, Any]) -> Call:
    """HTTP+JSON (v1.0 only): the body and path/query parameters of one operation."""
    return Call(operation, V10, _parse_v10(operation, params))


def _parse_v10(operation: str, params: Mapping[str, Any]) -> Any:
    message = _V10_REQUESTS[operation]()
    try:
        json_format.ParseDict(dict(params), message, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError):
        raise errors.InvalidParamsError("The request's parameters are not valid.") from None
    return message


def _parse_v03(operation: str, body: Mapping[str, Any], request_id: str | int | None) -> Any:
    if operation == "list":
        return _parse_v10(operation, body.get("params", {}))
    if request_id is None:
        # v0.3's models require an id; a notification gets no answer worth sending anyway.
        raise errors.InvalidRequestError("A request id is required.")
    try:
        return _V03_PARSERS[operation](body)
    except (pydantic.ValidationError, json_format.ParseError, TypeError, ValueError):
        raise errors.InvalidParamsError("The request's parameters are not valid.") from None


def _v03_push_set(body: Mapping[str, Any]) -> Any:
    request = v03.SetTaskPushNotificationConfigRequest.model_validate(body)
    return conversions.to_core_task_push_notification_config(request.params)


_V03_PARSERS: Mapping[str, Any] = {
    "send": lambda b: conversions.to_core_send_message_request(
        v03.SendMessageRequest.model_validate(b)
    ),
    "stream": lambda b: conversions.to_core_send_message_request(
        v03.SendMessageRequest.model_validate({**b, "method": "message/send"})
    ),
    "get": lambda b: conversions.to_core_get_task_request(v03.GetTaskRequest.model_validate(b)),
    "cancel": lambda b: conversions.to_core_cancel_task_request(
        v03.CancelTaskRequest.model_validate(b)
    ),
    "subscribe": lambda b: conversions.to_core_subscribe_to_task_request(
        v03.TaskResubscriptionRequest.model_validate(b)
    ),
    "push_set": _v03_push_set,
    "push_get": lambda b: conversions.to_core_get_task_push_notification_config_request(
        v03.GetTaskPushNotificationConfigRequest.model_validate(b)
    ),
    "push_list": lambda b: conversions.to_core_list_task_push_notification_config_request(
        v03.ListTaskPushNotificationConfigRequest.model_validate(b)
    ),
    "push_delete": lambda b: conversions.to_core_delete_task_push_notification_config_request(
        v03.DeleteTaskPushNotificationConfigRequest.model_validate(b)
    ),
    "extended_card": lambda b: pb.GetExtendedAgentCardRequest(),
}


def jsonrpc_result(request_id: str | int | None, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def jsonrpc_error(request_id: str | int | None, error: errors.A2AError) -> dict[str, Any]:
    code = errors.JSON_RPC_ERROR_CODE_MAP.get(type(error), -32603)
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": code, "message": error.message},
    }


def rest_error(error: errors.A2AError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and ``google.rpc.Status`` body of an error on the HTTP+JSON binding."""
    mapping = errors.A2A_ERROR_MAPPING.get(
        type(error), errors.A2A_ERROR_MAPPING[errors.InternalError]
    )
    body = {
        "error": {
            "code": mapping.http_code,
            "status": mapping.grpc_status,
            "message": error.message,
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": mapping.reason,
                    "domain": "a2a-protocol.org",
                }
            ],
        }
    }
    return mapping.http_code, body


def internal_error() -> errors.A2AError:
    return errors.InternalError("The agent could not handle this request.")


# --- messages in ------------------------------------------------------------------------


def check_identifier(value: str, what: str) -> None:
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise errors.InvalidParamsError(f"'{what}' must be 1-{MAX_ID_LENGTH} printable characters.")


def host_messages(message: Any, limits: InputLimits) -> tuple[HostMessage, ...]:
    """The host's input for one A2A message from a user."""
    if message.role != pb.ROLE_USER:
        raise errors.InvalidParamsError("The message must come from the user role.")
    check_identifier(message.message_id, "messageId")
    if not message.parts:
        raise errors.InvalidParamsError("The message has no parts.")
    parts: list[ContentPart] = []
    for part in message.parts:
        parts.append(_host_part(part, limits))
    return (HostMessage(role="user", parts=tuple(parts)),)


def _host_part(part: Any, limits: InputLimits) -> ContentPart:
    kind = part.WhichOneof("content")
    if kind == "text":
        _accept(limits, "text/plain")
        return TextPart(part.text)
    if kind is None:
        raise errors.InvalidParamsError("A message part has no content.")
    if kind == "data":
        _accept(limits, "application/json")
        value = _integral_numbers(json_format.MessageToDict(part.data))
        return TextPart(json.dumps(value, separators=(",", ":"), sort_keys=True))
    media_type = part.media_type or "application/octet-stream"
    _accept(limits, media_type)
    if kind == "url":
        if not part.url.startswith(("https://", "http://")):
            raise errors.InvalidParamsError("A file URL must be http(s).")
        return UriPart(part.url, media_type)
    if kind == "raw":
        if len(part.raw) > limits.max_file_bytes:
            raise errors.InvalidParamsError("A file part is larger than this agent accepts.")
        encoded = base64.b64encode(part.raw).decode("ascii")
        return UriPart(f"data:{media_type};base64,{encoded}", media_type)
    raise errors.InvalidParamsError("A message part has no content.")


def _integral_numbers(value: Any) -> Any:
    """``value`` with whole floats as ints: protobuf's ``Value`` keeps every number as a
    double, and the agent should read ``3``, as the caller wrote it, not ``3.0``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_integral_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral_numbers(item) for key, item in value.items()}
    return value


def _accept(limits: InputLimits, media_type: str) -> None:
    if not _matches(media_type, limits.input_modes):
        raise errors.ContentTypeNotSupportedError("This agent does not accept that content type.")


def check_output_modes(accepted: Sequence[str], limits: InputLimits) -> None:
    """A caller naming the output modes it accepts must accept one the agent produces."""
    if not accepted:
        return
    if not any(
        _matches(ours, [mode]) or _matches(mode, [ours])
        for mode in accepted
        for ours in limits.output_modes
    ):
        raise errors.ContentTypeNotSupportedError(
            "This agent cannot answer in those content types."
        )


def _matches(media_type: str, patterns: Sequence[str]) -> bool:
    base = media_type.split(";", 1)[0].strip().lower()
    return any(fnmatch.fnmatchcase(base, pattern.lower()) for pattern in patterns)


# --- objects out --------------------------------------------------------------------------


def to_dict(message: Any) -> dict[str, Any]:
    """ProtoJSON (v1.0's wire form): camelCase, enum names."""
    result: dict[str, Any] = json_format.MessageToDict(message)
    return result


def task_from_dict(value: Mapping[str, Any]) -> Any:
    task = pb.Task()
    json_format.ParseDict(dict(value), task, ignore_unknown_fields=True)
    return task


def stream_response_from_dict(value: Mapping[str, Any]) -> Any:
    event = pb.StreamResponse()
    json_format.ParseDict(dict(value), event, ignore_unknown_fields=True)
    return event


def _v03_json(model: pydantic.BaseModel) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def render_task(task: Any, generation: Generation) -> dict[str, Any]:
    if generation == V03:
        rendered: dict[str, Any] = _v03_json(conversions.to_compat_task(task))
        return rendered
    return to_dict(task)


def render_send_result(task: Any, generation: Generation) -> dict[str, Any]:
    """``SendMessage``'s result: v1.0 wraps the task (``{"task": ...}``), v0.3 does not."""
    if generation == V03:
        return render_task(task, V03)
    return {"task": to_dict(task)}


def render_event(event: Any, generation: Generation) -> dict[str, Any]:
    """One stream event (a v1.0 ``StreamResponse``) in the caller's generation."""
    if generation == V03:
        rendered: dict[str, Any] = _v03_json(conversions.to_compat_stream_response(event).result)
        if rendered.get("kind") == "status-update" and event.status_update.status.state in (
            INTERRUPTED_STATES
        ):
            # v0.3 ends a stream at an interrupted state too (the SDK's conversion does not).
            rendered["final"] = True
        return rendered
    return to_dict(event)


def render_push_config(config: Any, generation: Generation) -> dict[str, Any]:
    if generation == V03:
        rendered: dict[str, Any] = _v03_json(
            conversions.to_compat_task_push_notification_config(config)
        )
        return rendered
    return to_dict(config)


def render_push_configs(configs: Sequence[Any], generation: Generation) -> Any:
    if generation == V03:
        return [render_push_config(config, V03) for config in configs]
    return to_dict(pb.ListTaskPushNotificationConfigsResponse(configs=list(configs)))


def render_task_list(
    tasks: Sequence[Any], *, next_page_token: str, page_size: int, total_size: int
) -> dict[str, Any]:
    response = pb.ListTasksResponse(
        tasks=list(tasks),
        next_page_token=next_page_token,
        page_size=page_size,
        total_size=total_size,
    )
    return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)


def is_terminal(task: Any) -> bool:
    return task.status.state in TERMINAL_STATES


def is_settled(task: Any) -> bool:
    """No run is going on for ``task``: it ended, or it waits for its caller."""
    return task.status.state in TERMINAL_STATES or task.status.state in INTERRUPTED_STATES


__all__ = [
    "V03",
    "V10",
    "Call",
    "Generation",
    "InputLimits",
]
