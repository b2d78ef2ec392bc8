"""``agenthost doctor`` asks Discord, Entra and an OpenID provider whether a host's platform
credentials work.

Each test writes host modules whose channels point at the platform fakes (real HTTP
servers on loopback, answering as the platforms document, 401s included) and runs
``python -m agenthost doctor module:host --backend <the test's backend>`` as a separate
process, as an operator would. Good credentials pass; a wrong bot token, an application id
or public key of another application, a wrong client secret or an unknown app id each
fail, naming the setting, and never print the secret. The OpenID link channel's check
finds the authority's discovery document and keys (its secret only a sign-in can prove).
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from tests.channels.activity.conftest import bot_framework, certificate  # noqa: F401 - fixture
from tests.channels.activity.fake_bot_framework import APP_ID, APP_SECRET
from tests.channels.activity.tls import LoopbackCertificate
from tests.channels.discord.conftest import fake_discord
from tests.channels.discord.interactions import APPLICATION_ID, BOT_TOKEN
from tests.channels.discord.signer import Signer
from tests.channels.oidc.fake_provider import Clock, FakeProvider
from tests.channels.oidc.harness import ALICE_ENTRA, CLIENT_ID, CLIENT_SECRET, TENANT
from tests.channels.oidc.loopback import base_url, bound_socket, make_tls, serve_on
from tests.conftest import BACKEND

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0


def _host_module(tmp_path: Path, name: str, preamble: str, channel: str) -> None:
    body = textwrap.dedent(preamble) + textwrap.dedent(f"""
        async def agent(messages):
            return "ok"

        host = Host(agent, channels=[{channel}], state_dir="state")
    """)
    (tmp_path / f"{name}.py").write_text(body)


def _closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}"


async def _doctor(
    tmp_path: Path, reference: str, extra_env: dict[str, str] | None = None
) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", **(extra_env or {})}
    with anyio.fail_after(TIMEOUT):
        done = await anyio.run_process(
            [sys.executable, "-m", "agenthost", "doctor", reference, "--backend", BACKEND],
            cwd=tmp_path,
            env=env,
            check=False,
        )
    return done.returncode, done.stdout.decode() + done.stderr.decode()


@pytest.mark.anyio
async def test_doctor_verifies_the_discord_bot_token_application_and_public_key(
    tmp_path: Path,
) -> None:
    async with fake_discord() as (fake, api_url):
        preamble = f"""
            from agenthost import Host
            from agenthost.channels.discord import DiscordChannel

            def discord(application_id={APPLICATION_ID!r},
                        public_key={fake.signer.public_key_hex!r}, bot_token={BOT_TOKEN!r}):
                return DiscordChannel(application_id=application_id, public_key=public_key,
                                      bot_token=bot_token, api_base_url={api_url!r})
        """  # fmt: skip
        wrong_token = "MTE4NzQxMTIwMDAwMDAwMDAwMQ.G0aBcD.another_token_nobody_issued_000"
        other_key = Signer().public_key_hex
        _host_module(tmp_path, "good", preamble, "discord()")
        _host_module(tmp_path, "bad_token", preamble, f"discord(bot_token={wrong_token!r})")
        other_app = "discord(application_id='1187411200000000999')"
        _host_module(tmp_path, "other_app", preamble, other_app)
        _host_module(tmp_path, "other_key", preamble, f"discord(public_key={other_key!r})")
        # The key as the portal shows it may be typed in capitals: still the same key.
        upper_key = fake.signer.public_key_hex.upper()
        _host_module(tmp_path, "upper_key", preamble, f"discord(public_key={upper_key!r})")
        nowhere = f"{_closed_port_url()}/api/v10"
        _host_module(tmp_path, "down", preamble.replace(api_url, nowhere), "discord()")

        code, out = await _doctor(tmp_path, "good:host")
        assert code == 0, out
        assert (
            f"ok    credentials discord: bot agenthost-test (id {APPLICATION_ID}) of application "
            f"agenthost-test ({APPLICATION_ID}); public key matches"
        ) in out
        assert fake.called("GET /applications/@me")[-1].status == 200

        code, out = await _doctor(tmp_path, "upper_key:host")
        assert code == 0, out

        code, out = await _doctor(tmp_path, "bad_token:host")
        assert code == 1, out
        assert "FAIL  credentials discord: Discord refused the bot token" in out
        assert "bot_token" in out
        assert fake.called("GET /applications/@me")[-1].status == 401
        assert "another_token" not in out and "fake_bot_token" not in out

        code, out = await _doctor(tmp_path, "other_app:host")
        assert code == 1, out
        assert (
            "FAIL  credentials discord: application_id 1187411200000000999 is not the "
            f"application the bot token belongs to ({APPLICATION_ID})"
        ) in out

        code, out = await _doctor(tmp_path, "other_key:host")
        assert code == 1, out
        assert "FAIL  credentials discord: public_key is not the application's public key" in out
        assert "fake_bot_token" not in out

        code, out = await _doctor(tmp_path, "down:host")
        assert code == 1, out
        assert "FAIL  credentials discord: could not ask the platform (Unavailable)" in out


@pytest.mark.anyio
async def test_doctor_obtains_the_activity_bots_token_from_entra(
    tmp_path: Path,
    certificate: LoopbackCertificate,  # noqa: F811 - the fixture, imported above
) -> None:
    async with bot_framework(certificate) as services:
        preamble = f"""
            from agenthost import Host
            from agenthost.channels.activity import ActivityChannel

            def activity(app_id={APP_ID!r}, app_secret={APP_SECRET!r}, **options):
                return ActivityChannel(app_id, app_secret=app_secret,
                                       openid_metadata_url={services.service.metadata_url!r},
                                       authority_host={services.entra.base_url!r},
                                       service_urls=[{services.service.base_url!r}], **options)
        """  # fmt: skip
        _host_module(tmp_path, "good", preamble, "activity()")
        _host_module(tmp_path, "single_tenant", preamble, "activity(tenant_id='contoso-tenant')")
        _host_module(tmp_path, "bad_secret", preamble, "activity(app_secret='expired~secret~0000')")
        other_app = "00000000-0000-4000-8000-000000000000"
        _host_module(tmp_path, "other_app", preamble, f"activity(app_id={other_app!r})")
        nowhere = _closed_port_url()
        _host_module(tmp_path, "down", preamble.replace(services.entra.base_url, nowhere),
                     "activity()")  # fmt: skip

        code, out = await _doctor(tmp_path, "good:host")
        assert code == 0, out
        assert (
            f"ok    credentials activity: app {APP_ID}: Entra issued a Bot Framework token "
            "(tenant botframework.com (multi-tenant))"
        ) in out
        asked = services.entra.token_requests[-1]
        assert asked["tenant"] == "botframework.com" and asked["client_id"] == APP_ID
        assert asked["scope"] == "https://api.botframework.com/.default"

        code, out = await _doctor(tmp_path, "single_tenant:host")
        assert code == 0, out
        assert services.entra.token_requests[-1]["tenant"] == "contoso-tenant"

        code, out = await _doctor(tmp_path, "bad_secret:host")
        assert code == 1, out
        assert (
            "FAIL  credentials activity: Entra refused the bot's app_secret for app_id "
            f"{APP_ID} (invalid_client)"
        ) in out
        assert "expired~secret" not in out and APP_SECRET not in out

        code, out = await _doctor(tmp_path, "other_app:host")
        assert code == 1, out
        assert (
            f"FAIL  credentials activity: Entra does not know app_id {other_app} in tenant "
            "botframework.com (multi-tenant) (unauthorized_client)"
        ) in out
        assert services.entra.issued == 2

        code, out = await _doctor(tmp_path, "down:host")
        assert code == 1, out
        assert "FAIL  credentials activity: could not ask the platform (ConnectionError)" in out


@pytest.mark.anyio
async def test_doctor_finds_the_oidc_link_channels_provider(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    provider_sock = bound_socket()
    redirect_uri = "http://127.0.0.1:8000/link/oidc/callback"
    provider = FakeProvider(
        base_url=base_url(provider_sock, tls=True),
        tenant=TENANT,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uri=redirect_uri,
        clock=Clock(0.0),
        user=ALICE_ENTRA,
    )
    preamble = f"""
        from agenthost import Host
        from agenthost.channels.oidc import OidcLinkChannel

        def oidc(authority={provider.authority!r}):
            return OidcLinkChannel(authority=authority, client_id={CLIENT_ID!r},
                                   client_credential={CLIENT_SECRET!r},
                                   redirect_uri={redirect_uri!r}, validate_authority=False)
    """  # fmt: skip
    other_tenant = provider.authority.replace(TENANT, "contoso.example")
    _host_module(tmp_path, "good", preamble, "oidc()")
    _host_module(tmp_path, "other_tenant", preamble, f"oidc(authority={other_tenant!r})")
    trust_the_test_ca = {"SSL_CERT_FILE": str(tls.ca)}
    async with serve_on(provider.app, provider_sock, tls=tls):
        code, out = await _doctor(tmp_path, "good:host", trust_the_test_ca)
        assert code == 0, out
        assert (
            f"ok    credentials oidc: provider {provider.issuer}: discovery and 1 signing key; "
            "client_credential is checked by the first sign-in"
        ) in out
        assert CLIENT_SECRET not in out

        code, out = await _doctor(tmp_path, "other_tenant:host", trust_the_test_ca)
        assert code == 1, out
        assert (
            f"FAIL  credentials oidc: authority {other_tenant} has no OpenID discovery "
            "document (HTTP 404); check the tenant id or domain in authority"
        ) in out
