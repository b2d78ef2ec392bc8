"""The OpenID Connect link ceremony end to end, over real HTTP on loopback.

The host (Hypercorn, plain HTTP) and a fake Entra-shaped provider (Hypercorn, TLS) run in
the test's event loop; a step-by-step browser walks the ceremony: the link page, the
confirmation post, the provider's sign-in, and the way back. Every refusal must be a clear
page, and must link nothing.
"""

from __future__ import annotations

import html
import inspect
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest

from agenthost import ChannelIdentity, ConfigurationError
from agenthost.channels.oidc import FLOW_KIND, TICKET_KIND, OidcLinkChannel
from agenthost.sansio_core.linking import LinkReason
from agenthost.stores.memory import MemoryStore
from tests.channels.oidc.harness import (
    ALICE,
    ALICE_ENTRA,
    CLIENT_ID,
    LinkCall,
    World,
    assert_refused,
    ceremony,
    come_back,
    confirm,
    form_action,
    hidden_fields,
    link_once,
    open_link,
    sign_in,
    until_callback,
)
from tests.channels.oidc.loopback import base_url, bound_socket

pytestmark = pytest.mark.anyio

ALICE_LINK = LinkCall(ALICE, {"oid": ALICE_ENTRA.oid, "tid": ALICE_ENTRA.tid}, "entra")
HOSTILE = "<script>alert('x')</script>\"'&"


async def stored(world: World, kind: str) -> int:
    records = await world.host.store.list_channel_records("oidc", kind)
    return len(records)


# --- success -----------------------------------------------------------------------------


