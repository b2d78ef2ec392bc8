"""The MCP channel: the hosted target as a tool of a streamable-HTTP MCP server."""

from agenthost.channels.mcp.transport import MCPChannel

__all__ = ["MCPChannel"]
