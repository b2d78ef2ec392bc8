"""The Discord channel (``pip install 'agenthost[discord]'``): HTTP interactions, verified,
replay-proof, deferred and streamed, plus pushes with the bot token.

Modules: ``verifier`` (Ed25519 signature and replay window), ``codec`` (interactions in,
requests and the command menu out), ``rendering`` (message bodies: 2,000-character parts,
no mentions), ``api`` (the REST API over the host's HTTP client: errors, rate limits),
``inbox`` (record, de-duplicate, dispatch), ``replies`` (deferred message edits,
follow-ups, the bot-token fallback), ``pushes`` (deliveries) and ``transport`` (the
channel itself).
"""

from agenthost.channels.discord.codec import AutocompleteQuery
from agenthost.channels.discord.transport import DiscordChannel

__all__ = ["AutocompleteQuery", "DiscordChannel"]
