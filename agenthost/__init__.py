"""agenthost: host one AI agent on many channels at once.

>>> from agenthost import Host
>>> from agenthost.channels.invocations import InvocationsChannel
>>> host = Host(target=my_agent, channels=[InvocationsChannel()])  # doctest: +SKIP
>>> host.serve(port=8000)  # doctest: +SKIP
"""

from agenthost.backends.channel import Channel, HostServices
from agenthost.backends.host import ConfigurationError, Host, HostNotRunning
from agenthost.backends.targets import StreamUpdate, TargetAdapter
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
    "Channel",
    "ChannelCommand",
    "ChannelIdentity",
    "ChannelRequest",
    "ChannelSession",
    "ConfigurationError",
    "ContinuationToken",
    "ConversationScope",
    "Host",
    "HostMessage",
    "HostNotRunning",
    "HostServices",
    "HostedRunResult",
    "MultitaskStrategy",
    "RefusalReason",
    "ResponseTarget",
    "RunStatus",
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
]
