"""The console channel: a web page at ``/console`` to chat with the target and to see and
act on what the host holds (sessions, identities and links, background runs, deliveries
and dead letters, a live feed), plus the one-time-code link page and opt-in ``/metrics``.

``access`` holds the security rules (pure), ``pages`` renders HTML, ``transport`` routes.
"""

from agenthost.channels.console.transport import ConsoleChannel

__all__ = ["ConsoleChannel"]
