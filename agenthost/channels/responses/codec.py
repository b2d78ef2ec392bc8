"""The OpenAI Responses wire format, both ways, with no I/O.

Inbound: a ``POST /responses`` body (or a WebSocket ``response.create`` message) becomes a
:class:`CreateRequest`: the input as normalized items and as host messages, the session
fields (``previous_response_id``, ``conversation``), the options the target receives, the
settings echoed on the response object, and every other field kept for a ``run_hook``.
Conversations bodies and list queries are parsed here too. Bad input raises
:class:`ResponsesError`, which carries the status and the OpenAI error fields.

Outbound: the response object around a run (``base_response``), list pages, conversation
objects and the OpenAI error shape ``{"error": {"message", "type", "param", "code"}}``.
Turning a run's result or updates into output items is ``events.py``'s job.

This module decides nothing about sessions, callers or storage, and imports no transport.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from agenthost.sansio_core import strict_json
from agenthost.sansio_core.media_uris import media_uri_problem
from agenthost.sansio_core.types import (
    ContentPart,
    FunctionCall,
    HostMessage,
    TextPart,
    UriPart,
)
from agenthost.sansio_core.values import builds_fast

MAX_INPUT_ITEMS = 1000
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_SAFETY_IDENTIFIER = 128
MAX_CONVERSATION_ITEMS = 20  # per Conversations call, as OpenAI limits it
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20

_ID = re.compile(r"[A-Za-z0-9_\-]{1,128}")  # always fullmatch: "$" allows a trailing "\n"
_LIST_LIMIT = re.compile(r"[0-9]{1,3}")
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TOOL_CHOICES = frozenset({"none", "auto", "required"})
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_FUNCTION_FIELDS: tuple[tuple[str, type, str], ...] = (
    ("description", str, "a string"),
    ("parameters", dict, "a JSON Schema object"),
    ("strict", bool, "true or false"),
)
# Item types OpenAI defines that are stored and listed as sent, but are not messages.
_OPAQUE_ITEMS = frozenset(
    {
        "reasoning",
        "compaction",
        "additional_tools",
        "program",
        "program_output",
        "web_search_call",
        "file_search_call",
        "computer_call",
        "computer_call_output",
        "code_interpreter_call",
        "image_generation_call",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "custom_tool_call",
        "custom_tool_call_output",
        "tool_search_call",
        "tool_search_output",
    }
)

# Fields this channel reads; everything else in a create body is kept for a run_hook.
_HANDLED = frozenset(
    {
        "input",
        "instructions",
        "previous_response_id",
        "conversation",
        "store",
        "stream",
        "background",
        "metadata",
        "safety_identifier",
        "user",
        "model",
        "temperature",
        "top_p",
        "max_output_tokens",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }
)
# Fields that are not a run_hook's ``extra`` (``type``: a WebSocket message's own).
_NOT_EXTRA = _HANDLED | {"type"}
# Request settings a Response object repeats back, with their defaults.
_ECHOED_DEFAULTS: Mapping[str, Any] = {
    "text": {"format": {"type": "text"}},
    "truncation": "disabled",
    "reasoning": None,
    "max_tool_calls": None,
    "top_logprobs": None,
    "service_tier": None,
    "prompt_cache_key": None,
}
_ECHOED_NAMES = frozenset(_ECHOED_DEFAULTS)


class ResponsesError(Exception):
    """A request the caller got wrong (or a refusal): answered in the OpenAI error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ResponsesError:
    return ResponsesError(400, message, param=param, code=code)


def not_found(what: str, ident: str, param: str | None = None) -> ResponsesError:
    # The same answer for "missing" and "someone else's", so ids are no oracle.
    return ResponsesError(
        404, f"{what} with id '{_quoted(ident)}' not found.", param=param, code="not_found"
    )


def previous_response_not_found(ident: str) -> ResponsesError:
    return ResponsesError(
        404,
        f"Previous response with id '{_quoted(ident)}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def _quoted(ident: str) -> str:
    return ident[:128].replace("'", "")


# --- the create request -----------------------------------------------------------


@builds_fast  # one a create
@attrs.frozen
class CreateRequest:
    """A validated create body. ``items`` are the input items as they will be stored
    (``item_reference`` items still unresolved); ``options`` go to the target."""

    items: tuple[Mapping[str, Any], ...]
    instructions: str | None = None
    previous_response_id: str | None = None
    conversation_id: str | None = None
    store: bool = True
    stream: bool = False
    background: bool = False
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    safety_identifier: str | None = None
    user: str | None = None
    model: str | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)
    echoed: Mapping[str, Any] = attrs.field(factory=dict)
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def references(self) -> list[str]:
        return [item["id"] for item in self.items if item.get("type") == "item_reference"]


