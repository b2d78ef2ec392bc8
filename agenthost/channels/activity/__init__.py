"""The Bot Framework Activity channel with Teams (``pip install 'agenthost[activity]'``):
verified inbound tokens, proactive messages through stored conversation references, and
Teams streaming.

Modules: ``codec`` (activities in, requests and outbound activities out), ``tokens``
(the inbound JWT and its cached signing keys), ``credentials`` (the bot's own token, via
msal), ``connector`` (the Bot Connector REST API and the service URL allowlist),
``inbox`` (record, de-duplicate, dispatch), ``replies`` (typing, streaming, the answer),
``pushes`` (conversation references and ``ChannelPush``) and ``transport`` (the channel).
"""

from agenthost.channels.activity.codec import Addressing
from agenthost.channels.activity.credentials import Certificate
from agenthost.channels.activity.transport import ActivityChannel

__all__ = ["ActivityChannel", "Addressing", "Certificate"]
