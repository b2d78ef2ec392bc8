"""The MCP channel end to end: the official ``mcp`` client over streamable HTTP.

Every test serves ``host.app`` with the real Hypercorn on 127.0.0.1 inside the test's own
event loop (asyncio or trio, from ``AGENTHOST_TEST_BACKEND``) and talks to it with the
SDK's ``Client`` in both protocol generations it speaks: the initialize handshake
(``mode="legacy"``, 2025-11-25) and the stateless 2026-07-28 envelope. Where a check is
about the HTTP exchange itself (a status code, a header) it is made with ``httpx``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent
from starlette.requests import HTTPConnection

from agenthost import HostMessage, NativeIdAllowlist, OneTimeCodeLinker, RunStatus
from agenthost.channels.invocations import InvocationsChannel
from agenthost.channels.mcp import MCPChannel
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.mcp.conftest import (
    TIMEOUT,
    TOKENS,
    Gated,
    Recorder,
    Streaming,
    make_host,
    mcp_client,
)
from tests.served import served

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
ACCEPT = "application/json, text/event-stream"


def text_of(result: CallToolResult) -> str:
    assert len(result.content) == 1
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def answered(result: CallToolResult) -> dict[str, Any]:
    """A completed answer: its text block and ``structuredContent`` agree."""
    assert not result.is_error, text_of(result)
    structured = result.structured_content
    assert isinstance(structured, dict)
    assert structured["status"] == "completed"
    assert structured["text"] == text_of(result)
    return structured


def tool_error(result: CallToolResult) -> str:
    assert result.is_error
    text = text_of(result)
    assert "Traceback" not in text and 'File "' not in text
    return text


def mcp_errors(error: BaseException) -> Iterator[MCPError]:
    """The MCP errors inside what the client raised (the SDK wraps them in task groups)."""
    if isinstance(error, MCPError):
        yield error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from mcp_errors(inner)


async def refused_by_client(base_url: str, generation: str, **options: Any) -> list[MCPError]:
    """Connect and list the tools; answer the MCP errors the client ended with."""
    try:
        async with mcp_client(base_url, generation, **options) as client:
            await client.list_tools()
    except Exception as error:  # the SDK raises its errors inside exception groups
        found = list(mcp_errors(error))
        assert found, f"expected an MCP error, got {error!r}"
        return found
    raise AssertionError("the client was not refused")


# --- the catalog and a call --------------------------------------------------------


async def test_lists_the_target_tool_with_its_schemas(tmp_path: Path, generation: str) -> None:
    channel = MCPChannel(
        api_keys=TOKENS,
        tool_name="helper",
        tool_title="The helper",
        tool_description="Ask the helper.",
    )
    host = make_host(Recorder(), tmp_path, channels=[channel])
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, mcp_client(base, generation) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    # No linker: /link and /unlink are not the host's commands, so no tools for them.
    assert set(tools) == {"helper", "new_conversation", "check_run", "cancel_run"}
    helper = tools["helper"]
    assert helper.title == "The helper"
    assert helper.description == "Ask the helper."
    assert helper.input_schema["required"] == ["message"]
    assert set(helper.input_schema["properties"]) == {"message", "conversation", "background"}
    assert helper.output_schema is not None
    assert helper.output_schema["required"] == ["status", "text"]


async def test_a_call_answers_text_and_structured_content(tmp_path: Path, generation: str) -> None:
    recorder = Recorder()
    host = make_host(recorder, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, mcp_client(base, generation) as client:
            await client.list_tools()  # the client then checks results against outputSchema
            result = await client.call_tool("ask", {"message": "hello there"})
    structured = answered(result)
    assert structured["text"] == "hello there"
    assert isinstance(structured["conversation"], str) and structured["conversation"]
    assert recorder.calls == [["hello there"]]


async def test_a_fresh_conversation_is_written_once_with_its_first_reply(
    tmp_path: Path,
) -> None:
    """A stateless call naming no conversation gets one whose name only its result shows:
    the turn opens on a read and its save creates the session, one write transaction (a
    named conversation is written when the turn opens, and again by the save). A background
    call shows the name at once, so its session is written before the run."""
    host = make_host(Recorder(), tmp_path)
    assert isinstance(host.store, SQLiteStore)
    writes: dict[str, int] = {}
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, mcp_client(base, MODERN) as client:
            await client.call_tool("ask", {"message": "warm up"})  # opens the store
            conn = host.store._conn
            assert conn is not None
            for case, arguments in (
                ("fresh", {"message": "hi"}),
                ("named", {"message": "hi", "conversation": "project-x"}),
            ):
                statements: list[str] = []
                conn.set_trace_callback(statements.append)
                try:
                    first = answered(await client.call_tool("ask", arguments))
                finally:
                    conn.set_trace_callback(None)
                writes[case] = statements.count("BEGIN IMMEDIATE")
                # saved with the turn: the next call continues it
                again = answered(
                    await client.call_tool(
                        "ask", {"message": "again", "conversation": first["conversation"]}
                    )
                )
                assert again["text"] == "hi | again"
    assert writes == {"fresh": 1, "named": 2}


async def test_streamed_updates_become_progress_notifications(
    tmp_path: Path, generation: str
) -> None:
    host = make_host(Streaming(["one ", "two ", "three"]), tmp_path)
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, mcp_client(base, generation) as client:
            result = await client.call_tool(
                "ask", {"message": "count"}, progress_callback=on_progress
            )
    assert answered(result)["text"] == "one two three"
    assert seen == [(1.0, None, "one "), (2.0, None, "two "), (3.0, None, "three")]


async def test_a_client_cancel_cancels_the_run(tmp_path: Path, generation: str) -> None:
    gated = Gated()
    host = make_host(gated, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, mcp_client(base, generation) as client:
            scopes: list[anyio.CancelScope] = []

            async def call() -> None:
                with anyio.CancelScope() as scope:
                    scopes.append(scope)
                    await client.call_tool("ask", {"message": "a long job", "conversation": "c"})

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call)
                await gated.started.wait()
                # The session era sends notifications/cancelled; the stateless one closes
                # the request's stream.
                scopes[0].cancel()
            await gated.cancelled.wait()
            after = await client.call_tool("ask", {"message": "still there?", "conversation": "c"})
    assert not gated.release.is_set()
    # The cancelled run was not saved: its message is not in the conversation.
    assert answered(after)["text"] == "still there?"
    assert gated.calls == [["a long job"], ["still there?"]]


async def test_in_the_session_era_a_disconnect_is_not_a_cancel(tmp_path: Path) -> None:
    gated = Gated()
    host = make_host(gated, tmp_path)
    headers = {"authorization": "Bearer token-alice", "accept": ACCEPT}
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {
            "name": "ask",
            "arguments": {"message": "a long job", "conversation": "d"},
            "_meta": {"progressToken": "p"},
        },
    }
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base:
            async with httpx.AsyncClient(base_url=base) as http:
                opened = await http.post("/mcp", json=_initialize("2025-11-25"), headers=headers)
                session = {
                    "mcp-session-id": opened.headers["mcp-session-id"],
                    "mcp-protocol-version": "2025-11-25",
                }
                initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
                await http.post("/mcp", json=initialized, headers={**headers, **session})
                async with http.stream(
                    "POST", "/mcp", json=call, headers={**headers, **session}
                ) as streamed:
                    first = await anext(streamed.aiter_text())
                # The client hung up without notifications/cancelled: the run goes on.
                await anyio.sleep(0.3)
                assert not gated.cancelled.is_set()
                gated.release.set()
            async with mcp_client(base, "legacy") as client:
                # Queued behind the first run (one run at a time per conversation).
                after = answered(
                    await client.call_tool("ask", {"message": "then?", "conversation": "d"})
                )
    assert '"notifications/progress"' in first
    # The finished run was saved: its message is in the conversation.
    assert after["text"] == "a long job | then?"


async def test_a_failed_run_is_a_tool_error_with_a_bland_message(
    tmp_path: Path, generation: str
) -> None:
    async def failing(messages: list[HostMessage]) -> str:
        raise RuntimeError("database password is hunter2")

    host = make_host(failing, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, mcp_client(base, generation) as client:
            result = await client.call_tool("ask", {"message": "hi"})
            bad = await client.call_tool("ask", {"message": ""})
            unknown_argument = await client.call_tool("ask", {"message": "hi", "colour": "red"})
            with pytest.raises(MCPError) as unknown_tool:
                await client.call_tool("no_such_tool", {})
    assert tool_error(result) == "The agent could not answer this request."
    assert "hunter2" not in str(result.model_dump())
    assert tool_error(bad) == "'message' must be a non-empty string."
    assert tool_error(unknown_argument) == "Unknown argument: 'colour'."
    assert unknown_tool.value.code == -32602


# --- conversations and callers --------------------------------------------------------


async def test_the_session_era_continues_a_conversation_per_mcp_session(tmp_path: Path) -> None:
    host = make_host(Recorder(), tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base:
            async with mcp_client(base, "legacy") as client:
                first = answered(await client.call_tool("ask", {"message": "my name is Ada"}))
                second = answered(await client.call_tool("ask", {"message": "who am I?"}))
            async with mcp_client(base, "legacy") as client:
                fresh = answered(await client.call_tool("ask", {"message": "hello again"}))
                # The first session's conversation, by the name it answered.
                resumed = answered(
                    await client.call_tool(
                        "ask", {"message": "and now?", "conversation": first["conversation"]}
                    )
                )
    assert second["text"] == "my name is Ada | who am I?"
    assert second["conversation"] == first["conversation"]
    assert fresh["text"] == "hello again"
    assert fresh["conversation"] != first["conversation"]
    assert resumed["text"] == "my name is Ada | who am I? | and now?"


async def test_the_stateless_generation_continues_by_conversation_name(tmp_path: Path) -> None:
    host = make_host(Recorder(), tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base:
            async with mcp_client(base, MODERN) as client:
                first = answered(await client.call_tool("ask", {"message": "my name is Ada"}))
                unnamed = answered(await client.call_tool("ask", {"message": "who am I?"}))
                named = answered(
                    await client.call_tool(
                        "ask", {"message": "who am I?", "conversation": first["conversation"]}
                    )
                )
                await client.call_tool("ask", {"message": "one", "conversation": "project-x"})
            # A name works in the other generation too: it is the caller's, not the wire's.
            async with mcp_client(base, "legacy") as client:
                other = answered(
                    await client.call_tool("ask", {"message": "two", "conversation": "project-x"})
                )
    # Without a name each stateless call starts a conversation and answers its name.
    assert unnamed["text"] == "who am I?"
    assert unnamed["conversation"] != first["conversation"]
    assert named["text"] == "my name is Ada | who am I?"
    assert other["text"] == "one | two"


async def test_conversations_survive_a_restart_and_old_sessions_end(tmp_path: Path) -> None:
    headers = {"authorization": "Bearer token-alice", "accept": ACCEPT}
    with anyio.fail_after(TIMEOUT):
        async with served(make_host(Recorder(), tmp_path).app) as base:
            async with mcp_client(base, "legacy") as client:
                first = answered(await client.call_tool("ask", {"message": "remember me"}))
            async with httpx.AsyncClient(base_url=base) as http:
                opened = await http.post("/mcp", json=_initialize("2025-11-25"), headers=headers)
        session = opened.headers["mcp-session-id"]
        # A new process on the same store: MCP sessions are gone, conversations are not.
        async with served(make_host(Recorder(), tmp_path).app) as base:
            async with httpx.AsyncClient(base_url=base) as http:
                stale = await http.post(
                    "/mcp",
                    json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                    headers={**headers, "mcp-session-id": session},
                )
            async with mcp_client(base, MODERN) as client:
                again = answered(
                    await client.call_tool(
                        "ask", {"message": "still here?", "conversation": first["conversation"]}
                    )
                )
    assert stale.status_code == 404
    assert again["text"] == "remember me | still here?"


async def test_callers_are_isolated(tmp_path: Path, generation: str) -> None:
    host = make_host(Recorder(), tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base:
            async with mcp_client(base, generation, token="token-alice") as alice:
                answered(
                    await alice.call_tool("ask", {"message": "secret plan", "conversation": "x"})
                )
                mine = answered(await alice.call_tool("ask", {"message": "unnamed plan"}))
                started = await alice.call_tool(
                    "ask", {"message": "slow", "conversation": "y", "background": True}
                )
            async with mcp_client(base, generation, token="token-bob") as bob:
                theirs = answered(
                    await bob.call_tool("ask", {"message": "hello", "conversation": "x"})
                )
                # Alice's conversation name, and her session's, reach only Bob's own.
                via_session = answered(
                    await bob.call_tool(
                        "ask", {"message": "hi", "conversation": mine["conversation"]}
                    )
                )
                assert isinstance(started.structured_content, dict)
                run = started.structured_content["run"]
                peek = await bob.call_tool("check_run", {"run": run})
                stop = await bob.call_tool("cancel_run", {"run": run})
    assert theirs["text"] == "hello"
    assert via_session["text"] == "hi"
    assert tool_error(peek) == "No run has that id (or it expired)."
    assert tool_error(stop) == "No run has that id (or it expired)."


async def test_another_caller_cannot_use_an_mcp_session(tmp_path: Path) -> None:
    host = make_host(Recorder(), tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, httpx.AsyncClient(base_url=base) as http:
            opened = await http.post(
                "/mcp",
                json=_initialize("2025-11-25"),
                headers={"authorization": "Bearer token-alice", "accept": ACCEPT},
            )
            assert opened.status_code == 200
            session = opened.headers["mcp-session-id"]
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/list",
                "params": {},
            }
            hijack = await http.post(
                "/mcp",
                json=call,
                headers={
                    "authorization": "Bearer token-bob",
                    "accept": ACCEPT,
                    "mcp-session-id": session,
                    "mcp-protocol-version": "2025-11-25",
                },
            )
    assert hijack.status_code == 404
    assert "agenthost" not in hijack.text


# --- safety ---------------------------------------------------------------------------


async def test_a_foreign_origin_is_refused(tmp_path: Path, generation: str) -> None:
    channel = MCPChannel(
        api_keys=TOKENS, allowed_origins=("https://ide.example", "http://localhost:*")
    )
    host = make_host(Recorder(), tmp_path, channels=[channel])
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base:
            errors = await refused_by_client(
                base, generation, headers={"origin": "http://evil.example"}
            )
            async with httpx.AsyncClient(base_url=base) as http:
                refused = await http.post(
                    "/mcp",
                    json=_initialize("2025-11-25"),
                    headers={"accept": ACCEPT, "origin": "http://localhost.evil.example:80"},
                )
            for origin in ("https://ide.example", "http://localhost:6274"):
                async with mcp_client(base, generation, headers={"origin": origin}) as client:
                    answered(await client.call_tool("ask", {"message": origin}))
    assert [error.message for error in errors] == ["Origin not allowed."]
    # Refused before authentication is even looked at.
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "Origin not allowed."


async def test_a_missing_or_unknown_token_is_answered_401(tmp_path: Path, generation: str) -> None:
    recorder = Recorder()
    host = make_host(recorder, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base:
            assert await refused_by_client(base, generation, token=None)
            assert await refused_by_client(base, generation, token="token-mallory")
            async with httpx.AsyncClient(base_url=base) as http:
                missing = await http.post(
                    "/mcp", json=_initialize("2025-11-25"), headers={"accept": ACCEPT}
                )
                wrong = await http.post(
                    "/mcp",
                    json=_initialize("2025-11-25"),
                    headers={"accept": ACCEPT, "authorization": "Bearer token-mallory"},
                )
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer ")
        assert response.json()["error"] == "invalid_token"
    assert recorder.calls == []


async def test_an_authenticate_hook_names_the_caller(tmp_path: Path, generation: str) -> None:
    async def authenticate(connection: HTTPConnection) -> str | None:
        await anyio.lowlevel.checkpoint()
        token = connection.headers.get("authorization", "")
        if token == "Bearer broken":
            raise RuntimeError("the token service is down; secret=hunter2")
        return "carol" if token == "Bearer oauth-carol" else None

    recorder = Recorder()
    channel = MCPChannel(authenticate=authenticate, allowlist=NativeIdAllowlist({"mcp": ["carol"]}))
    host = make_host(recorder, tmp_path, channels=[channel])
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base:
            async with mcp_client(base, generation, token="oauth-carol") as client:
                reply = answered(await client.call_tool("ask", {"message": "hi"}))
            assert await refused_by_client(base, generation, token="token-alice")
            async with httpx.AsyncClient(base_url=base) as http:
                broken = await http.post(
                    "/mcp",
                    json=_initialize("2025-11-25"),
                    headers={"accept": ACCEPT, "authorization": "Bearer broken"},
                )
    assert reply["text"] == "hi"
    assert broken.status_code == 500
    assert broken.json()["error"]["message"] == "Server error."
    assert "hunter2" not in broken.text
    assert recorder.calls == [["hi"]]


async def test_an_oversized_body_is_answered_413(tmp_path: Path) -> None:
    channel = MCPChannel(api_keys=TOKENS, max_body_bytes=2048)
    recorder = Recorder()
    host = make_host(recorder, tmp_path, channels=[channel])
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, httpx.AsyncClient(base_url=base) as http:
            body = _initialize("2025-11-25")
            body["params"]["clientInfo"]["name"] = "x" * 4096
            response = await http.post(
                "/mcp",
                content=json.dumps(body),
                headers={
                    "accept": ACCEPT,
                    "authorization": "Bearer token-alice",
                    "content-type": "application/json",
                },
            )
    assert response.status_code == 413


async def test_an_idle_mcp_session_expires(tmp_path: Path) -> None:
    channel = MCPChannel(api_keys=TOKENS, session_idle_seconds=0.3)
    host = make_host(Recorder(), tmp_path, channels=[channel])
    headers = {"authorization": "Bearer token-alice", "accept": ACCEPT}
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, httpx.AsyncClient(base_url=base) as http:
            opened = await http.post("/mcp", json=_initialize("2025-11-25"), headers=headers)
            session = {"mcp-session-id": opened.headers["mcp-session-id"]}
            session["mcp-protocol-version"] = "2025-11-25"
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            ok = await http.post("/mcp", json=initialized, headers={**headers, **session})
            await anyio.sleep(1.0)
            later = await http.post(
                "/mcp",
                json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                headers={**headers, **session},
            )
    assert ok.status_code == 202
    assert later.status_code == 404


async def test_open_sessions_are_bounded(tmp_path: Path) -> None:
    channel = MCPChannel(api_keys=TOKENS, max_sessions=1)
    host = make_host(Recorder(), tmp_path, channels=[channel])
    headers = {"authorization": "Bearer token-alice", "accept": ACCEPT}
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, httpx.AsyncClient(base_url=base) as http:
            first = await http.post("/mcp", json=_initialize("2025-11-25"), headers=headers)
            second = await http.post("/mcp", json=_initialize("2025-11-25"), headers=headers)
            ended = await http.delete(
                "/mcp",
                headers={
                    **headers,
                    "mcp-session-id": first.headers["mcp-session-id"],
                    "mcp-protocol-version": "2025-11-25",
                },
            )
            third = await http.post("/mcp", json=_initialize("2025-11-25"), headers=headers)
            # The stateless generation keeps no session, so the bound does not apply to it.
            async with mcp_client(base, MODERN, token="token-bob") as client:
                stateless = answered(await client.call_tool("ask", {"message": "hi"}))
    assert first.status_code == 200
    assert second.status_code == 503
    assert ended.status_code == 200
    assert third.status_code == 200
    assert stateless["text"] == "hi"


# --- host commands, access rules and background runs ------------------------------------


async def test_host_commands_are_tools_and_linking_joins_conversations(
    tmp_path: Path, generation: str
) -> None:
    channel = MCPChannel(api_keys=TOKENS, conversations="direct")
    host = make_host(Recorder(), tmp_path, channels=[channel], linker=OneTimeCodeLinker())
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base:
            async with mcp_client(base, generation, token="token-alice") as alice:
                names = {tool.name for tool in (await alice.list_tools()).tools}
                answered(await alice.call_tool("ask", {"message": "my name is Ada"}))
                challenge = text_of(await alice.call_tool("link_account", {}))
            found = re.search(r"\b[A-Z0-9]{4}(?:-[A-Z0-9]{4})+\b", challenge)
            assert found is not None, challenge
            code = found.group(0)
            async with mcp_client(base, generation, token="token-bob") as bob:
                linked = text_of(await bob.call_tool("link_account", {"code": code}))
                shared = answered(await bob.call_tool("ask", {"message": "who am I?"}))
                reset = text_of(await bob.call_tool("new_conversation", {}))
                fresh = answered(await bob.call_tool("ask", {"message": "hello"}))
                unlinked = await bob.call_tool("unlink_account", {})
    assert {"link_account", "unlink_account", "new_conversation"} <= names
    assert "linked" in linked.lower()
    # Bob's identity now resolves to Alice's user: her direct conversation continues.
    assert shared["text"] == "my name is Ada | who am I?"
    assert "new conversation" in reset.lower()
    assert fresh["text"] == "hello"
    assert not unlinked.is_error


async def test_a_command_sent_to_the_target_tool_is_answered_by_the_host(
    tmp_path: Path, generation: str
) -> None:
    recorder = Recorder()
    host = make_host(recorder, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, mcp_client(base, generation) as client:
            await client.list_tools()  # so the client checks the reply against outputSchema
            helped = answered(await client.call_tool("ask", {"message": "/help"}))
    assert helped["text"].startswith("Commands:\n/new: ")
    assert "conversation" not in helped
    assert recorder.calls == []


async def test_an_auto_client_negotiates_the_stateless_generation(tmp_path: Path) -> None:
    host = make_host(Recorder(), tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, mcp_client(base, "auto") as client:
            version = client.protocol_version
            reply = answered(await client.call_tool("ask", {"message": "hi"}))
    assert version == MODERN
    assert reply["text"] == "hi"


async def test_a_code_from_another_channel_links_the_mcp_caller(
    tmp_path: Path, generation: str
) -> None:
    channels = [
        InvocationsChannel(
            authenticate=lambda request: request.headers.get("x-user"), session_keys="host"
        ),
        MCPChannel(api_keys=TOKENS, conversations="direct"),
    ]
    host = make_host(Recorder(), tmp_path, channels=channels, linker=OneTimeCodeLinker())

    async def on_invocations(http: httpx.AsyncClient, text: str) -> str:
        answer = await http.post(
            "/invocations/invoke", json={"input": text}, headers={"x-user": "ada"}
        )
        assert answer.status_code == 200, answer.text
        output: str = answer.json()["output"]
        return output

    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, httpx.AsyncClient(base_url=base) as http:
            assert await on_invocations(http, "my name is Ada") == "my name is Ada"
            shown = await on_invocations(http, "/link")
            found = re.search(r"/link ([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})", shown)
            assert found is not None, shown
            async with mcp_client(base, generation) as client:
                before = answered(await client.call_tool("ask", {"message": "who am I?"}))
                linked = await client.call_tool("link_account", {"code": found[1]})
                after = answered(await client.call_tool("ask", {"message": "who am I now?"}))
            back = await on_invocations(http, "and there?")
    # Before linking the MCP caller is someone else, with a conversation of their own.
    assert before["text"] == "who am I?"
    assert text_of(linked).startswith("Linked")
    # Linked, the MCP caller continues Ada's conversation, and Invocations sees it too.
    assert after["text"] == "my name is Ada | who am I now?"
    assert back == "my name is Ada | who am I now? | and there?"


async def test_the_allowlist_applies(tmp_path: Path, generation: str) -> None:
    recorder = Recorder()
    channel = MCPChannel(api_keys=TOKENS, allowlist=NativeIdAllowlist({"mcp": ["alice"]}))
    host = make_host(recorder, tmp_path, channels=[channel])
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base:
            async with mcp_client(base, generation, token="token-alice") as alice:
                allowed = answered(await alice.call_tool("ask", {"message": "hi"}))
            async with mcp_client(base, generation, token="token-bob") as bob:
                denied = await bob.call_tool("ask", {"message": "let me in"})
    assert allowed["text"] == "hi"
    assert tool_error(denied) == "Sorry, this agent is not available to you."
    assert recorder.calls == [["hi"]]


async def test_require_link_applies(tmp_path: Path, generation: str) -> None:
    recorder = Recorder()
    channel = MCPChannel(api_keys=TOKENS, require_link=True)
    host = make_host(recorder, tmp_path, channels=[channel], linker=OneTimeCodeLinker())
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, mcp_client(base, generation) as client:
            must_link = await client.call_tool("ask", {"message": "let me in"})
            # Linking itself stays open to a caller who has to link first.
            challenge = await client.call_tool("link_account", {})
    assert "link this account first" in tool_error(must_link).lower()
    assert not challenge.is_error
    assert "link code" in text_of(challenge).lower()
    assert recorder.calls == []


async def test_a_background_run_is_polled_until_it_completes(
    tmp_path: Path, generation: str
) -> None:
    gated = Gated()
    host = make_host(gated, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base:
            async with mcp_client(base, generation) as client:
                started = await client.call_tool(
                    "ask", {"message": "a long job", "background": True}
                )
            assert not started.is_error
            assert isinstance(started.structured_content, dict)
            run = started.structured_content["run"]
            conversation = started.structured_content["conversation"]
            assert started.structured_content["status"] in ("queued", "running")
            # The client that started it has gone; another connection asks later.
            await gated.started.wait()
            async with mcp_client(base, generation) as client:
                pending = await client.call_tool("check_run", {"run": run})
                gated.release.set()
                for _ in range(200):
                    polled = await client.call_tool("check_run", {"run": run})
                    assert isinstance(polled.structured_content, dict)
                    if polled.structured_content["status"] == RunStatus.COMPLETED.value:
                        break
                    await anyio.sleep(0.05)
                # The answer named the run's conversation: it continues from the run.
                after = answered(
                    await client.call_tool(
                        "ask", {"message": "what happened?", "conversation": conversation}
                    )
                )
    assert isinstance(pending.structured_content, dict)
    assert pending.structured_content["status"] == "running"
    assert polled.structured_content == {
        "status": "completed",
        "text": "working done",
        "run": run,
        "conversation": conversation,
    }
    assert after["text"] == "a long job | what happened?"


async def test_a_background_run_can_be_cancelled(tmp_path: Path, generation: str) -> None:
    gated = Gated()
    host = make_host(gated, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, mcp_client(base, generation) as client:
            started = await client.call_tool("ask", {"message": "job", "background": True})
            assert isinstance(started.structured_content, dict)
            run = started.structured_content["run"]
            await gated.started.wait()
            stopped = await client.call_tool("cancel_run", {"run": run})
            await gated.cancelled.wait()
    assert isinstance(stopped.structured_content, dict)
    assert stopped.structured_content["status"] == "cancelled"
    assert stopped.is_error


# --- an older handshake client, without the SDK ----------------------------------------


async def test_a_2025_06_18_client_on_the_wire(tmp_path: Path) -> None:
    host = make_host(Streaming(["hello ", "from 06-18"]), tmp_path)
    headers = {"authorization": "Bearer token-alice", "accept": ACCEPT}
    with anyio.fail_after(TIMEOUT):
        async with served(host.app) as base, httpx.AsyncClient(base_url=base) as http:
            opened = await http.post("/mcp", json=_initialize("2025-06-18"), headers=headers)
            assert opened.status_code == 200
            assert _sse_messages(opened.text)[0]["result"]["protocolVersion"] == "2025-06-18"
            session = {
                "mcp-session-id": opened.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-06-18",
            }
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            await http.post("/mcp", json=initialized, headers={**headers, **session})
            call = {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "ask", "arguments": {"message": "hello from 06-18"}},
            }
            answer = await http.post("/mcp", json=call, headers={**headers, **session})
            ended = await http.delete("/mcp", headers={**headers, **session})
            after = await http.post("/mcp", json=call, headers={**headers, **session})
    # The call carried no progressToken: its stream holds the result and nothing else.
    assert [message.get("id") for message in _sse_messages(answer.text)] == [7]
    result = _sse_messages(answer.text)[-1]
    assert result["id"] == 7
    assert result["result"]["content"] == [{"type": "text", "text": "hello from 06-18"}]
    assert result["result"]["structuredContent"]["text"] == "hello from 06-18"
    assert ended.status_code == 200
    assert after.status_code == 404


def _initialize(version: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "raw-test", "version": "1"},
        },
    }


def _sse_messages(body: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("data:") :])
        for line in body.splitlines()
        if line.startswith("data:") and line[len("data:") :].strip()
    ]
