"""A push-only channel that delivers replies to an application's HTTPS endpoint, signed."""

from agenthost.channels.webhook.transport import WebhookChannel, classify_response, sign, verify

__all__ = ["WebhookChannel", "classify_response", "sign", "verify"]