async def test_success_links_the_ticket_identity_to_the_verified_user(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        browser = world.browser()
        response = await link_once(world, browser)

        assert response.status_code == 303, response.text
        assert response.headers["location"] == f"{world.host_url}/link/oidc/done"
        assert world.host.links == [ALICE_LINK]
        done = await browser.get(response.headers["location"])
        assert done.status_code == 200
        assert "Your accounts are now linked." in done.text
        # Both secrets are spent: nothing of the ceremony is left in the store.
        assert await stored(world, TICKET_KIND) == 0
        assert await stored(world, FLOW_KIND) == 0


async def test_success_sends_pkce_s256_state_and_nonce_to_the_provider(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        await link_once(world, world.browser())

        [authorize] = world.provider.authorize_requests
        assert authorize["code_challenge_method"] == "S256"
        assert authorize["redirect_uri"] == f"{world.host_url}/link/oidc/callback"
        assert authorize["response_mode"] == "form_post"
        assert len(authorize["state"]) == 43 and len(authorize["nonce"]) == 64
        assert set(authorize["scope"].split()) == {"openid", "profile"}
        [token] = world.provider.token_requests
        # The fake checked the verifier against the challenge; it was sent, and no
        # refresh token was asked for.
        assert len(token["code_verifier"]) >= 43
        assert "offline_access" not in token.get("scope", "")
        assert world.host.links == [ALICE_LINK]


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended")
async def test_success_in_query_mode_returns_to_a_relative_path(tmp_path: Path) -> None:
    async with ceremony(tmp_path, response_mode="query") as world:
        browser = world.browser()
        callback = await until_callback(world, browser, return_to="/console?tab=links")
        assert callback.method == "GET"
        response = await come_back(browser, callback)

        assert response.status_code == 303, response.text
        assert response.headers["location"] == (
            f"{world.host_url}/link/oidc/done?return_to=%2Fconsole%3Ftab%3Dlinks"
        )
        assert world.host.links == [ALICE_LINK]
        done = await browser.get(response.headers["location"])
        assert done.status_code == 200
        assert '<a href="/console?tab=links">Continue</a>' in done.text


async def test_one_provider_setup_serves_many_flows(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        for _ in range(3):
            response = await link_once(world, world.browser())
            assert response.status_code == 303, response.text
        assert world.host.links == [ALICE_LINK] * 3
        assert world.provider.jwks_fetches == 1


async def test_a_rotated_signing_key_is_fetched_when_a_token_names_it(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        assert (await link_once(world, world.browser())).status_code == 303
        world.provider.rotate_key("fake-key-2")
        world.clock.advance(61)

        response = await link_once(world, world.browser())

        assert response.status_code == 303, response.text
        assert world.provider.jwks_fetches == 2
        assert world.host.links == [ALICE_LINK] * 2


# --- the ID token is validated by the host --------------------------------------------


@pytest.mark.parametrize(
    ("knob", "value", "code"),
    [
        ("nonce", "0" * 64, "id_token_nonce_mismatch"),
        ("sign_with_other_key", True, "id_token_bad_signature"),
        ("audience", "someone-else", "id_token_wrong_audience"),
        ("expired", True, "id_token_expired"),
        ("issuer", "https://127.0.0.1:1/other-tenant/v2.0", "id_token_wrong_issuer"),
        ("kid", "never-published", "id_token_unknown_key"),
        ("omit", ("oid",), "id_token_missing_claim"),
    ],
)
async def test_a_bad_id_token_is_refused_and_links_nothing(
    tmp_path: Path, knob: str, value: object, code: str
) -> None:
    async with ceremony(tmp_path) as world:
        setattr(world.provider.knobs, knob, value)
        response = await link_once(world, world.browser())

        assert_refused(response, code)
        assert world.host.links == []
        assert len(world.provider.token_requests) == 1  # it got as far as the exchange


async def test_an_audience_list_naming_us_among_others_needs_azp(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        world.provider.knobs.audience = [CLIENT_ID, "another-api"]
        assert_refused(await link_once(world, world.browser()), "id_token_wrong_audience")
        assert world.host.links == []


async def test_a_tenant_outside_allowed_tenants_is_refused(tmp_path: Path) -> None:
    async with ceremony(
        tmp_path, allowed_tenants={"11111111-2222-3333-4444-555555555555"}
    ) as world:
        assert_refused(await link_once(world, world.browser()), "id_token_tenant_not_allowed")
        assert world.host.links == []


# --- state, single use, expiry, the browser binding ----------------------------------


async def test_a_tampered_state_is_refused(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        browser = world.browser()
        callback = await until_callback(world, browser)
        state = callback.fields["state"]
        flipped = ("A" if state[0] != "A" else "B") + state[1:]

        for tampered in (flipped, state[:-1], state + "x", "", "../" + state):
            fields = {**callback.fields, "state": tampered}
            response = await come_back(browser, attrs.evolve(callback, fields=fields))
            assert_refused(response, "state_invalid")
        missing = {k: v for k, v in callback.fields.items() if k != "state"}
        response = await come_back(browser, attrs.evolve(callback, fields=missing))
        assert_refused(response, "state_invalid")
        assert world.host.links == []
        assert world.provider.token_requests == []


async def test_a_replayed_callback_is_refused(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        browser = world.browser()
        callback = await until_callback(world, browser)
        assert (await come_back(browser, callback)).status_code == 303

        assert_refused(await come_back(browser, callback), "state_invalid")
        assert world.host.links == [ALICE_LINK]
        assert len(world.provider.token_requests) == 1


async def test_a_flow_expires(tmp_path: Path) -> None:
    async with ceremony(tmp_path, flow_ttl_seconds=60) as world:
        browser = world.browser()
        callback = await until_callback(world, browser)
        world.clock.advance(61)

        assert_refused(await come_back(browser, callback), "flow_expired")
        assert world.host.links == []
        assert world.provider.token_requests == []
        # Spent even though it was refused: it cannot be tried again.
        assert await stored(world, FLOW_KIND) == 0


async def test_expired_records_are_swept_from_the_store(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        await world.channel.create_ticket(ALICE)
        await until_callback(world, world.browser())
        assert (await stored(world, TICKET_KIND), await stored(world, FLOW_KIND)) == (1, 1)
        world.clock.advance(601)

        assert await world.host.store.delete_expired_channel_records(world.clock()) == 2
        assert (await stored(world, TICKET_KIND), await stored(world, FLOW_KIND)) == (0, 0)


async def test_a_callback_in_another_browser_is_refused(tmp_path: Path) -> None:
    # An attacker starts a flow with their own ticket and sends the victim the provider
    # URL: the victim signs in, but the victim's browser does not hold the flow's binding.
    async with ceremony(tmp_path) as world:
        attacker = world.browser()
        page = await open_link(world, attacker, identity=ChannelIdentity("telegram", "666"))
        authorize_url = await confirm(world, attacker, page)
        victim = world.browser()

        callback = await sign_in(victim, authorize_url)
        assert_refused(await come_back(victim, callback), "browser_mismatch")
        assert world.host.links == []
        assert world.provider.token_requests == []


async def test_a_sign_in_refused_at_the_provider_is_refused_without_echoing_it(
    tmp_path: Path,
) -> None:
    async with ceremony(tmp_path) as world:
        world.provider.refuse_sign_in = True
        browser = world.browser()
        callback = await until_callback(world, browser)
        assert callback.fields["error"] == "access_denied"

        response = await come_back(browser, callback)
        assert_refused(response, "sign_in_failed")
        assert "<script>" not in response.text and "x()" not in response.text
        assert world.host.links == []


async def test_a_token_endpoint_refusal_is_refused(tmp_path: Path) -> None:
    async with ceremony(tmp_path, client_credential="not-the-secret") as world:
        assert_refused(await link_once(world, world.browser()), "token_exchange_failed")
        assert world.host.links == []


async def test_an_unreachable_provider_is_a_clear_502(tmp_path: Path) -> None:
    closed = bound_socket()
    authority = f"{base_url(closed, tls=True)}/tenant"
    closed.close()
    async with ceremony(tmp_path, authority=authority) as world:
        page = await open_link(world, world.browser())
        assert_refused(page, "provider_unavailable", status=502)
        assert world.host.links == []
        # The ticket was not spent by the outage.
        assert await stored(world, TICKET_KIND) == 1


# --- tickets ----------------------------------------------------------------------------


async def test_a_ticket_is_single_use(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        browser = world.browser()
        page = await open_link(world, browser)
        action, fields = form_action(page.text), hidden_fields(page.text)
        first = await browser.post_form(action, fields, origin=world.host_url)
        assert first.status_code == 303

        again = await browser.post_form(action, fields, origin=world.host_url)
        assert_refused(again, "ticket_invalid")
        ticket_url = world.channel.start_url(fields["ticket"])
        assert_refused(await browser.get(ticket_url), "ticket_invalid")


async def test_opening_the_link_spends_nothing(tmp_path: Path) -> None:
    # Chat apps fetch links to preview them: a GET must not spend the ticket.
    async with ceremony(tmp_path) as world:
        ticket = await world.channel.create_ticket(ALICE)
        for _ in range(3):
            assert (await world.browser().get(world.channel.start_url(ticket))).status_code == 200
        assert await stored(world, TICKET_KIND) == 1
        assert world.provider.authorize_requests == []


async def test_a_ticket_expires(tmp_path: Path) -> None:
    async with ceremony(tmp_path, ticket_ttl_seconds=60) as world:
        browser = world.browser()
        page = await open_link(world, browser)
        world.clock.advance(61)

        assert_refused(await browser.get(str(page.url)), "ticket_invalid")
        response = await browser.post_form(
            form_action(page.text), hidden_fields(page.text), origin=world.host_url
        )
        assert_refused(response, "ticket_invalid")
        assert world.provider.authorize_requests == []


@pytest.mark.parametrize("ticket", ["", "short", "A" * 43, "<script>" + "A" * 35])
async def test_an_unknown_ticket_is_refused(tmp_path: Path, ticket: str) -> None:
    async with ceremony(tmp_path) as world:
        response = await world.browser().get(f"{world.host_url}/link/oidc/start?ticket={ticket}")
        assert_refused(response, "ticket_invalid")
        assert "<script>" not in response.text


async def test_a_cross_site_post_to_start_is_refused(tmp_path: Path) -> None:
    # Another site posting an attacker's ticket from the victim's browser.
    async with ceremony(tmp_path) as world:
        browser = world.browser()
        page = await open_link(world, browser)
        action, fields = form_action(page.text), hidden_fields(page.text)

        for origin in ("https://evil.example", "null", world.host_url.replace("http:", "https:")):
            response = await browser.post_form(action, fields, origin=origin)
            assert_refused(response, "cross_site_request")
        response = await world.http.post(
            action, data=fields, headers={"sec-fetch-site": "cross-site"}
        )
        assert_refused(response, "cross_site_request")
        assert world.provider.authorize_requests == []
        # The legitimate click still works: the refusals spent nothing.
        assert (await browser.post_form(action, fields, origin=world.host_url)).status_code == 303


# --- return_to ---------------------------------------------------------------------------

EVIL_RETURNS = [
    "https://evil.example/",
    "//evil.example/",
    "/\\evil.example/",
    "\\\\evil.example",
    "/\t/evil.example",
    "javascript:alert(1)",
    "evil.example",
    "/ok\r\nSet-Cookie: x=y",
]


@pytest.mark.parametrize("return_to", EVIL_RETURNS)
async def test_an_unsafe_return_to_is_refused_everywhere(tmp_path: Path, return_to: str) -> None:
    async with ceremony(tmp_path) as world:
        browser = world.browser()
        ticket = await world.channel.create_ticket(ALICE)
        with pytest.raises(ValueError):
            world.channel.start_url(ticket, return_to=return_to)

        url = f"{world.host_url}/link/oidc/start"
        query = httpx.QueryParams({"ticket": ticket, "return_to": return_to})
        start = await browser.get(f"{url}?{query}")
        assert_refused(start, "return_to_invalid")
        posted = await browser.post_form(
            url, {"ticket": ticket, "return_to": return_to}, origin=world.host_url
        )
        assert_refused(posted, "return_to_invalid")
        query = httpx.QueryParams({"return_to": return_to})
        done = await browser.get(f"{world.host_url}/link/oidc/done?{query}")
        assert_refused(done, "return_to_invalid")
        assert world.provider.authorize_requests == []
        assert world.host.links == []
        assert await stored(world, TICKET_KIND) == 1  # refused before it was spent


# --- pages ----------------------------------------------------------------------------


async def test_the_confirmation_page_escapes_and_is_locked_down(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        identity = ChannelIdentity("telegram", "77", {"display_name": HOSTILE})
        page = await open_link(world, world.browser(), identity=identity, return_to="/a?b=\"'<>")

        assert page.status_code == 200
        assert HOSTILE not in page.text and "<script>" not in page.text
        assert html.escape(HOSTILE, quote=True) in page.text
        assert hidden_fields(page.text)["return_to"] == "/a?b=\"'<>"
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert f"form-action 'self' {world.provider.base_url}" in policy
        assert "script-src" not in policy and "unsafe-inline" not in policy
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-content-type-options"] == "nosniff"


async def test_failure_pages_reflect_no_input(tmp_path: Path) -> None:
    async with ceremony(tmp_path, response_mode="query") as world:
        browser = world.browser()
        for path in (
            f"/link/oidc/callback?state={HOSTILE}&code={HOSTILE}",
            f"/link/oidc/callback?error={HOSTILE}&error_description={HOSTILE}",
            f"/link/oidc/start?ticket={HOSTILE}",
            f"/link/oidc/done?return_to={HOSTILE}",
        ):
            response = await browser.get(world.host_url + path)
            assert response.status_code == 400
            assert "<script>" not in response.text and "alert" not in response.text


async def test_the_callback_takes_only_the_configured_method(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        browser = world.browser()
        callback = await until_callback(world, browser)
        as_get = attrs.evolve(callback, method="GET")
        assert (await come_back(browser, as_get)).status_code == 405
        assert world.host.links == []


# --- configuration -------------------------------------------------------------------


async def test_a_host_without_link_verified_claims_refuses_to_start() -> None:
    channel = OidcLinkChannel(
        authority="https://login.microsoftonline.com/contoso.onmicrosoft.com",
        client_id=CLIENT_ID,
        client_credential="secret",
        redirect_uri="https://agent.example/link/oidc/callback",
    )

    class OlderHost:  # HostServices without link_verified_claims
        store = MemoryStore()

        def now(self) -> float:
            return 0.0

    with pytest.raises(ConfigurationError, match="link_verified_claims"):
        await channel.startup(OlderHost())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("redirect_uri", "http://agent.example/link/oidc/callback", "https"),
        ("redirect_uri", "https://agent.example/elsewhere", "/link/oidc/callback"),
        ("redirect_uri", "https://agent.example/link/oidc/callback?x=1", "no query"),
        ("redirect_uri", "/link/oidc/callback", "absolute"),
        ("authority", "http://login.microsoftonline.com/tenant", "https"),
        ("authority", "https://login.microsoftonline.com", "tenant"),
        ("scopes", ["openid"], "openid"),
        ("client_credential", "", "client_credential"),
        ("flow_ttl_seconds", 0, "flow_ttl_seconds"),
        ("response_mode", "fragment", "response_mode"),
        ("algorithms", ["HS256"], "algorithms"),
        ("mount", "/link/", "mount"),
    ],
)
def test_misconfiguration_is_refused_at_construction(
    option: str, value: object, message: str
) -> None:
    options: dict[str, object] = {
        "authority": "https://login.microsoftonline.com/contoso.onmicrosoft.com",
        "client_id": CLIENT_ID,
        "client_credential": "secret",
        "redirect_uri": "https://agent.example/link/oidc/callback",
        option: value,
    }
    with pytest.raises(ConfigurationError, match=message):
        OidcLinkChannel(**options)  # type: ignore[arg-type]


def test_page_urls_come_from_the_configured_redirect_uri() -> None:
    channel = OidcLinkChannel(
        authority="https://login.microsoftonline.com/organizations",
        client_id=CLIENT_ID,
        client_credential="secret",
        redirect_uri="https://agent.example/bot/link/oidc/callback",
    )
    url = channel.start_url("T" * 43, return_to="/console")
    assert (
        url
        == "https://agent.example/bot/link/oidc/start?ticket=" + "T" * 43 + "&return_to=%2Fconsole"
    )


async def test_create_ticket_needs_a_host(tmp_path: Path) -> None:
    channel = OidcLinkChannel(
        authority="https://login.microsoftonline.com/organizations",
        client_id=CLIENT_ID,
        client_credential="secret",
        redirect_uri="https://agent.example/link/oidc/callback",
    )
    with pytest.raises(ConfigurationError, match="not part of a host"):
        await channel.create_ticket(ALICE)


async def test_tickets_are_stored_hashed(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        ticket = await world.channel.create_ticket(ALICE)
        [record] = await world.host.store.list_channel_records("oidc", TICKET_KIND)
        assert ticket not in repr(record)
        assert record.expires_at == pytest.approx(world.clock() + 600)


# --- what the host answers ---------------------------------------------------------------


async def test_a_link_the_host_refuses_is_a_clear_page(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        world.host.refuse_with = LinkReason.LINK_POLICY
        response = await link_once(world, world.browser())
        assert_refused(response, "link_refused", status=409)
        assert "link_policy" not in response.text  # details go to the logs only


async def test_a_host_failing_to_link_is_a_clear_page(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        world.host.fail_with = RuntimeError("store is down")
        response = await link_once(world, world.browser())
        assert_refused(response, "link_failed", status=500)
        assert "store is down" not in response.text


async def test_claims_are_recorded_under_the_configured_source(tmp_path: Path) -> None:
    async with ceremony(tmp_path, claims_source="contoso-idp") as world:
        assert (await link_once(world, world.browser())).status_code == 303
        assert [call.source for call in world.host.links] == ["contoso-idp"]


async def test_the_same_verified_user_on_two_channels_is_linked_silently(
    tmp_path: Path,
) -> None:
    alice_on_discord = ChannelIdentity("discord", "1234567890")
    async with ceremony(tmp_path) as world:
        assert (await link_once(world, world.browser())).status_code == 303
        response = await link_once(world, world.browser(), identity=alice_on_discord)
        assert response.status_code == 303, response.text

        first, second = world.host.results
        assert (first.linked, first.reason) == (True, LinkReason.CLAIMS_RECORDED)
        assert (second.linked, second.reason) == (True, LinkReason.LINKED)
        store = world.host.store
        telegram = await store.load_context(ALICE, None)
        discord = await store.load_context(alice_on_discord, None)
        assert telegram.isolation_key is not None
        assert telegram.isolation_key == discord.isolation_key == second.isolation_key
        facts = await store.load_facts(alice_on_discord)
        assert facts is not None and ("tid", ALICE_ENTRA.tid) in facts.claims
        assert ("oid", ALICE_ENTRA.oid) in facts.claims


async def test_a_refused_ceremony_records_no_claims(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        world.provider.knobs.audience = "someone-else"
        assert_refused(await link_once(world, world.browser()), "id_token_wrong_audience")
        assert await world.host.store.load_facts(ALICE) is None


async def test_the_host_takes_the_channel_as_its_linker(tmp_path: Path) -> None:
    async with ceremony(tmp_path) as world:
        assert world.channel in world.host.linkers
        challenge = await world.channel.begin(ALICE)

        assert challenge.linker == "oidc" and challenge.url is not None
        assert challenge.url.startswith(f"{world.host_url}/link/oidc/start?ticket=")
        assert challenge.url in challenge.instructions
        assert challenge.expires_at == pytest.approx(world.clock() + 600)
        page = await world.browser().get(challenge.url)
        assert page.status_code == 200
        assert "Alice on telegram" in page.text


async def test_success_over_the_sqlite_store(tmp_path: Path) -> None:
    from agenthost.stores.sqlite import SQLiteStore

    if inspect.isabstract(SQLiteStore):
        pytest.skip("SQLiteStore does not implement the whole store contract yet")
    async with ceremony(tmp_path, store=SQLiteStore(tmp_path / "state.db")) as world:
        browser = world.browser()
        callback = await until_callback(world, browser)
        assert (await come_back(browser, callback)).status_code == 303
        assert_refused(await come_back(browser, callback), "state_invalid")
        assert world.host.links == [ALICE_LINK]


class SlowReadStore(MemoryStore):
    """Reads a channel record, then yields for a while: two requests that race on one
    secret both read it before either deletes it, as two replicas could."""

    async def get_channel_record(self, channel: str, kind: str, key: str) -> Any:
        record = await super().get_channel_record(channel, kind, key)
        await anyio.sleep(0.2)
        return record


async def test_two_callbacks_racing_on_one_state_exchange_the_code_once(tmp_path: Path) -> None:
    async with ceremony(tmp_path, store=SlowReadStore()) as world:
        browser = world.browser()
        callback = await until_callback(world, browser)
        responses: list[httpx.Response] = []

        async def deliver() -> None:
            responses.append(await come_back(browser, callback))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(deliver)
            tasks.start_soon(deliver)

        assert sorted(r.status_code for r in responses) == [303, 400]
        [refused] = [r for r in responses if r.status_code == 400]
        assert_refused(refused, "state_invalid")
        assert len(world.provider.token_requests) == 1
        assert world.host.links == [ALICE_LINK]
