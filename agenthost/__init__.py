"""agenthost: host one AI agent on many channels at once.

>>> from agenthost import Host
>>> from agenthost.channels.invocations import InvocationsChannel
>>> host = Host(target=my_agent, channels=[InvocationsChannel()])  # doctest: +SKIP
>>> host.serve(port=8000)  # doctest: +SKIP
"""

from agenthost.backends.channel import Channel, HostServices
from agenthost.backends.configuration import ConfigurationError
from agenthost.backends.host import Host, HostNotRunning
from agenthost.backends.linking import IdentityLinker, OneTimeCodeLinker
from agenthost.backends.push import ChannelPush, PushMessage, PushOutcome
from agenthost.backends.targets import StreamUpdate, TargetAdapter
from agenthost.sansio_core.authorization import (
    AllOfAllowlists,
    AllowAll,
    Allowed,
    Allowlist,
    AnyOfAllowlists,
    CallableAllowlist,
    Denied,
    LinkedClaimAllowlist,
    LinkRequired,
    NativeIdAllowlist,
    Verdict,
)
from agenthost.sansio_core.link_policy import (
    AllowAllLinks,
    DenyAllLinks,
    ExplicitAllowList,
    LinkPolicy,
    SameConfidentialityTierOnly,
)
from agenthost.sansio_core.linking import LinkResult
from agenthost.sansio_core.turns import (
    RefusalReason,
    TurnCompleted,
    TurnFailed,
    TurnOutcome,
    TurnRefused,
)
from agenthost.sansio_core.types import (
    ChannelCommand,
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    ContinuationToken,
    ConversationScope,
    HostedRunResult,
    HostMessage,
    MultitaskStrategy,
    ResponseTarget,
    RunStatus,
    SessionMode,
    SessionRef,
    TextPart,
    UriPart,
)

__all__ = [
    "AllOfAllowlists",
    "AllowAll",
    "AllowAllLinks",
    "Allowed",
    "Allowlist",
    "AnyOfAllowlists",
    "CallableAllowlist",
    "Channel",
    "ChannelCommand",
    "ChannelIdentity",
    "ChannelPush",
    "ChannelRequest",
    "ChannelSession",
    "ConfigurationError",
    "ContinuationToken",
    "ConversationScope",
    "Denied",
    "DenyAllLinks",
    "ExplicitAllowList",
    "Host",
    "HostMessage",
    "HostNotRunning",
    "HostServices",
    "HostedRunResult",
    "IdentityLinker",
    "LinkPolicy",
    "LinkRequired",
    "LinkResult",
    "LinkedClaimAllowlist",
    "MultitaskStrategy",
    "NativeIdAllowlist",
    "OneTimeCodeLinker",
    "PushMessage",
    "PushOutcome",
    "RefusalReason",
    "ResponseTarget",
    "RunStatus",
    "SameConfidentialityTierOnly",
    "SessionMode",
    "SessionRef",
    "StreamUpdate",
    "TargetAdapter",
    "TextPart",
    "TurnCompleted",
    "TurnFailed",
    "TurnOutcome",
    "TurnRefused",
    "UriPart",
    "Verdict",
]
