"""The Invocations channel (Azure AI Foundry's hosted-agent protocol, and a plain JSON API)."""

from agenthost.channels.invocations.transport import InvocationsChannel

__all__ = ["InvocationsChannel"]
