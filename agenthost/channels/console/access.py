"""Who may use the console, and how every action proves it came from the console's own page.

Pure decisions (no I/O, no clock, no randomness: the transport passes them in), so the
rules can be read and tested in one place:

1. Loopback only unless configured: with ``allow_remote=False`` a request whose peer is
   not a loopback address is refused (404, the console does not exist for it), and so is
   one whose ``Host`` header names anything but a loopback name, which stops a DNS
   rebinding page from reaching the console through the operator's browser.
2. A login is needed when a token is configured or remote access is allowed; the token is
   compared in constant time; a login makes a fresh browser session (no fixation).
3. Every state-changing request (POST) carries a CSRF token bound to the browser session
   (an HMAC of the session id under a key drawn at start-up) and, when the browser sends
   them, ``Origin`` must be the console's own and ``Sec-Fetch-Site`` must not be
   ``cross-site``.
4. Every page is served with a strict Content-Security-Policy (scripts and styles only
   from the console's own static files, no inline code, no framing) and no caching.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping

import attrs

SESSION_COOKIE = "agenthost_console"
CSRF_FIELD = "csrf"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


@attrs.frozen
class AccessSettings:
    allow_remote: bool
    login_required: bool


def is_loopback_address(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def host_header_name(host_header: str | None) -> str:
    """The name part of a ``Host`` header (``[::1]:8000`` → ``[::1]``), lower-cased."""
    value = (host_header or "").strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end != -1 else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def may_reach(settings: AccessSettings, peer: str | None, host_header: str | None) -> bool:
    """Rule 1: whether this peer may see the console at all."""
    if settings.allow_remote:
        return True
    if not is_loopback_address(peer):
        return False
    name = host_header_name(host_header)
    return name in _LOOPBACK_NAMES or name.startswith("127.")


def token_matches(expected: str, presented: str | None) -> bool:
    """Rule 2: constant-time comparison of the login token."""
    if not presented:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))


def csrf_token(key: bytes, session_id: str) -> str:
    """Rule 3: the CSRF token of one browser session."""
    return hmac.new(key, b"csrf:" + session_id.encode("ascii"), hashlib.sha256).hexdigest()


def csrf_valid(key: bytes, session_id: str | None, presented: str | None) -> bool:
    if not session_id or not presented:
        return False
    return hmac.compare_digest(csrf_token(key, session_id), presented)


def same_origin(
    *, origin: str | None, fetch_site: str | None, scheme: str, host_header: str | None
) -> bool:
    """Rule 3: a browser's own word on where a POST came from, when it sends one."""
    if fetch_site is not None and fetch_site.lower() == "cross-site":
        return False
    if origin is None:
        return True
    if origin == "null":
        return False
    return origin.lower() == f"{scheme}://{(host_header or '').lower()}"
