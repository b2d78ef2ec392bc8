"""The link ceremony's end-to-end harness: a host and a fake provider on loopback, and a
browser that follows the ceremony one step at a time so a test can interfere anywhere.

The host is served over plain HTTP on 127.0.0.1 (Entra allows http redirect URIs on
loopback only), the provider over TLS (MSAL accepts https authorities only). The channel
reaches the provider through its ``http_client`` seam, an ``httpx.AsyncClient`` that
trusts the test CA, so the host's shared client is left alone.

``LinkRecordingHost`` is the real ``Host``; it records each ``link_verified_claims`` call,
so a refusal can be shown to have linked nothing, and can be told to refuse or fail.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx

from agenthost import ChannelIdentity, Host
from agenthost.channels.oidc import OidcLinkChannel
from agenthost.sansio_core.linking import LinkReason, LinkResult
from agenthost.stores.base import Store
from agenthost.stores.memory import MemoryStore
from tests.channels.oidc.fake_provider import Clock, FakeProvider, User
from tests.channels.oidc.loopback import base_url, bound_socket, make_tls, serve_on

TENANT = "7f3c2a9e-1d4b-4c8e-9a6f-2b5d8e1c4a70"
CLIENT_ID = "5a1e9c3b-8f2d-4e6a-b7c9-0d1e2f3a4b5c"
CLIENT_SECRET = "fake-secret-value"
ALICE_ENTRA = User(oid="0c8a7d6e-5f4b-4a3c-9b2d-1e0f9a8b7c6d", tid=TENANT)
ALICE = ChannelIdentity("telegram", "4242", {"display_name": "Alice"})
TIMEOUT = 20.0


@attrs.frozen
class LinkCall:
    identity: ChannelIdentity
    claims: dict[str, str]
    source: str


class LinkRecordingHost(Host):
    """The real ``Host``, recording each ``link_verified_claims`` call and its answer.

    ``refuse_with`` makes it answer a refusal instead of linking, ``fail_with`` raise.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.links: list[LinkCall] = []
        self.results: list[LinkResult] = []
        self.refuse_with: LinkReason | None = None
        self.fail_with: Exception | None = None

    async def link_verified_claims(
        self, identity: ChannelIdentity, claims: Mapping[str, str], *, source: str, **kwargs: Any
    ) -> LinkResult:
        self.links.append(LinkCall(identity, dict(claims), source))
        if self.fail_with is not None:
            raise self.fail_with
        if self.refuse_with is not None:
            result = LinkResult(linked=False, isolation_key=None, reason=self.refuse_with)
        else:
            result = await super().link_verified_claims(identity, claims, source=source, **kwargs)
        self.results.append(result)
        return result


async def echo(messages: Any) -> str:
    return "unused"


@attrs.define
class World:
    host: LinkRecordingHost
    channel: OidcLinkChannel
    provider: FakeProvider
    clock: Clock
    host_url: str
    http: httpx.AsyncClient  # trusts the test CA; shared by the browsers

    def browser(self) -> Browser:
        return Browser(self.http, self.host_url)


@asynccontextmanager
async def ceremony(
    tmp_path: Path, *, store: Store | None = None, **channel_options: Any
) -> AsyncIterator[World]:
    """A running host with an ``OidcLinkChannel`` and the fake provider it trusts.

    The store defaults to the memory store, the contract's reference implementation.
    """
    tls = make_tls(tmp_path)
    clock = Clock(time.time())
    provider_sock, host_sock = bound_socket(), bound_socket()
    host_url = base_url(host_sock, tls=False)
    redirect_uri = f"{host_url}/link/oidc/callback"
    provider = FakeProvider(
        base_url=base_url(provider_sock, tls=True),
        tenant=TENANT,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uri=redirect_uri,
        clock=clock,
        user=ALICE_ENTRA,
    )
    # Closed before the servers stop: a TLS server waits for its clients' close_notify.
    http = httpx.AsyncClient(verify=tls.client_context(), timeout=TIMEOUT)
    options: dict[str, Any] = {
        "authority": provider.authority,
        "client_id": CLIENT_ID,
        "client_credential": CLIENT_SECRET,
        "redirect_uri": redirect_uri,
        "validate_authority": False,
        "http_client": http,
        **channel_options,
    }
    channel = OidcLinkChannel(**options)
    host = LinkRecordingHost(
        echo,
        channels=[channel],
        store=store if store is not None else MemoryStore(),
        state_dir=tmp_path,
        clock=clock,
    )
    async with (
        serve_on(provider.app, provider_sock, tls=tls),
        serve_on(host.app, host_sock),
        http,
    ):
        yield World(host, channel, provider, clock, host_url, http)


