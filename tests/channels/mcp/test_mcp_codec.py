"""The MCP codec, with no I/O: tool calls as clients send them, the catalog, results, headers."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import mcp_types as types
import pytest

from agenthost.channels.mcp import codec
from agenthost.sansio_core.authorization import Denied
from agenthost.sansio_core.commands import CommandReply
from agenthost.sansio_core.turns import RefusalReason, TurnCompleted, TurnFailed, TurnRefused
from agenthost.sansio_core.types import HostedRunResult, RunStatus, SessionRef

SETTINGS = codec.ToolSettings(
    name="ask", title="Ask", description="Ask the agent.", background_runs=True
)
ALL_COMMANDS = {"new", "link", "unlink", "help"}
TOOLS = frozenset(tool.name for tool in codec.catalog(SETTINGS, ALL_COMMANDS))

# ``tools/call`` params as the mcp 2.3.0 client sends them: the session era carries a
# progress token in ``_meta``; the 2026-07-28 envelope adds the protocol version and the
# client's capabilities.
SESSION_ERA_CALL = {
    "name": "ask",
    "arguments": {"message": "what is 2 + 3", "conversation": "project-x"},
    "_meta": {"progressToken": 3},
}
STATELESS_CALL = {
    "name": "ask",
    "arguments": {"message": "summarise the thread", "background": True},
    "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    },
}


def parse(name: str, arguments: dict[str, Any] | None) -> codec.Call | None:
    return codec.parse_call(name, arguments, settings=SETTINGS, tools=TOOLS)


def wire(result: types.CallToolResult) -> dict[str, Any]:
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


# --- calls ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (SESSION_ERA_CALL, codec.Ask("what is 2 + 3", "project-x", False)),
        (STATELESS_CALL, codec.Ask("summarise the thread", None, True)),
    ],
)
def test_recorded_calls_parse(raw: dict[str, Any], expected: codec.Call) -> None:
    params = types.CallToolRequestParams.model_validate(raw, by_name=False)
    assert parse(params.name, params.arguments) == expected


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("new_conversation", {}, codec.Command("new", "/new")),
        (
            "new_conversation",
            {"conversation": "a.b:c-d_e"},
            codec.Command("new", "/new", "a.b:c-d_e"),
        ),
        ("link_account", None, codec.Command("link", "/link")),
        (
            "link_account",
            {"code": " ABCD-EFGH-JKMN "},
            codec.Command("link", "/link ABCD-EFGH-JKMN"),
        ),
        ("unlink_account", {}, codec.Command("unlink", "/unlink")),
        ("check_run", {"run": "run_0123abcd"}, codec.RunQuery("run_0123abcd")),
        ("cancel_run", {"run": "run_0123abcd"}, codec.RunQuery("run_0123abcd", cancel=True)),
    ],
)
def test_command_and_run_tools_parse(
    name: str, arguments: dict[str, Any] | None, expected: codec.Call
) -> None:
    assert parse(name, arguments) == expected


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("ask", {}, "'message' must be a non-empty string."),
        ("ask", {"message": "   "}, "'message' must be a non-empty string."),
        ("ask", {"message": 42}, "'message' must be a non-empty string."),
        ("ask", {"message": "x" * (codec.MAX_MESSAGE_CHARS + 1)}, "'message' may hold at most"),
        ("ask", {"message": "hi", "background": "yes"}, "'background' must be true or false."),
        ("ask", {"message": "hi", "conversation": "../../etc"}, "'conversation' must be 1-128"),
        ("ask", {"message": "hi", "conversation": "x" * 129}, "'conversation' must be 1-128"),
        ("ask", {"message": "hi", "conversation": 7}, "'conversation' must be 1-128"),
        ("ask", {"message": "hi", "conversation": "x\n"}, "'conversation' must be 1-128"),
        ("ask", {"message": "hi", "session": "telegram:123"}, "Unknown argument: 'session'."),
        ("link_account", {"code": "AB\nCD"}, "'code' must be the one-time code"),
        ("link_account", {"code": ""}, "'code' must be the one-time code"),
        ("unlink_account", {"everyone": True}, "Unknown argument: 'everyone'."),
        ("check_run", {}, "'run' must be the run id"),
        ("check_run", {"run": "a b"}, "'run' must be the run id"),
        ("check_run", {"run": "run_1\n"}, "'run' must be the run id"),
    ],
)
def test_bad_arguments_are_tool_input_errors(
    name: str, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(codec.ToolInputError) as error:
        parse(name, arguments)
    assert str(error.value).startswith(message)


def test_a_tool_the_channel_does_not_offer_is_none() -> None:
    assert parse("delete_everything", {}) is None
    # Without linking on the host, link_account is not offered either.
    without_link = frozenset(t.name for t in codec.catalog(SETTINGS, {"new", "help"}))
    assert codec.parse_call("link_account", {}, settings=SETTINGS, tools=without_link) is None


def test_background_is_an_unknown_argument_when_background_runs_are_off() -> None:
    settings = codec.ToolSettings("ask", "Ask", "Ask.", background_runs=False)
    tools = frozenset(t.name for t in codec.catalog(settings, ALL_COMMANDS))
    assert {"check_run", "cancel_run"}.isdisjoint(tools)
    with pytest.raises(codec.ToolInputError):
        codec.parse_call(
            "ask", {"message": "hi", "background": True}, settings=settings, tools=tools
        )


# --- the catalog ------------------------------------------------------------------------


def test_the_catalog_follows_the_host_commands() -> None:
    assert [t.name for t in codec.catalog(SETTINGS, ALL_COMMANDS)] == [
        "ask",
        "new_conversation",
        "link_account",
        "unlink_account",
        "check_run",
        "cancel_run",
    ]
    assert [t.name for t in codec.catalog(SETTINGS, set())] == ["ask", "check_run", "cancel_run"]


def test_every_schema_is_valid_json_schema_and_results_conform() -> None:
    tools = codec.catalog(SETTINGS, ALL_COMMANDS)
    for tool in tools:
        jsonschema.Draft202012Validator.check_schema(tool.input_schema)
        assert tool.input_schema["type"] == "object"
        if tool.output_schema is not None:
            jsonschema.Draft202012Validator.check_schema(tool.output_schema)
    ask = tools[0]
    assert ask.output_schema is not None
    validator = jsonschema.Draft202012Validator(ask.output_schema)
    results = [
        codec.answer("five", conversation="c"),
        codec.answer("five", conversation=None),
        *(codec.run_answer("run_1", status, text="done") for status in RunStatus),
    ]
    for result in results:
        validator.validate(result.structured_content)
    inputs = jsonschema.Draft202012Validator(ask.input_schema)
    inputs.validate(SESSION_ERA_CALL["arguments"])
    inputs.validate(STATELESS_CALL["arguments"])
    assert not inputs.is_valid({"message": "hi", "conversation": "no spaces please"})


# --- results ----------------------------------------------------------------------------


def test_an_answer_on_the_wire() -> None:
    assert wire(codec.answer("The answer is 5.", conversation="project-x")) == {
        "content": [{"type": "text", "text": "The answer is 5."}],
        "structuredContent": {
            "status": "completed",
            "text": "The answer is 5.",
            "conversation": "project-x",
        },
        "isError": False,
        "resultType": "complete",
    }


def test_run_answers_say_what_happened_without_details() -> None:
    running = wire(codec.run_answer("run_1", RunStatus.RUNNING, text=None, conversation="c"))
    assert running["structuredContent"] == {
        "status": "running",
        "text": "The run is running; ask check_run again for the reply.",
        "run": "run_1",
        "conversation": "c",
    }
    assert running["isError"] is False
    failed = wire(codec.run_answer("run_1", RunStatus.FAILED, text="ignored"))
    assert failed["isError"] is True
    assert failed["content"] == [{"type": "text", "text": codec.FAILED_MESSAGE}]
    done = wire(codec.run_answer("run_1", RunStatus.COMPLETED, text="hello"))
    assert done["structuredContent"]["text"] == "hello"


def test_a_tool_error_on_the_wire() -> None:
    assert wire(codec.tool_error("Nope.")) == {
        "content": [{"type": "text", "text": "Nope."}],
        "isError": True,
        "resultType": "complete",
    }


# --- headers ----------------------------------------------------------------------------

LOOPBACK = ("http://localhost:*", "http://127.0.0.1:*", "https://ide.example")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("http://localhost:6274", True),
        ("HTTP://LOCALHOST:6274", True),
        ("http://127.0.0.1:8000", True),
        ("https://ide.example", True),
        ("https://ide.example:443", False),
        ("http://localhost", False),
        ("http://localhost:", False),
        ("http://localhost:80.evil.example", False),
        ("http://localhost.evil.example:80", False),
        ("https://evil.example", False),
        ("null", False),
        ("", False),
    ],
)
def test_origin_allowlist(origin: str | None, allowed: bool) -> None:
    assert codec.origin_allowed(origin, LOOPBACK) is allowed


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost:8000", True),
        ("localhost", True),
        ("127.0.0.1:8000", False),
        ("evil.example", False),
        ("localhost:8000@evil", False),
        (None, False),
    ],
)
def test_host_allowlist(host: str | None, allowed: bool) -> None:
    assert codec.host_allowed(host, ("localhost:*",)) is allowed
    assert codec.host_allowed(host, None) is True


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert codec.bearer_token(header) == token


# --- conversations and outcomes -------------------------------------------------------------


def test_which_conversation_a_call_continues() -> None:
    named = codec.session_for("project-x", mcp_session="abc", direct=True)
    assert (named.key, named.caller_keyed) == ("project-x", True)
    direct = codec.session_for(None, mcp_session="abc", direct=True)
    assert (direct.key, direct.caller_keyed, direct.is_direct) == (None, False, True)
    per_session = codec.session_for(None, mcp_session="abc", direct=False)
    assert (per_session.key, per_session.caller_keyed) == ("session-abc", True)
    fresh = codec.session_for(None, mcp_session=None, direct=False, fresh="new-1")
    assert (fresh.key, fresh.caller_keyed, fresh.private_until_reply) == ("new-1", True, False)
    # Answered only once the run ends: nobody else can name it before (``opening`` rule 5).
    answered = codec.session_for(
        None, mcp_session=None, direct=False, fresh="new-1", answered_at_end=True
    )
    assert (answered.key, answered.private_until_reply) == ("new-1", True)
    for shown_before in (
        codec.session_for("project-x", mcp_session=None, direct=False, answered_at_end=True),
        codec.session_for(None, mcp_session="abc", direct=False, answered_at_end=True),
        codec.session_for(None, mcp_session=None, direct=True, answered_at_end=True),
    ):
        assert not shown_before.private_until_reply
    # No name for a new one (a command): caller-keyed without a key, nothing to continue.
    command = codec.session_for(None, mcp_session=None, direct=False)
    assert (command.key, command.caller_keyed) == (None, True)


REF = SessionRef("iso-1", "sess-1", "project-x")


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (
            TurnCompleted(HostedRunResult("raw", REF, "The answer is 5."), saved=True),
            {"status": "completed", "text": "The answer is 5.", "conversation": "project-x"},
        ),
        (
            TurnCompleted(
                HostedRunResult(CommandReply("new", "Started a new conversation."), REF, "x"),
                saved=False,
            ),
            {"status": "completed", "text": "x"},
        ),
    ],
)
def test_completed_outcomes_render_as_answers(
    outcome: TurnCompleted, expected: dict[str, Any]
) -> None:
    assert codec.render_outcome(outcome).structured_content == expected


@pytest.mark.parametrize(
    ("outcome", "text"),
    [
        (TurnFailed("ValueError: secret=hunter2", REF), codec.FAILED_MESSAGE),
        (TurnFailed("cancelled", REF, cancelled=True), codec.CANCELLED_MESSAGE),
        (
            TurnRefused(RefusalReason.SESSION_BUSY, "lease held by run 7"),
            "The conversation is busy with another request; try again when it has finished.",
        ),
        (
            TurnRefused(
                RefusalReason.DENIED,
                "denied (not_listed)",
                Denied("not_listed", "Sorry, no.", {"native_id": "bob"}),
            ),
            "Sorry, no.",
        ),
    ],
)
def test_other_outcomes_render_as_bland_tool_errors(
    outcome: TurnFailed | TurnRefused, text: str
) -> None:
    rendered = wire(codec.render_outcome(outcome))
    assert rendered["isError"] is True
    assert rendered["content"] == [{"type": "text", "text": text}]
    assert "hunter2" not in json.dumps(rendered)
    assert "bob" not in json.dumps(rendered)
