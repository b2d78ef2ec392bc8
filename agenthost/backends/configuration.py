"""The host's configuration, checked and resolved once, when ``Host`` is built.

Identity: the host's and the channels' settings (allowlists, ``require_link``, linkers,
the link policy, confidentiality tiers, command opt-outs) become the values the core
decides with: ``authorization.AccessSettings``, ``commands.CommandCatalog`` and
``link_policy.LinkRules``. A setting that cannot work raises :class:`ConfigurationError`
here, at start-up, naming the setting and the remedy, instead of failing a request later.

The host as a whole (``check_host_configuration``, at the end): its target, its channels
and their routes, and access control on channels that cannot tell their callers apart.
"""

from __future__ import annotations

import enum
import functools
import inspect
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import attrs
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from agenthost.backends.channel import INHERIT, Channel
from agenthost.backends.linking import IdentityLinker
from agenthost.sansio_core import authorization
from agenthost.sansio_core.authorization import AccessSettings, Allowlist, ChannelAccess
from agenthost.sansio_core.commands import CommandCatalog, host_commands
from agenthost.sansio_core.link_policy import AllowAllLinks, LinkPolicy, LinkRules

_Choice = TypeVar("_Choice", bound=enum.Enum)


class ConfigurationError(ValueError):
    """The host was configured wrongly; the message names the setting and the remedy."""


