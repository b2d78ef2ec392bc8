"""Identity, linking and authorization end to end: real HTTP to Hypercorn on loopback.

One host, two channels: Invocations (the caller named by the platform's ``x-agent-user-id``
header, host-tracked sessions) and ``ChatChannel``, a minimal JSON chat channel written
here (host-tracked, direct or group conversations). The target is the demo Agent
Framework agent, or a callable that counts its calls. The host's clock is injected, so
expiry and cool-downs are tested without waiting. Runs under asyncio and trio.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agenthost import (
    Channel,
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    Host,
    HostMessage,
    HostServices,
    TurnCompleted,
    TurnRefused,
)
from agenthost.backends.linking import OneTimeCodeLinker
from agenthost.channels.invocations import InvocationsChannel
from agenthost.demo import build_agent
from agenthost.sansio_core.authorization import (
    AnyOfAllowlists,
    LinkedClaimAllowlist,
    NativeIdAllowlist,
)
from agenthost.sansio_core.commands import CommandReply
from agenthost.sansio_core.link_codes import AttemptLimit
from agenthost.sansio_core.link_policy import SameConfidentialityTierOnly
from agenthost.stores.sqlite import SQLiteStore
from tests.served import served

pytestmark = pytest.mark.anyio

INVOKE = "/invocations/invoke"
TIMEOUT = 30.0
CODE = re.compile(r"/link ([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})")


class Clock:
    """The host's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ChatChannel(Channel):
    """A minimal chat channel: ``POST /{name}/send {"user", "text", "group"?}``.

    Host-tracked: a direct message continues the user's conversation, a group message the
    user's conversation in that group. ``POST /{name}/verified {"user", "claims"}`` stands
    in for an identity provider's callback and records verified claims.
    """

    def __init__(
        self,
        name: str = "chat",
        *,
        tier: str = "standard",
        require_link: Any = "inherit",
        allowlist: Any = "inherit",
        verifies_claims: bool = False,
    ) -> None:
        self.name = name
        self.confidentiality_tier = tier
        self.require_link = require_link
        self.allowlist = allowlist
        self.provides_verified_claims = verifies_claims

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        async def send(request: Request) -> Response:
            body = await request.json()
            group = body.get("group")
            outcome = await host.run(
                ChannelRequest(
                    channel=self.name,
                    identity=ChannelIdentity(self.name, body["user"]),
                    input=(HostMessage.user(body["text"]),),
                    session=ChannelSession(conversation_id=group, is_direct=group is None),
                )
            )
            if isinstance(outcome, TurnCompleted):
                command = outcome.result.result
                return JSONResponse(
                    {
                        "output": outcome.result.text,
                        "command": command.command if isinstance(command, CommandReply) else None,
                    }
                )
            if isinstance(outcome, TurnRefused):
                return JSONResponse(
                    {"error": {"code": outcome.reason.value, "message": outcome.user_message}},
                    status_code=403,
                )
            return JSONResponse({"error": {"code": "failed"}}, status_code=500)

        async def verified(request: Request) -> Response:
            body = await request.json()
            result = await host.link_verified_claims(
                ChannelIdentity(self.name, body["user"]), body["claims"], source="test-idp"
            )
            return JSONResponse(
                {"linked": result.linked, "reason": result.reason.value},
                status_code=200 if result.linked else 409,
            )

        return [
            Route(f"/{self.name}/send", send, methods=["POST"]),
            Route(f"/{self.name}/verified", verified, methods=["POST"]),
        ]


