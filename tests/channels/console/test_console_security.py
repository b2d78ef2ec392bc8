"""The console's security rules over HTTP: who reaches it, login, CSRF, headers, escaping.

The host runs in-process (``Host.running``) and httpx talks to its ASGI app, which lets a
test present any peer address and ``Host`` header, as a remote browser or a DNS-rebinding
page would.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from agenthost import Host
from agenthost.channels.console import ConsoleChannel
from agenthost.channels.console.access import CONTENT_SECURITY_POLICY
from agenthost.sansio_core.types import ChannelIdentity, HostMessage
from agenthost.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio

TOKEN = "a-long-enough-console-token"
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')
LOCAL = "http://127.0.0.1:8000"
ORIGIN = {"origin": LOCAL}


async def echo(messages: Any) -> str:
    texts = [part.text for m in messages if isinstance(m, HostMessage) for part in m.parts]
    return f"echo: {texts[-1] if texts else ''}"


@asynccontextmanager
async def console(
    peer: str = "127.0.0.1", base_url: str = LOCAL, **options: Any
) -> AsyncIterator[tuple[Host, httpx.AsyncClient]]:
    host = Host(echo, channels=[ConsoleChannel(**options)], store=MemoryStore())
    async with host.running():
        transport = httpx.ASGITransport(app=host.app, client=(peer, 50000))
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield host, client


async def csrf_of(client: httpx.AsyncClient, path: str = "/console") -> str:
    page = await client.get(path)
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found is not None
    return found[1]


async def test_a_remote_peer_finds_nothing_by_default() -> None:
    async with console(peer="192.0.2.10") as (_, client):
        for path in ("/console", "/console/runs", "/console/static/console.js"):
            assert (await client.get(path)).status_code == 404
        assert (await client.post("/console/chat", data={"message": "hi"})).status_code == 404


async def test_a_rebinding_host_name_finds_nothing_even_from_loopback() -> None:
    async with console(base_url="http://attacker.example:8000") as (_, client):
        assert (await client.get("/console")).status_code == 404
    async with console(base_url="http://localhost:8000") as (_, client):
        assert (await client.get("/console")).status_code == 200


async def test_pages_carry_the_strict_policy_and_a_locked_down_cookie() -> None:
    async with console() as (_, client):
        page = await client.get("/console")
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "script-src 'self'" in CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-store"
        cookie = page.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert "<script>" not in page.text  # scripts come from static files only


async def test_every_action_needs_the_session_csrf_token_and_the_same_origin() -> None:
    async with console() as (host, client):
        csrf = await csrf_of(client)
        message = {"message": "hello"}
        assert (await client.post("/console/chat", data=message, headers=ORIGIN)).status_code == (
            403
        )
        wrong = {**message, "csrf": "0" * 64}
        assert (await client.post("/console/chat", data=wrong, headers=ORIGIN)).status_code == 403
        good = {**message, "csrf": csrf}
        cross = {"origin": "http://evil.example"}
        assert (await client.post("/console/chat", data=good, headers=cross)).status_code == 403
        site = {"sec-fetch-site": "cross-site"}
        assert (await client.post("/console/chat", data=good, headers=site)).status_code == 403
        answered = await client.post("/console/chat", data=good, headers=ORIGIN)
        assert answered.status_code == 200
        assert "echo: hello" in answered.text
        # The token is worth nothing in another browser session of the same console.
        transport = httpx.ASGITransport(app=host.app, client=("127.0.0.1", 50001))
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as other:
            await csrf_of(other)  # that browser has a session of its own
            stolen = await other.post("/console/chat", data=good, headers=ORIGIN)
            assert stolen.status_code == 403


async def test_what_the_console_shows_is_escaped() -> None:
    hostile = '<img src=x onerror="alert(1)">'
    async with console() as (host, client):
        csrf = await csrf_of(client)
        answered = await client.post(
            "/console/chat", data={"message": hostile, "csrf": csrf}, headers=ORIGIN
        )
        assert hostile not in answered.text
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in answered.text
        identity = ChannelIdentity("console", "operator")
        await host.link_identities(identity, ChannelIdentity("invocations", hostile))
        found = await client.get(
            "/console/users", params={"channel": "console", "native_id": "operator"},
            follow_redirects=True,
        )  # fmt: skip
        assert found.status_code == 200
        assert hostile not in found.text and "&lt;img src=x" in found.text


async def test_remote_access_needs_the_token_and_a_login_makes_a_fresh_session(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with console(peer="192.0.2.10", allow_remote=True, token=TOKEN) as (host, client):
        assert (await client.get("/console")).headers["location"] == "/console/login"
        planted = "a-session-id-an-attacker-chose"
        client.cookies.set("agenthost_console", planted)
        assert (await client.get("/console")).headers["location"] == "/console/login"
        assert (await client.post("/console/chat", data={"message": "x"})).status_code == 403
        refused = await client.post("/console/login", data={"token": "wrong"}, headers=ORIGIN)
        assert refused.status_code == 401
        accepted = await client.post("/console/login", data={"token": TOKEN}, headers=ORIGIN)
        assert accepted.status_code == 303
        fresh = accepted.cookies.get("agenthost_console")
        assert fresh not in (None, planted)
        client.cookies.clear()
        client.cookies.set("agenthost_console", fresh)
        assert (await client.get("/console/runs")).status_code == 200
        # Visitors who never log in leave nothing behind that could push this session out.
        transport = httpx.ASGITransport(app=host.app, client=("198.51.100.7", 50002))
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as flood:
            for _ in range(1100):
                assert (await flood.get("/console")).status_code == 303
        assert (await client.get("/console/runs")).status_code == 200
    assert TOKEN not in capsys.readouterr().err  # a configured token is never printed


async def test_a_token_is_drawn_and_printed_once_when_none_is_configured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with console(peer="192.0.2.10", allow_remote=True) as (host, client):
        [channel] = host.channels
        assert isinstance(channel, ConsoleChannel) and channel.token is not None
        assert f"log in with token {channel.token}" in capsys.readouterr().err
        login = await client.post("/console/login", data={"token": channel.token}, headers=ORIGIN)
        assert login.status_code == 303


async def test_metrics_are_opt_in_and_protected_like_the_console() -> None:
    async with console() as (_, client):
        assert (await client.get("/metrics")).status_code == 404
    async with console(peer="192.0.2.10", allow_remote=True, token=TOKEN, metrics=True) as (
        _,
        client,
    ):
        assert (await client.get("/metrics")).status_code == 401
        bad = {"authorization": "Bearer nope"}
        assert (await client.get("/metrics", headers=bad)).status_code == 401
        scraped = await client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'agenthost_deliveries{state="dead"} 0' in scraped.text
    async with console(peer="192.0.2.10", metrics=True) as (_, client):
        assert (await client.get("/metrics")).status_code == 404  # loopback only


async def test_bad_requests_get_clear_answers() -> None:
    async with console() as (_, client):
        csrf = await csrf_of(client)
        assert (await client.get("/console/static/../../pyproject.toml")).status_code == 404
        assert (await client.get("/console/static/other.js")).status_code == 404
        assert (await client.get("/console/deliveries?state=nonsense")).status_code == 400
        assert (await client.get("/console/users/nobody")).status_code == 404
        assert (await client.get("/console/sessions/nothing")).status_code == 404
        empty = await client.post("/console/chat", data={"message": " ", "csrf": csrf})
        assert empty.status_code == 422
        replay = await client.post("/console/deliveries/none/replay", data={"csrf": csrf})
        assert replay.status_code == 404
        cancel = await client.post("/console/runs/none/cancel", data={"csrf": csrf})
        assert cancel.status_code == 404
        code = await client.post("/console/link", data={"csrf": csrf, "code": "<b>"})
        assert code.status_code == 422 and "<b>" not in code.text
        as_json = await client.post("/console/chat", json={"message": "x", "csrf": csrf})
        assert as_json.status_code == 403
