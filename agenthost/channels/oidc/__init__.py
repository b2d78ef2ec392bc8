"""Linking by OpenID Connect (Entra ID via MSAL): authorization code + PKCE, verified claims.

Needs the ``entra`` extra (``pip install 'agenthost[entra]'``: ``msal`` and ``PyJWT[crypto]``).
"""

from importlib.util import find_spec

_missing = [name for name in ("msal", "jwt", "cryptography") if find_spec(name) is None]
if _missing:
    raise ImportError(
        f"agenthost.channels.oidc needs {', '.join(_missing)}: "
        "install the entra extra with pip install 'agenthost[entra]'"
    )

from agenthost.channels.oidc.transport import (  # noqa: E402 - after the check above
    FLOW_KIND,
    TICKET_KIND,
    OidcLinkChannel,
)

__all__ = ["FLOW_KIND", "TICKET_KIND", "OidcLinkChannel"]