def choice(kind: type[_Choice], value: object, setting: str) -> _Choice:
    """``value`` as a member of the enum ``kind``, or an error naming ``setting`` and the
    values it takes."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in kind)
        raise ConfigurationError(f"{setting} must be one of {choices}, not {value!r}") from None


@attrs.frozen
class IdentityConfiguration:
    access: AccessSettings
    commands: CommandCatalog
    link_rules: LinkRules
    linkers: tuple[IdentityLinker, ...]


def identity_configuration(
    *,
    channels: Sequence[Channel],
    linker: IdentityLinker | Sequence[IdentityLinker] | None,
    allowlist: Allowlist | None,
    require_link: bool,
    link_policy: LinkPolicy | None,
    custom_resolver: bool,
) -> IdentityConfiguration:
    """Check every identity setting and resolve ``"inherit"``; raise on the first problem."""
    linkers = _linkers(linker, channels)
    _check_host_settings(allowlist, require_link, link_policy)
    for channel in channels:
        _check_channel_settings(channel)
    claim_channels = [c.name for c in channels if c.provides_verified_claims]
    claims_available = bool(claim_channels) or any(x.provides_claims for x in linkers)
    can_link = bool(linkers) or bool(claim_channels)
    if custom_resolver and (
        can_link or require_link or any(c.require_link is True for c in channels)
    ):
        raise ConfigurationError(
            "identity_resolver= cannot be combined with linking (linker=, require_link, or a "
            "channel that verifies claims): linking re-points the identities the host stores, "
            "which a custom resolver bypasses. Remove the resolver, or the linking settings"
        )
    names = frozenset(channel.name for channel in channels)
    default = ChannelAccess(allowlist, require_link, can_link, claims_available)
    _check_access(default, "Host(allowlist=..., require_link=...)", names)
    per_channel = {}
    for channel in channels:
        access = ChannelAccess(
            allowlist if channel.allowlist == INHERIT else channel.allowlist,
            require_link if channel.require_link == INHERIT else bool(channel.require_link),
            can_link,
            claims_available,
        )
        if channel.allowlist != INHERIT or channel.require_link != INHERIT:
            _check_access(access, f"channel {channel.name!r}", names)
        per_channel[channel.name] = access

    policy = link_policy if link_policy is not None else AllowAllLinks()
    unknown = sorted(policy.named_channels() - names)
    if unknown:
        raise ConfigurationError(
            f"link_policy names channel(s) {', '.join(map(repr, unknown))} that this host does "
            f"not have (its channels: {_listing(names)}); fix the names or add the channels"
        )
    rules = LinkRules(policy, {channel.name: channel.confidentiality_tier for channel in channels})
    catalog = CommandCatalog(
        host_commands(can_link=bool(linkers)),
        frozenset(channel.name for channel in channels if not channel.offers_link_commands),
    )
    return IdentityConfiguration(AccessSettings(default, per_channel), catalog, rules, linkers)


def _linkers(
    linker: IdentityLinker | Sequence[IdentityLinker] | None, channels: Sequence[Channel]
) -> tuple[IdentityLinker, ...]:
    given: Iterable[object]
    if linker is None:
        given = ()
    elif isinstance(linker, IdentityLinker):
        given = (linker,)
    elif isinstance(linker, Sequence) and not isinstance(linker, str):
        given = linker
    else:
        given = (linker,)
    found: list[IdentityLinker] = []
    for item in given:
        if not isinstance(item, IdentityLinker):
            raise ConfigurationError(
                f"linker= takes IdentityLinker values (e.g. OneTimeCodeLinker()), not {item!r}"
            )
        if item.is_bound:
            raise ConfigurationError(
                f"linker {item.name!r} already belongs to another Host; give each Host its own"
            )
        found.append(item)
    # A channel that is also a linker (an OpenID Connect link channel) links too.
    found += [c for c in channels if isinstance(c, IdentityLinker) and c not in found]
    return tuple(found)


def _check_host_settings(allowlist: object, require_link: object, link_policy: object) -> None:
    if allowlist is not None and not isinstance(allowlist, Allowlist):
        raise ConfigurationError(
            f"allowlist= takes an Allowlist (AllowAll(), NativeIdAllowlist({{...}}), "
            f"LinkedClaimAllowlist(...), AnyOfAllowlists(...) ...) or None, not {allowlist!r}"
        )
    if not isinstance(require_link, bool):
        raise ConfigurationError(f"require_link= takes True or False, not {require_link!r}")
    if link_policy is not None and not isinstance(link_policy, LinkPolicy):
        raise ConfigurationError(
            "link_policy= takes a LinkPolicy (AllowAllLinks(), SameConfidentialityTierOnly(), "
            f"ExplicitAllowList([...]), DenyAllLinks()), not {link_policy!r}"
        )


def _check_channel_settings(channel: Channel) -> None:
    name = channel.name
    if channel.require_link != INHERIT and not isinstance(channel.require_link, bool):
        raise ConfigurationError(
            f"channel {name!r}: require_link must be True, False or 'inherit', "
            f"not {channel.require_link!r}"
        )
    allowlist = channel.allowlist
    if allowlist is not None and allowlist != INHERIT and not isinstance(allowlist, Allowlist):
        raise ConfigurationError(
            f"channel {name!r}: allowlist must be an Allowlist, None (open) or 'inherit' "
            f"(the host's), not {allowlist!r}"
        )
    tier = channel.confidentiality_tier
    if not isinstance(tier, str) or not tier:
        raise ConfigurationError(
            f"channel {name!r}: confidentiality_tier must be a non-empty string, not {tier!r}"
        )
    if not isinstance(channel.offers_link_commands, bool):
        raise ConfigurationError(f"channel {name!r}: offers_link_commands must be True or False")
    if channel.bot_name is not None and not isinstance(channel.bot_name, str):
        raise ConfigurationError(f"channel {name!r}: bot_name must be a string or None")


def _check_access(access: ChannelAccess, where: str, names: frozenset[str]) -> None:
    if access.require_link and not access.can_link:
        raise ConfigurationError(
            f"{where} requires linking (require_link=True) but this host cannot link: pass "
            "Host(linker=OneTimeCodeLinker()) or add a channel that verifies claims, or set "
            "require_link=False"
        )
    allowlist = access.allowlist
    if allowlist is None:
        return
    unknown = sorted(authorization.channels_named(allowlist) - names)
    if unknown:
        raise ConfigurationError(
            f"the allowlist of {where} names channel(s) {', '.join(map(repr, unknown))} that "
            f"this host does not have (its channels: {_listing(names)}); fix the names or add "
            "the channels"
        )
    if authorization.consults_claims(allowlist) and not access.claims_available:
        raise ConfigurationError(
            f"the allowlist of {where} reads verified claims (LinkedClaimAllowlist, or a "
            "CallableAllowlist with claims=True) but nothing on this host verifies claims: add "
            "a channel or linker that does (an OpenID Connect link channel), or remove the "
            "claim allowlist"
        )


def _listing(names: Iterable[str]) -> str:
    ordered = sorted(names)
    return ", ".join(map(repr, ordered)) if ordered else "none"


# --- the host as a whole: target, channels and routes ----------------------------------
# Checked by ``Host.__init__`` once the identity settings above are resolved.


def check_host_configuration(
    target: object,
    channels: Sequence[Channel],
    identities: IdentityConfiguration,
    routes: Callable[[Channel], Sequence[BaseRoute]],
) -> None:
    """Refuse a host that could not serve as configured, naming the fix:

    1. a host without channels (nothing could ever reach the target);
    2. a synchronous function as the target (it would fail every run);
    3. two channels answering the same route (the second would be unreachable);
    4. linking, an allowlist or ``require_link`` on a channel that does not authenticate
       its callers, unless the channel opts in (every caller there is one identity, so
       once one is admitted, all are).

    ``routes(channel)`` builds a channel's routes, as the app will.
    """
    if not channels:
        raise ConfigurationError(
            "a Host needs at least one channel: pass channels=[...] (e.g. "
            "InvocationsChannel() from agenthost.channels.invocations, or ResponsesChannel())"
        )
    _check_target(target)
    _check_routes(channels, routes)
    for channel in channels:
        _check_caller_authentication(channel, identities)


def _check_target(target: object) -> None:
    function: object = target
    if not (
        inspect.isfunction(target)
        or inspect.ismethod(target)
        or isinstance(target, functools.partial)
    ):
        if not callable(target) or callable(getattr(target, "run", None)):
            return  # an agent or a workflow (anything with run()); the adapter checks it
        function = type(target).__call__  # a callable object: its __call__ decides
    if _is_async(function) or _takes_no_arguments(target):
        return  # a message callable, or a function that builds a workflow per run
    name = getattr(target, "__name__", repr(target))
    raise ConfigurationError(
        f"the target {name} is a synchronous function taking arguments; the host runs an "
        "async function taking the list of messages (async def reply(messages) -> str, or an "
        "async generator of text chunks), an Agent Framework Agent or a Workflow (or a "
        "function taking no arguments that builds one): make it async def"
    )


def _takes_no_arguments(target: object) -> bool:
    try:
        inspect.signature(target).bind()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _is_async(function: object) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


_PARAMETER = re.compile(r"{[^}]*}")


def _check_routes(
    channels: Sequence[Channel], routes: Callable[[Channel], Sequence[BaseRoute]]
) -> None:
    taken: dict[tuple[str, str], str] = {("/readiness", "GET"): "the host (/readiness)"}
    mounts: list[tuple[str, str]] = []
    for channel in channels:
        for route in routes(channel):
            for key in _route_keys(route):
                owner = taken.get(key)
                if owner is not None and owner != f"channel {channel.name!r}":
                    raise ConfigurationError(
                        f"channel {channel.name!r} and {owner} both answer {key[1]} {key[0]}; "
                        "the second would never be reached: give one of them another mount= "
                        "(or prefix)"
                    )
                taken[key] = f"channel {channel.name!r}"
            if isinstance(route, Mount):
                mounts.append((route.path, channel.name))
    for prefix, name in mounts:
        for path, method in taken:
            owner = taken[(path, method)]
            inside = path == prefix or path.startswith(prefix + "/")
            if inside and owner != f"channel {name!r}":
                raise ConfigurationError(
                    f"channel {name!r} mounts {prefix} and {owner} answers {method} {path} "
                    "inside it: give one of them another mount= (or prefix)"
                )


def _route_keys(route: BaseRoute) -> list[tuple[str, str]]:
    if isinstance(route, Route):
        path = _PARAMETER.sub("{}", route.path)
        return [(path, method) for method in sorted(route.methods or {"GET"}) if method != "HEAD"]
    if isinstance(route, WebSocketRoute):
        return [(_PARAMETER.sub("{}", route.path), "WEBSOCKET")]
    if isinstance(route, Mount):
        return [(_PARAMETER.sub("{}", route.path), "MOUNT")]
    return []


def _check_caller_authentication(channel: Channel, identities: IdentityConfiguration) -> None:
    if channel.authenticates_callers or channel.allow_unauthenticated_access_control:
        return
    access = identities.access.for_channel(channel.name)
    linking = bool(identities.linkers) and channel.offers_link_commands
    settings = [
        name
        for name, used in (
            ("linking (/link, from linker=)", linking),
            ("an allowlist", access.allowlist is not None),
            ("require_link", access.require_link),
        )
        if used
    ]
    if settings:
        raise ConfigurationError(
            f"channel {channel.name!r} does not authenticate its callers (every caller is the "
            f"same identity), so {' and '.join(settings)} there would admit every caller once "
            "one is admitted: authenticate them (e.g. InvocationsChannel(authenticate=...) or "
            "trust_platform_headers=True), turn it off for this channel (allowlist=None, "
            "require_link=False, offers_link_commands=False), or pass "
            "allow_unauthenticated_access_control=True to the channel if that is intended"
        )