# --- a browser, one step at a time ----------------------------------------------------


class Browser:
    """Just enough browser: cookies for the host's origin (path-scoped, ``Secure`` ones
    too, as browsers allow on loopback), ``Origin`` on form posts, manual redirects."""

    def __init__(self, http: httpx.AsyncClient, host_url: str) -> None:
        self._http = http
        self._host_url = host_url
        self.cookies: dict[str, tuple[str, str]] = {}  # name -> (value, path)

    async def get(self, url: str) -> httpx.Response:
        return await self._send("GET", url)

    async def post_form(
        self, url: str, fields: Mapping[str, str], *, origin: str | None
    ) -> httpx.Response:
        headers = {"origin": origin} if origin is not None else {}
        return await self._send("POST", url, data=dict(fields), headers=headers)

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        to_host = url.startswith(self._host_url)
        if to_host:
            path = urlsplit(url).path
            jar = [f"{k}={v}" for k, (v, p) in self.cookies.items() if path.startswith(p)]
            if jar:
                headers["cookie"] = "; ".join(jar)
        response = await self._http.request(method, url, headers=headers, **kwargs)
        self._http.cookies.clear()  # this class is the only cookie jar
        if to_host:
            for header in response.headers.get_list("set-cookie"):
                for name, morsel in SimpleCookie(header).items():
                    if morsel["max-age"] == "0":
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = (morsel.value, morsel["path"] or "/")
        return response


@attrs.frozen
class Callback:
    """What the provider sends the browser back to the host with."""

    method: str
    url: str
    fields: dict[str, str]
    origin: str  # the provider's origin, which a browser sends on the form_post


def hidden_fields(page: str) -> dict[str, str]:
    return {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', page)
    }


def form_action(page: str) -> str:
    match = re.search(r'<form method="post" action="([^"]*)">', page)
    assert match is not None, page
    return html.unescape(match.group(1))


async def open_link(
    world: World,
    browser: Browser,
    *,
    identity: ChannelIdentity = ALICE,
    return_to: str | None = None,
) -> httpx.Response:
    ticket = await world.channel.create_ticket(identity)
    return await browser.get(world.channel.start_url(ticket, return_to=return_to))


async def confirm(world: World, browser: Browser, page: httpx.Response) -> str:
    """Click "continue" on the confirmation page; answer the provider URL it redirects to."""
    assert page.status_code == 200, page.text
    response = await browser.post_form(
        form_action(page.text), hidden_fields(page.text), origin=world.host_url
    )
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(f"{world.provider.authority}/oauth2/v2.0/authorize?")
    return location


async def sign_in(browser: Browser, authorize_url: str) -> Callback:
    """The provider's page: it signs the user in at once and sends them back."""
    response = await browser.get(authorize_url)
    parts = urlsplit(authorize_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    if response.status_code == 302:
        location = response.headers["location"]
        url, _, query = location.partition("?")
        fields = dict(httpx.QueryParams(query))
        return Callback("GET", url, fields, origin)
    assert response.status_code == 200, response.text
    return Callback("POST", form_action(response.text), hidden_fields(response.text), origin)


async def come_back(browser: Browser, callback: Callback) -> httpx.Response:
    if callback.method == "GET":
        query = httpx.QueryParams(callback.fields)
        return await browser.get(f"{callback.url}?{query}")
    # The provider's page posts the form: a cross-site POST from the provider's origin.
    return await browser.post_form(callback.url, callback.fields, origin=callback.origin)


async def until_callback(
    world: World,
    browser: Browser,
    *,
    identity: ChannelIdentity = ALICE,
    return_to: str | None = None,
) -> Callback:
    page = await open_link(world, browser, identity=identity, return_to=return_to)
    return await sign_in(browser, await confirm(world, browser, page))


async def link_once(
    world: World,
    browser: Browser,
    *,
    identity: ChannelIdentity = ALICE,
    return_to: str | None = None,
) -> httpx.Response:
    """The whole ceremony; answers the callback's response."""
    callback = await until_callback(world, browser, identity=identity, return_to=return_to)
    return await come_back(browser, callback)


def assert_refused(response: httpx.Response, code: str, *, status: int = 400) -> None:
    """A clear failure page naming ``code``, with the page headers, and no redirect."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("text/html")
    assert f"Reference: <code>{code}</code>" in response.text, response.text
    assert "location" not in response.headers
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert "Traceback" not in response.text
