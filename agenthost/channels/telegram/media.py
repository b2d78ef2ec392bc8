"""Short-lived signed URLs for the files users send, with no I/O.

A Telegram file can only be downloaded with the bot token in the URL, and that token must
never reach the model, the stored history or a log. So the model is given a URL on the
host instead, ``{public_url}{files_path}/{file_id}?exp=...&sig=...``, signed with
HMAC-SHA256 over the file id and the expiry under a per-channel key. The host's file route
checks the signature in constant time and the expiry, then fetches the file from Telegram
itself. A leaked URL is good for one file, until it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import mimetypes
import re
from urllib.parse import quote, urlencode

import attrs

_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{43}")  # fullmatch only: "$" allows a trailing "\n"
# Served under the file's own type only when a browser cannot run it; anything else is
# served as an opaque download (a hostile "image" must not become HTML on the host's origin).
_SAFE_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "audio/ogg",
        "audio/mpeg",
        "audio/mp4",
        "video/mp4",
        "application/pdf",
        "text/plain",
    }
)


def sign(key: bytes, file_id: str, expires: int) -> str:
    mac = hmac.new(key, f"{file_id}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


@attrs.frozen
class SignedFiles:
    """Signs and checks file URLs; ``base_url`` is the host's public origin plus the path."""

    key: bytes
    base_url: str
    ttl_seconds: float

    def url(self, file_id: str, now: float) -> str:
        expires = int(now + self.ttl_seconds)
        query = urlencode({"exp": expires, "sig": sign(self.key, file_id, expires)})
        return f"{self.base_url}/{quote(file_id, safe='')}?{query}"

    def check(self, file_id: str, expires: str | None, signature: str | None, now: float) -> str:
        """``"ok"``, ``"expired"`` (a genuine URL past its time) or ``"invalid"``."""
        if not expires or not signature or not expires.isdigit() or len(expires) > 12:
            return "invalid"
        if not _SIGNATURE.fullmatch(signature):
            return "invalid"
        expected = sign(self.key, file_id, int(expires))
        if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
            return "invalid"
        if int(expires) < now:
            return "expired"
        return "ok"


def served_media_type(file_path: str) -> str:
    """The ``content-type`` the file route answers for a Telegram ``file_path``."""
    guessed, _ = mimetypes.guess_type(file_path)
    if guessed is None and file_path.endswith(".oga"):
        guessed = "audio/ogg"
    return guessed if guessed in _SAFE_TYPES else "application/octet-stream"
