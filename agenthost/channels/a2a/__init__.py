"""The A2A channel: other agents call the hosted agent (protocol v1.0 and v0.3)."""

from agenthost.channels.a2a.card import Skill
from agenthost.channels.a2a.transport import A2AChannel

__all__ = ["A2AChannel", "Skill"]
