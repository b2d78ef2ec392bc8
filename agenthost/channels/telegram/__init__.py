"""The Telegram channel (``pip install 'agenthost[telegram]'``): webhook or long polling,
group addressing, commands, streaming, MarkdownV2/HTML rendering and a durable inbox.

Modules: ``codec`` (updates in, requests out), ``rendering`` (Markdown out), ``api`` (the
Bot API over the host's HTTP client: errors, pacing), ``inbox`` (record, de-duplicate,
dispatch), ``replies`` (typing, streaming, the answer), ``media`` (signed file URLs) and
``transport`` (the channel itself).
"""

from agenthost.channels.telegram.api import Pacing
from agenthost.channels.telegram.codec import Addressing
from agenthost.channels.telegram.transport import TelegramChannel

__all__ = ["Addressing", "Pacing", "TelegramChannel"]
