"""Where the bot token may go (the service URL allowlist) and how the connector's answers
are read (``Retry-After``). Pure: no I/O."""

from __future__ import annotations

import email.utils
import time

import pytest

from agenthost.channels.activity.connector import (
    DEFAULT_SERVICE_URLS,
    ServiceUrls,
    _retry_after,
)

DEFAULTS = ServiceUrls(DEFAULT_SERVICE_URLS)


@pytest.mark.parametrize(
    "url",
    [
        "https://smba.trafficmanager.net/amer/",
        "https://smba.trafficmanager.net/teams/",
        "https://webchat.botframework.com/",
        "https://directline.botframework.com/",
        "https://europe.directline.botframework.com/v3/",
        "https://smba.infra.gcc.teams.microsoft.com/",
    ],
)
def test_bot_framework_and_teams_hosts_are_allowed(url: str) -> None:
    assert DEFAULTS.allows(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://smba.trafficmanager.net/amer/",  # not https
        "https://evil.trafficmanager.net/amer/",  # anyone can make a trafficmanager name
        "https://botframework.com.evil.example/",
        "https://evilbotframework.com/",
        "https://smba.trafficmanager.net@evil.example/",  # userinfo, the host is evil
        "https://user:pass@webchat.botframework.com/",
        "https://smba.trafficmanager.net:8443/amer/",  # another port
        "https://[::1]/",
        "not a url",
        "",
    ],
)
def test_everything_else_is_refused(url: str) -> None:
    assert not DEFAULTS.allows(url)


def test_configured_loopback_patterns_match_scheme_host_and_port() -> None:
    allowed = ServiceUrls(["http://127.0.0.1:8123", "https://*.example.test"])
    assert allowed.allows("http://127.0.0.1:8123/amer/")
    assert not allowed.allows("http://127.0.0.1:8124/amer/")
    assert not allowed.allows("https://127.0.0.1:8123/amer/")
    assert allowed.allows("https://a.b.example.test/")
    assert not allowed.allows("https://example.test/")  # *. means a subdomain
    with pytest.raises(ValueError):
        ServiceUrls(["ftp://example.test"])


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after("0.5") == 0.5
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    assert _retry_after("-4") == 0.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    wait = _retry_after(later)
    assert wait is not None and 25 <= wait <= 31
