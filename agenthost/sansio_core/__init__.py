"""The Sans-IO core: every decision the host makes, as pure functions over events.

Nothing here performs I/O, awaits, reads a clock or draws randomness: time and fresh ids
arrive with the events, and effects go out for ``agenthost.backends`` to perform.
"""

from agenthost.sansio_core.types import (
    ChannelCommand,
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    ContentPart,
    ContinuationToken,
    ConversationScope,
    HostedRunResult,
    HostMessage,
    MultitaskStrategy,
    ResponseTarget,
    RunStatus,
    SessionMode,
    SessionRef,
    TargetKind,
    TextPart,
    UriPart,
)

__all__ = [
    "ChannelCommand",
    "ChannelIdentity",
    "ChannelRequest",
    "ChannelSession",
    "ContentPart",
    "ContinuationToken",
    "ConversationScope",
    "HostMessage",
    "HostedRunResult",
    "MultitaskStrategy",
    "ResponseTarget",
    "RunStatus",
    "SessionMode",
    "SessionRef",
    "TargetKind",
    "TextPart",
    "UriPart",
]