class Counting:
    """A target that answers with the user's words so far, and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, messages: list[HostMessage]) -> str:
        self.calls += 1
        return " | ".join(m.text for m in messages if m.role == "user")


@asynccontextmanager
async def serving(
    tmp_path: Path,
    *,
    target: Any = None,
    chat: ChatChannel | None = None,
    clock: Clock | None = None,
    **host_options: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    host_options.setdefault("linker", OneTimeCodeLinker())
    host = Host(
        target if target is not None else build_agent(),
        channels=[
            InvocationsChannel(trust_platform_headers=True, session_keys="host"),
            chat or ChatChannel(),
        ],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
        clock=clock or Clock(),
        **host_options,
    )
    with anyio.fail_after(TIMEOUT):
        async with (
            served(host.app) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client,
        ):
            yield client


async def invoke(client: httpx.AsyncClient, user: str, text: str) -> httpx.Response:
    return await client.post(INVOKE, json={"input": text}, headers={"x-agent-user-id": user})


async def on_invocations(client: httpx.AsyncClient, user: str, text: str) -> str:
    response = await invoke(client, user, text)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "completed"
    output: str = body["output"]
    return output


async def chat(
    client: httpx.AsyncClient, user: str, text: str, *, group: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"user": user, "text": text}
    if group is not None:
        body["group"] = group
    return await client.post("/chat/send", json=body)


async def on_chat(client: httpx.AsyncClient, user: str, text: str, **options: Any) -> str:
    response = await chat(client, user, text, **options)
    assert response.status_code == 200, response.text
    output: str = response.json()["output"]
    return output


async def code_for(client: httpx.AsyncClient, user: str) -> str:
    shown = await on_invocations(client, user, "/link")
    match = CODE.search(shown)
    assert match is not None, shown
    return match[1]


WRONG = "ZZZZ-ZZZZ-ZZZZ"


# --- the success criterion: one user, two channels, one conversation ----------------------


async def test_a_code_links_two_channels_into_one_conversation(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:
        first = await on_invocations(client, "ada", "hello")
        assert first == 'You said: "hello" (message 1 of this conversation)'
        recalled = await on_invocations(client, "ada", "what did I say first?")
        assert recalled == 'You first said: "hello"'

        # Before linking, the chat identity is another user with its own conversation.
        assert await on_chat(client, "ada-chat", "what did I say first?") == (
            "This is the first thing you said."
        )

        code = await code_for(client, "ada")
        linked = await on_chat(client, "ada-chat", f"/link {code}")
        assert linked.startswith("Linked")

        # The chat channel continues the Invocations conversation.
        assert await on_chat(client, "ada-chat", "and what did I ask first?") == (
            'You first said: "hello"'
        )
        # ...and Invocations sees what was said on the chat channel: one conversation.
        assert await on_invocations(client, "ada", "and now?") == (
            'You said: "and now?" (message 4 of this conversation)'
        )

        # Unlinked, the chat identity starts over and never reaches the shared conversation.
        assert (await on_chat(client, "ada-chat", "/unlink")).startswith("Unlinked")
        assert await on_chat(client, "ada-chat", "what did I say first?") == (
            "This is the first thing you said."
        )
        assert await on_invocations(client, "ada", "what did I say first?") == (
            'You first said: "hello"'
        )


async def test_commands_never_reach_the_agent(tmp_path: Path) -> None:
    target = Counting()
    async with serving(tmp_path, target=target) as client:
        for text in ("/help", "/link", "/new", "/unlink", f"/link {WRONG}"):
            response = await invoke(client, "ada", text)
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "completed"
        assert target.calls == 0
        assert "/link" in await on_invocations(client, "ada", "/help")
        assert await on_invocations(client, "ada", "a message") == "a message"
        assert target.calls == 1


async def test_new_and_help_work_without_a_linker(tmp_path: Path) -> None:
    """No linker: ``/new`` and ``/help`` are still the host's, ``/link`` is the target's."""
    target = Counting()
    async with serving(tmp_path, target=target, linker=None) as client:
        assert await on_invocations(client, "ada", "first") == "first"
        assert await on_invocations(client, "ada", "second") == "first | second"

        assert "new conversation" in await on_invocations(client, "ada", "/new")
        assert target.calls == 2  # /new never reached the target
        assert await on_invocations(client, "ada", "fresh") == "fresh"

        helped = await on_invocations(client, "ada", "/help")
        assert "/new" in helped and "/help" in helped
        assert "/link" not in helped and "/unlink" not in helped
        assert target.calls == 3

        # Without a linker /link is not a command: the target answers it.
        assert await on_invocations(client, "ada", "/link") == "fresh | /link"
        assert target.calls == 4


async def test_a_background_command_is_answered_at_once(tmp_path: Path) -> None:
    target = Counting()
    async with serving(tmp_path, target=target) as client:
        response = await client.post(
            INVOKE, json={"input": "/help", "background": True}, headers={"x-agent-user-id": "a"}
        )
        # Answered in this one reply (a command is never queued, and its reply, which may
        # be a link code, is never stored as a pollable result).
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "completed"
        assert "/link" in response.json()["output"]
        assert "poll_url" not in response.json()
        assert target.calls == 0


# --- the code's promises ------------------------------------------------------------------


async def test_wrong_codes_lock_further_attempts_until_the_cool_down(tmp_path: Path) -> None:
    clock = Clock()
    linker = OneTimeCodeLinker(per_identity=AttemptLimit(3, 600.0, 120.0))
    async with serving(tmp_path, clock=clock, linker=linker) as client:
        code = await code_for(client, "ada")
        for _ in range(3):
            assert "not valid" in await on_chat(client, "mallory", f"/link {WRONG}")
        # Locked out: even the right code is refused, and nothing is linked.
        assert "Too many" in await on_chat(client, "mallory", f"/link {code}")
        clock.advance(119)
        assert "Too many" in await on_chat(client, "mallory", f"/link {code}")
        # Another identity is not locked by mallory's failures.
        other = await code_for(client, "ada")
        assert (await on_chat(client, "ada-chat", f"/link {other}")).startswith("Linked")
        clock.advance(1)
        # After the cool-down the sender may try again (ada's first code was replaced).
        assert "not valid" in await on_chat(client, "mallory", f"/link {code}")


async def test_an_expired_code_fails(tmp_path: Path) -> None:
    clock = Clock()
    async with serving(tmp_path, clock=clock) as client:
        await on_invocations(client, "ada", "hello")
        code = await code_for(client, "ada")
        clock.advance(601)
        assert "expired" in await on_chat(client, "ada-chat", f"/link {code}")
        assert await on_chat(client, "ada-chat", "what did I say first?") == (
            "This is the first thing you said."
        )


async def test_a_replayed_code_fails(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:
        code = await code_for(client, "ada")
        assert (await on_chat(client, "ada-chat", f"/link {code}")).startswith("Linked")
        assert "already used" in await on_chat(client, "mallory", f"/link {code}")
        assert "already" in await on_chat(client, "ada-chat", f"/link {code}")


async def test_a_code_is_never_shown_or_taken_in_a_group(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:
        answer = await on_chat(client, "ada-chat", "/link", group="team")
        assert "directly" in answer and CODE.search(answer) is None
        code = await code_for(client, "ada")
        assert "directly" in await on_chat(client, "ada-chat", f"/link {code}", group="team")
        assert (await on_chat(client, "ada-chat", f"/link {code}")).startswith("Linked")


async def test_the_link_policy_refuses_with_a_clear_message(tmp_path: Path) -> None:
    async with serving(
        tmp_path,
        chat=ChatChannel(tier="public"),
        link_policy=SameConfidentialityTierOnly(),
    ) as client:
        await on_invocations(client, "ada", "hello")
        code = await code_for(client, "ada")
        assert "does not allow" in await on_chat(client, "ada-chat", f"/link {code}")
        assert await on_chat(client, "ada-chat", "what did I say first?") == (
            "This is the first thing you said."
        )


# --- authorization ------------------------------------------------------------------------


async def test_a_denied_caller_never_runs_the_target(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = Counting()
    allowlist = NativeIdAllowlist({"invocations": ["ada"]}, include_linked=False)
    caplog.set_level(logging.INFO, logger="agenthost")
    async with serving(tmp_path, target=target, allowlist=allowlist) as client:
        assert await on_invocations(client, "ada", "hi") == "hi"
        for text in ("secret plans", "/help", "/link"):
            response = await invoke(client, "mallory", text)
            assert response.status_code == 403, response.text
            error = response.json()["error"]
            assert error["code"] == "forbidden"
            assert "mallory" not in error["message"] and "allowlist" not in error["message"]
        chat_denied = await chat(client, "someone", "hi")
        assert chat_denied.status_code == 403
        assert target.calls == 1
    denials = [r for r in caplog.records if r.getMessage() == "request denied"]
    assert len(denials) == 4
    assert {getattr(r, "denied_native_id", None) for r in denials} == {"mallory", "someone"}
    assert all(getattr(r, "reason_code", None) == "not_allowlisted" for r in denials)
    assert not any("secret plans" in str(r.__dict__) for r in caplog.records)


async def test_a_channel_requiring_a_link_answers_link_required_until_linked(
    tmp_path: Path,
) -> None:
    target = Counting()
    async with serving(tmp_path, target=target, chat=ChatChannel(require_link=True)) as client:
        refused = await chat(client, "ada-chat", "hello")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "link_required"
        assert "/link" in refused.json()["error"]["message"]
        in_group = await chat(client, "ada-chat", "hello", group="team")
        assert "directly" in in_group.json()["error"]["message"]
        assert "/link" in await on_chat(client, "ada-chat", "/help")
        assert (await chat(client, "ada-chat", "/new")).status_code == 403
        assert target.calls == 0

        # Invocations does not require a link: Ada gets a code there and uses it here.
        assert await on_invocations(client, "ada", "hello") == "hello"
        code = await code_for(client, "ada")
        assert (await on_chat(client, "ada-chat", f"/link {code}")).startswith("Linked")
        assert await on_chat(client, "ada-chat", "and here") == "hello | and here"
        assert target.calls == 2


async def test_invocations_answers_403_link_required(tmp_path: Path) -> None:
    async with serving(tmp_path, target=Counting(), require_link=True) as client:
        response = await invoke(client, "ada", "hello")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "link_required"
        assert "/link" in response.json()["error"]["message"]


# --- verified claims: the seam the OpenID Connect linker calls -------------------------------


async def test_verified_claims_admit_and_link_silently(tmp_path: Path) -> None:
    target = Counting()
    chat_channel = ChatChannel(verifies_claims=True)
    allowlist = AnyOfAllowlists(
        NativeIdAllowlist({"invocations": ["operator"]}), LinkedClaimAllowlist("tid", ["contoso"])
    )
    async with serving(tmp_path, target=target, chat=chat_channel, allowlist=allowlist) as client:
        refused = await chat(client, "ada-chat", "hello")
        assert refused.json()["error"]["code"] == "link_required"

        # The identity provider verified Ada: her chat identity becomes the claims' holder.
        contoso = {"tid": "contoso", "oid": "oid-ada"}
        verified = await client.post("/chat/verified", json={"user": "ada-chat", "claims": contoso})
        assert verified.json() == {"linked": True, "reason": "claims_recorded"}
        assert await on_chat(client, "ada-chat", "hello") == "hello"

        # Another chat identity presenting the same verified subject links silently.
        again = await client.post("/chat/verified", json={"user": "ada-phone", "claims": contoso})
        assert again.json() == {"linked": True, "reason": "linked"}
        assert await on_chat(client, "ada-phone", "from my phone") == "hello | from my phone"

        # Someone from another tenant is verified, and still not admitted.
        fabrikam = {"tid": "fabrikam", "oid": "oid-eve"}
        await client.post("/chat/verified", json={"user": "eve", "claims": fabrikam})
        denied = await chat(client, "eve", "hello")
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "denied"
        assert target.calls == 2