def parse_json(raw: bytes | str) -> Any:
    """The body as strict JSON (``sansio_core.strict_json``): what is accepted here can be
    stored and rendered back, so nothing unrenderable reaches a run or the store."""
    try:
        return strict_json.loads(raw)
    except strict_json.JsonRefused as refused:
        raise bad_request(
            f"We could not parse the JSON body of your request: {refused.reason}"
        ) from None


def parse_create(data: Any, *, websocket: bool = False) -> CreateRequest:
    """Validate a create body (``websocket``: a ``response.create`` message's fields)."""
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    if "input" not in data or data["input"] is None:
        raise bad_request(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    items = parse_input(data["input"])

    previous = _optional_id(data, "previous_response_id")
    conversation = _conversation_id(data.get("conversation"))
    if previous is not None and conversation is not None:
        raise bad_request(
            "'previous_response_id' and 'conversation' cannot be used together: "
            "continue a conversation by its id, or chain responses, not both.",
            "conversation",
            "mutually_exclusive_parameters",
        )
    store = _flag(data, "store", default=True)
    stream = False if websocket else _flag(data, "stream", default=False)
    background = False if websocket else _flag(data, "background", default=False)
    if background and not store:
        raise bad_request(
            "Background responses are stored so they can be polled: 'store' must be true.",
            "store",
        )

    options: dict[str, Any] = {}
    echoed = _echoed_settings(data)
    temperature = _number(data, "temperature", 0.0, 2.0)
    top_p = _number(data, "top_p", 0.0, 1.0)
    max_output_tokens = _positive_int(data, "max_output_tokens")
    tools = _tools(data.get("tools"))
    tool_choice = _tool_choice(data.get("tool_choice"), tools)
    parallel = data.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad_request("'parallel_tool_calls' must be true or false.", "parallel_tool_calls")
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_request("'instructions' must be a string.", "instructions")

    # The target's options use Agent Framework's names (its ChatOptions).
    if temperature is not None:
        options["temperature"] = temperature
    if top_p is not None:
        options["top_p"] = top_p
    if max_output_tokens is not None:
        options["max_tokens"] = max_output_tokens
    if tools:
        options["tools"] = tools
    if tool_choice is not None:
        options["tool_choice"] = _framework_tool_choice(tool_choice)
    if parallel is not None:
        options["allow_multiple_tool_calls"] = parallel
    if instructions:
        # Per request, as OpenAI does: instructions are not carried into later turns.
        options["instructions"] = instructions

    echoed.update(
        temperature=temperature if temperature is not None else 1.0,
        top_p=top_p if top_p is not None else 1.0,
        max_output_tokens=max_output_tokens,
        tools=tools,
        tool_choice=tool_choice if tool_choice is not None else "auto",
        parallel_tool_calls=parallel if parallel is not None else True,
    )
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string.", "model")
    return CreateRequest(
        items=items,
        instructions=instructions,
        previous_response_id=previous,
        conversation_id=conversation,
        store=store,
        stream=stream,
        background=background,
        metadata=parse_metadata(data.get("metadata")),
        safety_identifier=_bounded_string(data, "safety_identifier", MAX_SAFETY_IDENTIFIER),
        user=_bounded_string(data, "user", MAX_SAFETY_IDENTIFIER),
        model=model,
        options=options,
        echoed=echoed,
        extra=_extra_fields(data),
    )


def _extra_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields this channel does not read, in the body's order (usually none)."""
    unread = data.keys() - _NOT_EXTRA
    return {key: value for key, value in data.items() if key in unread} if unread else {}


def _echoed_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a response repeats back, checked so that each renders as OpenAI's."""
    if data.keys().isdisjoint(_ECHOED_NAMES):
        return dict(_ECHOED_DEFAULTS)  # what the checks below make of a body naming none
    echoed = {key: data.get(key, default) for key, default in _ECHOED_DEFAULTS.items()}
    for name in ("text", "reasoning"):
        if echoed[name] is not None and not isinstance(echoed[name], dict):
            raise bad_request(f"'{name}' must be an object.", name)
    if echoed["truncation"] not in ("auto", "disabled"):
        raise bad_request("'truncation' must be 'auto' or 'disabled'.", "truncation")
    echoed["max_tool_calls"] = _positive_int(data, "max_tool_calls")
    top_logprobs = echoed["top_logprobs"]
    if top_logprobs is not None and (
        isinstance(top_logprobs, bool)
        or not isinstance(top_logprobs, int)
        or not 0 <= top_logprobs <= 20
    ):
        raise bad_request("'top_logprobs' must be an integer from 0 to 20.", "top_logprobs")
    for name in ("service_tier", "prompt_cache_key"):
        echoed[name] = _bounded_string(data, name, 1024)
    return echoed


def parse_metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("'metadata' must be an object of string values.", param)
    if len(value) > MAX_METADATA_PAIRS:
        raise bad_request(
            f"'metadata' may hold at most {MAX_METADATA_PAIRS} pairs, not {len(value)}.", param
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise bad_request(
                f"Metadata keys may be at most {MAX_METADATA_KEY} characters.",
                f"{param}.{key[:64]}",
            )
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE:
            raise bad_request(
                f"Metadata values must be strings of at most {MAX_METADATA_VALUE} characters.",
                f"{param}.{key}",
            )
    return dict(value)


def _flag(data: Mapping[str, Any], name: str, *, default: bool) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be true or false.", name)
    return value


def _number(data: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise bad_request(f"'{name}' must be a number from {low:g} to {high:g}.", name)
    return float(value)


def _positive_int(data: Mapping[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"'{name}' must be a positive integer.", name)
    return value


def _bounded_string(data: Mapping[str, Any], name: str, limit: int) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise bad_request(f"'{name}' must be a string of at most {limit} characters.", name)
    return value


def _optional_id(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise bad_request(f"'{name}' must be an id of letters, digits, '_' and '-'.", name)
    return value


def _conversation_id(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    if value is None:
        return None
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise bad_request(
            "'conversation' must be a conversation id or {\"id\": ...}.", "conversation"
        )
    return value


def _tools(value: Any) -> list[dict[str, Any]]:
    """Client-declared function tools; the agent brings its own tools, so other types (web
    search, MCP, ...) are refused rather than silently ignored."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(tool, dict) and isinstance(tool.get("type"), str) for tool in value
    ):
        raise bad_request("'tools' must be a list of tool objects with a 'type'.", "tools")
    names: set[str] = set()
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if tool["type"] != "function":
            raise bad_request(
                f"{where}.type '{tool['type'][:64]}' is not supported: this agent runs its "
                "own tools, and a client can declare only 'function' tools (which it runs "
                "itself when the response ends with a 'function_call').",
                f"{where}.type",
                "unsupported_tool_type",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise bad_request(
                f"{where}.name must be 1 to 64 letters, digits, '_' or '-'.", f"{where}.name"
            )
        if name in names:
            raise bad_request(f"{where}.name '{name}' is declared twice.", f"{where}.name")
        names.add(name)
        for key, kind, wanted in _FUNCTION_FIELDS:
            if tool.get(key) is not None and not isinstance(tool[key], kind):
                raise bad_request(f"{where}.{key} must be {wanted}.", f"{where}.{key}")
    return value


def client_function_names(response: Mapping[str, Any]) -> frozenset[str]:
    """The names of the function tools a request (or its response object) declared."""
    return frozenset(
        tool["name"]
        for tool in response.get("tools") or ()
        if isinstance(tool, Mapping) and tool.get("type") == "function"
    )


def _tool_choice(value: Any, tools: Sequence[Mapping[str, Any]]) -> str | dict[str, Any] | None:
    """``none``, ``auto``, ``required`` or one declared function; other forms name tools
    this host does not take from clients, so they are refused."""
    if value is None:
        return None
    if isinstance(value, str) and value in _TOOL_CHOICES:
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        name = value.get("name")
        if not isinstance(name, str) or name not in {tool["name"] for tool in tools}:
            raise bad_request(
                "'tool_choice' names a function that 'tools' does not declare.",
                "tool_choice.name",
            )
        return {"type": "function", "name": name}
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        raise bad_request(
            f"'tool_choice' of type '{value['type'][:64]}' is not supported: use 'none', "
            "'auto', 'required' or a 'function' choice naming a tool in 'tools'.",
            "tool_choice",
            "unsupported_tool_choice",
        )
    raise bad_request(
        "'tool_choice' must be 'none', 'auto', 'required' or a tool choice object.", "tool_choice"
    )


def _framework_tool_choice(choice: str | Mapping[str, Any]) -> Any:
    if isinstance(choice, str):
        return choice
    return {"mode": "required", "required_function_name": choice["name"]}


# --- input items ----------------------------------------------------------------------


def parse_input(
    value: Any, *, param: str = "input", limit: int = MAX_INPUT_ITEMS
) -> tuple[dict[str, Any], ...]:
    """The input as normalized items (a string is one user message)."""
    if isinstance(value, str):
        return (_text_message("user", value),)
    if not isinstance(value, list):
        raise bad_request(f"'{param}' must be a string or a list of input items.", param)
    if len(value) > limit:
        raise bad_request(f"'{param}' may hold at most {limit} items.", param)
    return tuple(parse_item(item, f"{param}[{i}]") for i, item in enumerate(value))


def parse_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise bad_request(f"{where} must be an input item object.", where)
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = "message"
    if kind is None and set(item) == {"id"}:
        kind = "item_reference"
    if not isinstance(kind, str):
        raise bad_request(f"{where} has no 'type'.", f"{where}.type")
    ident = item.get("id")
    if ident is not None and (not isinstance(ident, str) or not _ID.fullmatch(ident)):
        raise bad_request(
            f"{where}.id must be an id of letters, digits, '_' and '-'.", f"{where}.id"
        )
    if kind == "message":
        parsed = _message(item, where)
    elif kind == "function_call_output":
        call_id = _required_string(item, "call_id", where)
        output = item.get("output")
        if not isinstance(output, str | list):
            raise bad_request(
                f"{where}.output must be a string or a list of parts.", f"{where}.output"
            )
        parsed = {"type": kind, "call_id": call_id, "output": output, "status": "completed"}
    elif kind == "function_call":
        parsed = {
            "type": kind,
            "call_id": _required_string(item, "call_id", where),
            "name": _required_string(item, "name", where),
            "arguments": _required_string(item, "arguments", where, empty=True),
            "status": "completed",
        }
    elif kind == "item_reference":
        if not isinstance(ident, str):
            raise bad_request(f"{where} needs the 'id' of the item it references.", f"{where}.id")
        return {"type": kind, "id": ident}
    elif kind in _OPAQUE_ITEMS:
        # Reasoning, tool-call and other items: stored and listed as sent, not given to the
        # target as messages (a run_hook sees them in the request's attributes).
        parsed = dict(item)
    else:
        raise bad_request(f"{where}.type '{kind[:64]}' is not an input item type.", f"{where}.type")
    if ident is not None:
        parsed["id"] = ident
    return parsed


def _message(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise bad_request(
            f"{where}.role must be one of {', '.join(sorted(_ROLES))}.", f"{where}.role"
        )
    content = item.get("content")
    if isinstance(content, str):
        return _text_message(role, content)
    if not isinstance(content, list):
        raise bad_request(
            f"{where}.content must be a string or a list of content parts.", f"{where}.content"
        )
    parts = [_part(part, f"{where}.content[{i}]") for i, part in enumerate(content)]
    return {"type": "message", "role": role, "content": parts, "status": "completed"}


def _text_message(role: str, text: str) -> dict[str, Any]:
    part: dict[str, Any] = (
        {"type": "output_text", "text": text, "annotations": []}
        if role == "assistant"
        else {"type": "input_text", "text": text}
    )
    return {"type": "message", "role": role, "content": [part], "status": "completed"}


def _part(part: Any, where: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise bad_request(f"{where} must be a content part object.", where)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        text = _required_string(part, "text", where, empty=True)
        if kind == "output_text":
            annotations = part.get("annotations") or []
            if not isinstance(annotations, list):
                raise bad_request(f"{where}.annotations must be a list.", f"{where}.annotations")
            return {"type": kind, "text": text, "annotations": annotations}
        return {"type": "input_text", "text": text}
    if kind == "refusal":
        return {"type": kind, "refusal": _required_string(part, "refusal", where, empty=True)}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise bad_request(
                f"{where} needs an 'image_url' (a URL or a data URL); file ids are not "
                "supported by this host.",
                f"{where}.image_url",
            )
        _check_uri(url, f"{where}.image_url")
        detail = part.get("detail") or "auto"
        if detail not in ("auto", "low", "high", "original"):
            raise bad_request(
                f"{where}.detail must be 'auto', 'low', 'high' or 'original'.", f"{where}.detail"
            )
        return {"type": kind, "image_url": url, "detail": detail}
    if kind == "input_file":
        url, data = part.get("file_url"), part.get("file_data")
        filename = part.get("filename")
        if filename is not None and not isinstance(filename, str):
            raise bad_request(f"{where}.filename must be a string.", f"{where}.filename")
        if isinstance(url, str) and url:
            _check_uri(url, f"{where}.file_url")
            return {"type": kind, "file_url": url, "filename": filename}
        if isinstance(data, str) and data:
            _check_uri(_as_data_url(data), f"{where}.file_data")
            return {"type": kind, "file_data": data, "filename": filename}
        raise bad_request(
            f"{where} needs 'file_url' or 'file_data'; file ids are not supported by this host.",
            f"{where}.file_data",
        )
    raise bad_request(
        f"{where}.type must be input_text, input_image, input_file, output_text or refusal.",
        f"{where}.type",
    )


def _check_uri(uri: str, param: str) -> None:
    problem = media_uri_problem(uri)
    if problem is not None:
        raise bad_request(f"{param}: {problem}.", param)


def _required_string(item: Mapping[str, Any], name: str, where: str, *, empty: bool = False) -> str:
    value = item.get(name)
    if not isinstance(value, str) or (not empty and not value):
        raise bad_request(f"{where}.{name} must be a string.", f"{where}.{name}")
    return value


def host_messages(items: Iterable[Mapping[str, Any]]) -> tuple[HostMessage, ...]:
    """The items the target reads as messages, in order.

    A ``function_call`` (a call to a client-declared tool, sent back as history) becomes an
    assistant message carrying the call; a ``function_call_output`` a ``tool`` message with
    its text and the call's id. Reasoning and other items are not messages; a run_hook
    finds them all, with full fidelity, in the request's ``attributes["input_items"]``.
    """
    messages = []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            parts = tuple(p for p in map(_host_part, item["content"]) if p is not None)
            messages.append(HostMessage(role=item["role"], parts=parts))
        elif kind == "function_call":
            call = FunctionCall(item["call_id"], item["name"], item["arguments"])
            messages.append(HostMessage(role="assistant", parts=(), function_calls=(call,)))
        elif kind == "function_call_output":
            output = item["output"]
            text = output if isinstance(output, str) else _parts_text(output)
            messages.append(
                HostMessage(role="tool", parts=(TextPart(text),), tool_call_id=item["call_id"])
            )
    return tuple(messages)


def _host_part(part: Mapping[str, Any]) -> ContentPart | None:
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return TextPart(part["text"])
    if kind == "refusal":
        return TextPart(part["refusal"])
    if kind == "input_image":
        return UriPart(part["image_url"], _data_media_type(part["image_url"]))
    if kind == "input_file":
        uri = part.get("file_url") or _as_data_url(part["file_data"])
        return UriPart(uri, _data_media_type(uri))
    return None


def _parts_text(parts: Sequence[Any]) -> str:
    return "".join(
        part.get("text", "") for part in parts if isinstance(part, dict) and part.get("text")
    )


def _as_data_url(data: str) -> str:
    return data if data.startswith("data:") else f"data:application/octet-stream;base64,{data}"


def _data_media_type(uri: str) -> str | None:
    if uri.startswith("data:"):
        head = uri[5:].split(",", 1)[0]
        return head.split(";", 1)[0] or None
    return None


def item_id_prefix(item: Mapping[str, Any]) -> str:
    """The id prefix OpenAI uses for an item of this type."""
    return {
        "message": "msg",
        "function_call": "fc",
        "function_call_output": "fco",
        "reasoning": "rs",
    }.get(str(item.get("type")), "item")


# --- the response object --------------------------------------------------------------


def base_response(
    create: CreateRequest,
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str = "in_progress",
) -> dict[str, Any]:
    """The response object before anything ran: the request's settings, no output yet."""
    conversation = {"id": create.conversation_id} if create.conversation_id else None
    echoed = create.echoed.get
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": create.background,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": create.instructions,
        "max_output_tokens": echoed("max_output_tokens"),
        "model": create.model or model,
        "output": [],
        "parallel_tool_calls": echoed("parallel_tool_calls", True),
        "previous_response_id": create.previous_response_id,
        "conversation": conversation,
        "store": create.store,
        "temperature": echoed("temperature", 1.0),
        "text": echoed("text"),
        "tool_choice": echoed("tool_choice", "auto"),
        "tools": list(echoed("tools") or []),
        "top_p": echoed("top_p", 1.0),
        "truncation": echoed("truncation", "disabled"),
        "reasoning": echoed("reasoning"),
        "max_tool_calls": echoed("max_tool_calls"),
        "top_logprobs": echoed("top_logprobs"),
        "service_tier": echoed("service_tier"),
        "prompt_cache_key": echoed("prompt_cache_key"),
        "safety_identifier": create.safety_identifier,
        "user": create.user,
        "usage": None,
        "metadata": dict(create.metadata),
    }


def usage(details: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Agent Framework ``UsageDetails`` as Responses ``usage`` (``None`` when unknown)."""
    if not details:
        return None

    def count(name: str) -> int:
        value = details.get(name)
        return int(value) if isinstance(value, int | float) else 0

    input_tokens = count("input_token_count")
    output_tokens = count("output_token_count")
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": count("cache_read_input_token_count"),
            "cache_write_tokens": count("cache_creation_input_token_count"),
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": count("reasoning_output_token_count")},
        "total_tokens": count("total_token_count") or input_tokens + output_tokens,
    }


def failed_error(code: str, message: str) -> dict[str, Any]:
    """The ``error`` of a failed response object (a run that failed, not a bad request)."""
    return {"code": code, "message": message}


def deleted(ident: str, obj: str) -> dict[str, Any]:
    return {"id": ident, "object": obj, "deleted": True}


# --- lists and conversations ----------------------------------------------------------


@attrs.frozen
class ListQuery:
    after: str | None = None
    limit: int = DEFAULT_LIST_LIMIT
    descending: bool = True


def parse_list_query(query: Mapping[str, str]) -> ListQuery:
    after = query.get("after") or None
    if after is not None and not _ID.fullmatch(after):
        raise bad_request("'after' must be an item id.", "after")
    raw_limit = query.get("limit")
    limit = DEFAULT_LIST_LIMIT
    if raw_limit is not None:
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
        if not _LIST_LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIST_LIMIT:
            raise bad_request(f"'limit' must be from 1 to {MAX_LIST_LIMIT}.", "limit")
        limit = int(raw_limit)
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("'order' must be 'asc' or 'desc'.", "order")
    return ListQuery(after=after, limit=limit, descending=order == "desc")


def list_page(items: Sequence[Mapping[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": list(items),
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


def page_of(
    items: Sequence[Mapping[str, Any]], query: ListQuery
) -> tuple[list[Mapping[str, Any]], bool]:
    """One page of an ordered list held in memory: ``(page, has_more)``."""
    ordered = list(reversed(items)) if query.descending else list(items)
    start = 0
    if query.after is not None:
        ids = [item.get("id") for item in ordered]
        if query.after not in ids:
            raise bad_request(f"No item with id '{query.after}' is in this list.", "after")
        start = ids.index(query.after) + 1
    page = ordered[start : start + query.limit]
    return page, start + query.limit < len(ordered)


@attrs.frozen
class ConversationCreate:
    items: tuple[dict[str, Any], ...]
    metadata: Mapping[str, str]


def parse_conversation_create(data: Any) -> ConversationCreate:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    items = data.get("items")
    parsed = () if items is None else parse_conversation_items(items)
    return ConversationCreate(items=parsed, metadata=parse_metadata(data.get("metadata")))


def parse_conversation_items(value: Any, param: str = "items") -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list):
        raise bad_request(f"'{param}' must be a list of items.", param)
    items = parse_input(value, param=param, limit=MAX_CONVERSATION_ITEMS)
    if any(item.get("type") == "item_reference" for item in items):
        raise bad_request("Conversation items cannot be item references.", param)
    return items


def conversation_object(
    ident: str, *, created_at: int, metadata: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "conversation",
        "created_at": created_at,
        "metadata": dict(metadata),
    }
