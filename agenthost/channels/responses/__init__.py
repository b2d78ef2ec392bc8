"""The Responses channel: the OpenAI Responses API (and Conversations) over the hosted target."""

from agenthost.channels.responses.transport import ResponsesChannel

__all__ = ["ResponsesChannel"]
