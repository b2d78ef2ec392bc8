"""Fail-fast identity configuration: ``Host(...)`` raises ``ConfigurationError`` naming the
setting and the remedy, and resolves the settings the core decides with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import BaseRoute

from agenthost import Channel, ChannelIdentity, ConfigurationError, Host, HostMessage, HostServices
from agenthost.backends.linking import IdentityLinker, LinkerNotBound, OneTimeCodeLinker
from agenthost.channels.invocations import InvocationsChannel
from agenthost.sansio_core.authorization import (
    AllOfAllowlists,
    AnyOfAllowlists,
    CallableAllowlist,
    LinkedClaimAllowlist,
    NativeIdAllowlist,
)
from agenthost.sansio_core.link_policy import ExplicitAllowList
from agenthost.sansio_core.linking import LinkChallenge
from agenthost.stores.memory import MemoryStore


async def echo(messages: list[HostMessage]) -> str:
    return messages[-1].text


class Plain(Channel):
    def __init__(self, name: str, **attributes: Any) -> None:
        self.name = name
        for key, value in attributes.items():
            setattr(self, key, value)

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        return ()


class SignInChannel(Plain, IdentityLinker):
    """A channel that is also a linker and verifies claims (as an OpenID Connect one is)."""

    provides_claims = True
    provides_verified_claims = True

    async def begin(self, identity: ChannelIdentity) -> LinkChallenge:
        return LinkChallenge("c", self.name, "Sign in at https://example.test/start")


def host(tmp_path: Path, channels: Sequence[Channel] = (), **options: Any) -> Host:
    return Host(echo, channels=channels, store=MemoryStore(), state_dir=tmp_path, **options)


@pytest.mark.parametrize(
    ("channels", "options", "names"),
    [
        (
            [Plain("chat")],
            {"allowlist": LinkedClaimAllowlist("tid", ["t"])},
            ["verified claims", "LinkedClaimAllowlist", "Host(allowlist"],
        ),
        (
            [Plain("chat", allowlist=CallableAllowlist(lambda s: None, claims=True))],
            {"linker": OneTimeCodeLinker()},
            ["verified claims", "channel 'chat'"],
        ),
        ([Plain("chat")], {"require_link": True}, ["require_link", "OneTimeCodeLinker"]),
        ([Plain("chat", require_link=True)], {}, ["channel 'chat'", "require_link"]),
        (
            [Plain("chat")],
            {"allowlist": AnyOfAllowlists(AllOfAllowlists(NativeIdAllowlist({"telegarm": ["1"]})))},
            ["'telegarm'", "'chat'", "fix the names"],
        ),
        (
            [Plain("chat", allowlist=NativeIdAllowlist({"teams": ["1"]}))],
            {},
            ["channel 'chat'", "'teams'"],
        ),
        (
            [Plain("chat")],
            {"identity_resolver": lambda identity: "k", "linker": OneTimeCodeLinker()},
            ["identity_resolver", "linking"],
        ),
        (
            [SignInChannel("signin")],
            {"identity_resolver": lambda identity: "k"},
            ["identity_resolver"],
        ),
        (
            [Plain("chat")],
            {"link_policy": ExplicitAllowList([("chat", "telegram")])},
            ["link_policy", "'telegram'"],
        ),
        ([Plain("chat")], {"allowlist": ["123"]}, ["allowlist=", "NativeIdAllowlist"]),
        ([Plain("chat")], {"link_policy": "same-tier"}, ["link_policy="]),
        ([Plain("chat")], {"linker": object()}, ["linker=", "OneTimeCodeLinker"]),
        ([Plain("chat")], {"require_link": "yes"}, ["require_link="]),
        ([Plain("chat", require_link="always")], {}, ["channel 'chat'", "require_link"]),
        ([Plain("chat", allowlist=["1"])], {}, ["channel 'chat'", "allowlist"]),
        ([Plain("chat", confidentiality_tier="")], {}, ["confidentiality_tier"]),
        ([Plain("chat", offers_link_commands="no")], {}, ["offers_link_commands"]),
    ],
)
def test_misconfigured_identity_settings_raise_at_construction(
    tmp_path: Path, channels: list[Channel], options: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        host(tmp_path, channels, **options)
    for name in names:
        assert name in str(raised.value)


def test_a_complete_configuration_resolves_inherit_and_catalogs(tmp_path: Path) -> None:
    signin = SignInChannel("signin")
    quiet = Plain("quiet", offers_link_commands=False, allowlist=None)
    strict = Plain("strict", require_link=True, confidentiality_tier="internal")
    made = host(
        tmp_path,
        [InvocationsChannel(trust_platform_headers=True), signin, quiet, strict],
        linker=OneTimeCodeLinker(),
        allowlist=AnyOfAllowlists(
            NativeIdAllowlist({"invocations": ["ada"]}), LinkedClaimAllowlist("tid", ["t"])
        ),
    )
    assert [type(linker).__name__ for linker in made.linkers] == [
        "OneTimeCodeLinker",
        "SignInChannel",
    ]
    assert made.link_rules.profile("strict").confidentiality_tier == "internal"
    assert made.link_rules.profile("invocations").confidentiality_tier == "standard"
    assert [c.name for c in made.command_catalog("invocations")] == [
        "link",
        "unlink",
        "new",
        "help",
    ]
    assert made.command_catalog("quiet") == ()


def test_without_a_linker_only_new_and_help_are_host_commands(tmp_path: Path) -> None:
    quiet = Plain("quiet", offers_link_commands=False, allowlist=None)
    made = host(tmp_path, [InvocationsChannel(), quiet])
    assert [c.name for c in made.command_catalog("invocations")] == ["new", "help"]
    assert made.command_catalog("quiet") == ()


def test_a_linker_belongs_to_one_host(tmp_path: Path) -> None:
    linker = OneTimeCodeLinker()
    with pytest.raises(LinkerNotBound):
        _ = linker.linking_host
    host(tmp_path / "a", [Plain("chat")], linker=linker)
    with pytest.raises(ConfigurationError, match="another Host"):
        host(tmp_path / "b", [Plain("chat")], linker=linker)
