"""The agent card: what the channel tells other agents about the hosted agent.

One card serves both generations. Its v1.0 fields (``supportedInterfaces`` with a
JSON-RPC and an HTTP+JSON interface for v1.0 and a JSON-RPC interface for v0.3,
``capabilities``, ``securitySchemes``, ``skills``) are merged with the fields a v0.3
client reads (``url``, ``preferredTransport``, ``protocolVersion``, its own shape of
security schemes), the way the A2A SDKs serve cards during the transition: each
generation's parser ignores the other's fields. The security schemes are the ones the
channel's authentication hook checks; the card never claims more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from a2a.compat.v0_3 import conversions
from a2a.types import a2a_pb2 as pb
from google.protobuf import json_format


@attrs.frozen
class Skill:
    """One thing the agent can do, as the card lists it."""

    id: str
    name: str
    description: str
    tags: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()


@attrs.frozen
class CardSettings:
    name: str
    description: str
    version: str
    skills: tuple[Skill, ...]
    streaming: bool
    push_notifications: bool
    # v1.0 ProtoJSON security schemes by name (``{"bearer": {"httpAuthSecurityScheme":
    # {"scheme": "Bearer"}}}``); every one of them is required.
    security_schemes: Mapping[str, Mapping[str, Any]]
    input_modes: tuple[str, ...]
    output_modes: tuple[str, ...]
    documentation_url: str | None = None


def build_card(settings: CardSettings, endpoint: str) -> dict[str, Any]:
    """The card's JSON for an agent whose JSON-RPC and HTTP+JSON endpoint is ``endpoint``."""
    card = pb.AgentCard(
        name=settings.name,
        description=settings.description,
        version=settings.version,
        default_input_modes=list(settings.input_modes),
        default_output_modes=list(settings.output_modes),
    )
    for binding, version in (("JSONRPC", "1.0"), ("HTTP+JSON", "1.0"), ("JSONRPC", "0.3")):
        card.supported_interfaces.add(
            url=endpoint, protocol_binding=binding, protocol_version=version
        )
    card.capabilities.streaming = settings.streaming
    card.capabilities.push_notifications = settings.push_notifications
    card.capabilities.extended_agent_card = False
    if settings.documentation_url:
        card.documentation_url = settings.documentation_url
    for name, scheme in settings.security_schemes.items():
        json_format.ParseDict(dict(scheme), card.security_schemes[name])
    if settings.security_schemes:
        requirement = card.security_requirements.add()
        for name in settings.security_schemes:
            requirement.schemes[name].SetInParent()
    for skill in settings.skills:
        card.skills.add(
            id=skill.id,
            name=skill.name,
            description=skill.description,
            tags=list(skill.tags),
            examples=list(skill.examples),
        )
    current: dict[str, Any] = json_format.MessageToDict(card)
    legacy = conversions.to_compat_agent_card(card).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    legacy.pop("supportsAuthenticatedExtendedCard", None)
    return _merged(current, legacy)


def _merged(first: dict[str, Any], second: Mapping[str, Any]) -> dict[str, Any]:
    """``first`` with what ``second`` adds; where both have a value, ``first``'s wins
    (objects, and objects at the same place in lists, are merged the same way)."""
    for key, value in second.items():
        if key not in first:
            first[key] = value
        elif isinstance(value, Mapping) and isinstance(first[key], dict):
            _merged(first[key], value)
        elif isinstance(value, Sequence) and isinstance(first[key], list):
            for mine, theirs in zip(first[key], value, strict=False):
                if isinstance(mine, dict) and isinstance(theirs, Mapping):
                    _merged(mine, theirs)
    return first


def bearer_scheme() -> dict[str, Any]:
    """The security schemes of a channel whose hook reads ``Authorization: Bearer``."""
    return {"bearer": {"httpAuthSecurityScheme": {"scheme": "Bearer"}}}
