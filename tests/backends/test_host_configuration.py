"""Configurations that cannot work fail at ``Host(...)``, naming the setting and the fix."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Mount, Route

from agenthost import (
    Channel,
    ConfigurationError,
    Host,
    HostMessage,
    HostServices,
    NativeIdAllowlist,
    OneTimeCodeLinker,
)
from agenthost.channels.invocations import InvocationsChannel
from agenthost.channels.responses import ResponsesChannel
from agenthost.stores.memory import MemoryStore


async def echo(messages: list[HostMessage]) -> str:
    return messages[-1].text


def make(tmp_path: Path, target: Any = echo, **options: Any) -> Host:
    options.setdefault("channels", [InvocationsChannel()])
    return Host(target, store=MemoryStore(), state_dir=tmp_path, **options)


def refused(tmp_path: Path, *names: str, target: Any = echo, **options: Any) -> None:
    with pytest.raises(ConfigurationError) as raised:
        make(tmp_path, target, **options)
    for name in names:
        assert name in str(raised.value)


def test_a_host_without_channels_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, "at least one channel", "InvocationsChannel()", channels=[])


def sync_reply(messages: list[HostMessage]) -> str:
    return "never awaited"


class SyncReplier:
    def __call__(self, messages: list[HostMessage]) -> str:
        return "no"


class Replier:
    def sync(self, messages: list[HostMessage]) -> str:
        return "no"

    async def __call__(self, messages: list[HostMessage]) -> str:
        return "yes"


@pytest.mark.parametrize(
    "target",
    [
        sync_reply,
        lambda messages: "a lambda",
        functools.partial(sync_reply),
        Replier().sync,
        SyncReplier(),
    ],
    ids=["def", "lambda", "partial", "method", "callable object"],
)
def test_a_synchronous_function_target_is_refused(tmp_path: Path, target: Any) -> None:
    refused(tmp_path, "synchronous function", "async def", target=target)


async def chunks(messages: list[HostMessage]) -> AsyncIterator[str]:
    yield "a"


@pytest.mark.parametrize(
    "target",
    [echo, chunks, functools.partial(echo), Replier()],
    ids=["async def", "async generator", "partial", "async callable object"],
)
def test_async_targets_are_accepted(tmp_path: Path, target: Any) -> None:
    assert make(tmp_path, target).channels


class Routed(Channel):
    """A channel serving the routes it is given (a stand-in for a third-party channel)."""

    def __init__(self, name: str, routes: Sequence[BaseRoute]) -> None:
        self.name = name
        self._routes = routes

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        return self._routes


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


@pytest.mark.parametrize(
    ("channels", "names"),
    [
        (
            [InvocationsChannel(), InvocationsChannel(name="second")],
            ["'second'", "'invocations'", "POST /invocations/invoke", "mount="],
        ),
        (
            [ResponsesChannel(), ResponsesChannel(name="again")],
            ["'again'", "'responses'", "/responses/v1/responses"],
        ),
        (
            [InvocationsChannel(), Routed("extra", [Route("/invocations/{x}", hello)])],
            ["'extra'", "GET /invocations/{}"],
        ),
        ([Routed("health", [Route("/readiness", hello)])], ["'health'", "/readiness"]),
        (
            [InvocationsChannel(), Routed("mounted", [Mount("/invocations", routes=[])])],
            ["'mounted'", "mounts /invocations"],
        ),
    ],
    ids=["same-mount", "same-prefix", "same-route", "host-route", "mount-over-routes"],
)
def test_two_channels_on_one_route_are_refused(
    tmp_path: Path, channels: list[Channel], names: list[str]
) -> None:
    refused(tmp_path, *names, channels=channels)


def test_distinct_mounts_are_fine(tmp_path: Path) -> None:
    channels = [
        InvocationsChannel(),
        InvocationsChannel(name="second", mount="/second"),
        ResponsesChannel(),
        ResponsesChannel(name="other", mount="/other"),
    ]
    assert len(make(tmp_path, channels=channels).channels) == 4


@pytest.mark.parametrize(
    ("host_options", "channel_options", "names"),
    [
        ({"linker": OneTimeCodeLinker()}, {}, ["linking"]),
        ({"allowlist": NativeIdAllowlist({"invocations": ["anonymous"]})}, {}, ["an allowlist"]),
        (
            {"linker": OneTimeCodeLinker()},
            {"require_link": True, "offers_link_commands": False},
            ["require_link"],
        ),
        ({}, {"allowlist": NativeIdAllowlist({"invocations": ["x"]})}, ["an allowlist"]),
    ],
    ids=["linker", "host-allowlist", "require-link", "channel-allowlist"],
)
def test_access_control_on_an_unauthenticated_channel_needs_an_opt_in(
    tmp_path: Path,
    host_options: dict[str, Any],
    channel_options: dict[str, Any],
    names: list[str],
) -> None:
    refused(
        tmp_path,
        "'invocations' does not authenticate its callers",
        "allow_unauthenticated_access_control=True",
        *names,
        channels=[InvocationsChannel(**channel_options)],
        **host_options,
    )
    # The application's explicit opt-in, or callers it can tell apart, make it acceptable.
    for channel in (
        InvocationsChannel(allow_unauthenticated_access_control=True, **channel_options),
        InvocationsChannel(authenticate=lambda request: "someone", **channel_options),
        InvocationsChannel(trust_platform_headers=True, **channel_options),
    ):
        fresh = (
            {**host_options, "linker": OneTimeCodeLinker()}
            if "linker" in host_options
            else host_options
        )
        made = make(tmp_path, channels=[channel], **fresh)
        assert made.channels == (channel,)


def test_an_unauthenticated_channel_can_opt_out_of_linking(tmp_path: Path) -> None:
    channels = [InvocationsChannel(offers_link_commands=False), ResponsesChannel()]
    made = make(tmp_path, channels=channels, linker=OneTimeCodeLinker())
    assert made.command_catalog("invocations") == ()
    assert [c.name for c in made.command_catalog("responses")][:1] == ["link"]


def test_the_responses_channel_takes_its_access_settings_in_its_constructor(
    tmp_path: Path,
) -> None:
    channel = ResponsesChannel(
        confidentiality_tier="internal",
        require_link=True,
        allowlist=None,
        offers_link_commands=True,
    )
    made = make(tmp_path, channels=[channel], linker=OneTimeCodeLinker())
    assert made.link_rules.profile("responses").confidentiality_tier == "internal"
    access = made._turn_settings.access.for_channel("responses")
    assert access.require_link is True
    assert access.allowlist is None
