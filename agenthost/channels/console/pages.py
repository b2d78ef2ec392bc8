"""The console's HTML, rendered on the server: every value shown passes through :func:`e`.

Pages are plain functions of what the transport loaded (no template engine, no inline
script or style, so the strict CSP holds). Forms post to the console's own routes with the
CSRF field; message text only ever travels in POST bodies, never in a URL.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from agenthost.channels.console.access import CSRF_FIELD
from agenthost.sansio_core.background import RunRecord
from agenthost.sansio_core.delivery import Delivery, DeliveryStatus
from agenthost.sansio_core.linking import LinkRecord
from agenthost.sansio_core.routing import LastSeen
from agenthost.sansio_core.sessions import SessionRecord
from agenthost.sansio_core.types import ChannelIdentity

CURRENT = ' class="current"'
NAV = (
    ("", "Chat"),
    ("/users", "Identities"),
    ("/runs", "Runs"),
    ("/deliveries", "Deliveries"),
    ("/live", "Live"),
    ("/link", "Link"),
)


def e(value: object) -> str:
    """Escape for HTML text and attribute values (quotes included)."""
    return html.escape(str(value), quote=True)


def u(value: str) -> str:
    """Quote one path segment (ids may contain characters a URL would misread)."""
    return quote(value, safe="")


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp)) + " UTC"


class Page:
    """What every page needs: the mount, the CSRF token, and whether a login is in force."""

    def __init__(self, mount: str, csrf: str, *, logged_in: bool) -> None:
        self.mount = mount
        self.csrf = csrf
        self.logged_in = logged_in

    def href(self, path: str) -> str:
        return e(self.mount + path)

    def csrf_field(self) -> str:
        return f'<input type="hidden" name="{CSRF_FIELD}" value="{e(self.csrf)}">'

    def action(self, path: str, label: str, *, fields: Mapping[str, str] | None = None) -> str:
        """A one-button POST form (unlink, cancel, replay)."""
        hidden = "".join(
            f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in (fields or {}).items()
        )
        return (
            f'<form method="post" action="{self.href(path)}" class="inline">'
            f'{self.csrf_field()}{hidden}<button type="submit">{e(label)}</button></form>'
        )

    def layout(self, title: str, body: str, *, current: str = "", nav: bool = True) -> str:
        links = (
            ""
            if not nav
            else "".join(
                f'<a href="{self.href(path)}"{CURRENT if path == current else ""}>{e(label)}</a>'
                for path, label in NAV
            )
        )
        logout = (
            f'<form method="post" action="{self.href("/logout")}" class="inline">'
            f'{self.csrf_field()}<button type="submit">Log out</button></form>'
            if self.logged_in
            else ""
        )
        return (
            "<!doctype html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)} · agenthost console</title>"
            f'<link rel="icon" href="{self.href("/static/favicon.svg")}">'
            f'<link rel="stylesheet" href="{self.href("/static/console.css")}">'
            f'<script src="{self.href("/static/console.js")}" defer></script>'
            f'</head><body data-mount="{e(self.mount)}">'
            f"<header><strong>agenthost</strong><nav>{links}</nav>{logout}</header>"
            f"<main><h1>{e(title)}</h1>{body}</main></body></html>"
        )


def login_page(mount: str, *, failed: bool) -> str:
    page = Page(mount, "", logged_in=False)
    note = '<p class="error">That token is not right.</p>' if failed else ""
    body = (
        f"{note}<p>Enter the console token (printed when the host started, or set in "
        "its configuration).</p>"
        f'<form method="post" action="{page.href("/login")}" class="stack">'
        '<label>Token <input type="password" name="token" autocomplete="current-password" '
        'required autofocus></label><button type="submit">Log in</button></form>'
    )
    return page.layout("Log in", body, nav=False)


def chat_page(
    page: Page,
    *,
    identity: ChannelIdentity,
    answer: str | None = None,
    asked: str | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> str:
    transcript = "".join(
        f'<div class="turn {"user" if role == "user" else "agent"}">'
        f"<span>{'You' if role == 'user' else 'Agent'}</span><p>{e(text)}</p></div>"
        for role, text in history
    )
    if asked is not None:
        transcript += f'<div class="turn user"><span>You</span><p>{e(asked)}</p></div>'
    if answer is not None:
        transcript += f'<div class="turn agent"><span>Agent</span><p>{e(answer)}</p></div>'
    body = (
        f"<p>You talk to the hosted target as <code>{e(identity.channel)}:"
        f"{e(identity.native_id)}</code>; host commands (<code>/link</code>, "
        "<code>/new</code>…) work here too.</p>"
        f'<div id="transcript" aria-live="polite">{transcript}</div>'
        f'<form id="chat" method="post" action="{page.href("/chat")}" class="stack">'
        f"{page.csrf_field()}"
        '<label>Message <textarea name="message" rows="3" required maxlength="20000">'
        "</textarea></label>"
        '<button type="submit">Send</button></form>'
    )
    return page.layout("Chat", body, current="")


def users_page(
    page: Page, *, known: Sequence[tuple[str, str]], channels: Iterable[str],
    not_found: bool,
) -> str:  # fmt: skip
    options = "".join(f'<option value="{e(c)}">{e(c)}</option>' for c in channels)
    note = '<p class="error">No user has that identity.</p>' if not_found else ""
    rows = "".join(
        f'<tr><td><a href="{page.href("/users/" + u(key))}"><code>{e(key)}</code></a></td>'
        f"<td>{e(why)}</td></tr>"
        for key, why in known
    )
    body = (
        f"{note}<h2>Find a user by one of their identities</h2>"
        f'<form method="get" action="{page.href("/users")}" class="row">'
        f'<label>Channel <select name="channel">{options}</select></label>'
        '<label>Native id <input name="native_id" required maxlength="256"></label>'
        '<button type="submit">Find</button></form>'
        "<h2>Users with recent runs or deliveries</h2>"
        + (
            f"<table><thead><tr><th>Isolation key</th><th>Seen in</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
            if rows
            else "<p>None yet.</p>"
        )
    )
    return page.layout("Identities", body, current="/users")


def user_page(
    page: Page,
    *,
    isolation_key: str,
    identities: Sequence[ChannelIdentity],
    links: Sequence[LinkRecord],
    sessions: Sequence[SessionRecord],
    last_seen: Sequence[LastSeen],
) -> str:
    linked = {(link.identity.channel, link.identity.native_id): link for link in links}
    identity_rows = ""
    for identity in identities:
        link = linked.get((identity.channel, identity.native_id))
        how = (
            f"linked to {e(link.anchor.channel)}:{e(link.anchor.native_id)} by "
            f"{e(link.source)} at {e(when(link.created_at))}"
            if link
            else "first seen here"
        )
        unlink = page.action(
            "/unlink", "Unlink", fields={"channel": identity.channel,
                                         "native_id": identity.native_id},
        ) if len(identities) > 1 else ""  # fmt: skip
        identity_rows += (
            f'<tr class="identity"><td><code>{e(identity.channel)}</code></td>'
            f"<td><code>{e(identity.native_id)}</code></td><td>{how}</td><td>{unlink}</td></tr>"
        )
    session_rows = "".join(
        f'<tr><td><a href="{page.href("/sessions/" + u(s.session_id))}">'
        f"<code>{e(s.session_id)}</code></a></td><td>{e(s.qualifier)}</td>"
        f"<td>{s.generation}</td><td>{s.turns}</td><td>{e(when(s.updated_at))}</td></tr>"
        for s in sessions
    )
    seen_rows = "".join(
        f"<tr><td>{e(s.channel)}</td><td><code>{e(s.identity.native_id)}</code></td>"
        f"<td><code>{e(s.conversation_id or '—')}</code></td><td>{e(when(s.seen_at))}</td></tr>"
        for s in last_seen
    )
    body = (
        f'<p>Isolation key <code id="isolation-key">{e(isolation_key)}</code></p>'
        f"<h2>Identities ({len(identities)})</h2>"
        '<table id="identities"><thead><tr><th>Channel</th><th>Native id</th><th>How</th>'
        f"<th></th></tr></thead><tbody>{identity_rows}</tbody></table>"
        "<h2>Sessions</h2>"
        + (
            "<table><thead><tr><th>Session</th><th>Scope</th><th>Generation</th>"
            f"<th>Turns</th><th>Updated</th></tr></thead><tbody>{session_rows}</tbody></table>"
            if session_rows
            else "<p>No sessions yet.</p>"
        )
        + "<h2>Last seen</h2>"
        + (
            "<table><thead><tr><th>Channel</th><th>Identity</th><th>Conversation</th>"
            f"<th>When</th></tr></thead><tbody>{seen_rows}</tbody></table>"
            if seen_rows
            else "<p>Not seen on a channel that can push.</p>"
        )
    )
    return page.layout("User", body, current="/users")


def session_page(page: Page, session: SessionRecord) -> str:
    turns = "".join(
        f'<div class="turn {e(role)}"><span>{e(role)}</span><p>{e(text)}</p></div>'
        for role, text in history_of(session.state)
    )
    body = (
        f"<p>Session <code>{e(session.session_id)}</code> of "
        f'<a href="{page.href("/users/" + u(session.owner))}"><code>{e(session.owner)}'
        f"</code></a>, {session.turns} turns, updated {e(when(session.updated_at))}.</p>"
        + (turns or "<p>No history the console can read.</p>")
    )
    return page.layout("Session", body, current="/users")


def history_of(state: Any, limit: int = 500) -> list[tuple[str, str]]:
    """(role, text) pairs found in a stored session state, in order.

    The state is the target framework's own serialization; this reads any message-like
    mapping in it (a ``role`` and either ``text`` or ``contents`` with text items).
    """
    found: list[tuple[str, str]] = []

    def walk(value: Any, depth: int) -> None:
        if len(found) >= limit or depth > 12:
            return
        if isinstance(value, Mapping):
            role = value.get("role")
            if isinstance(role, str | Mapping):
                text = _message_text(value)
                if text:
                    name = role if isinstance(role, str) else str(role.get("value", ""))
                    found.append((name, text))
                    return
            for item in value.values():
                walk(item, depth + 1)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, depth + 1)

    walk(state, 0)
    return found


def _message_text(message: Mapping[str, Any]) -> str:
    text = message.get("text")
    if isinstance(text, str):
        return text
    pieces: list[str] = []
    for content in message.get("contents") or message.get("parts") or ():
        if isinstance(content, Mapping) and isinstance(content.get("text"), str):
            pieces.append(content["text"])
    return "".join(pieces)


def runs_page(page: Page, runs: Sequence[RunRecord]) -> str:
    rows = "".join(
        f'<tr class="run {e(r.status.value)}"><td><code>{e(r.token)}</code></td>'
        f"<td>{e(r.request.channel)}</td><td>{e(r.status.value)}</td><td>{r.attempts}</td>"
        f"<td>{e(when(r.created_at))}</td><td>{e(r.error or '')}</td><td>"
        + (page.action(f"/runs/{u(r.token)}/cancel", "Cancel") if not r.status.is_final else "")
        + "</td></tr>"
        for r in runs
    )
    body = (
        '<table id="runs"><thead><tr><th>Token</th><th>Channel</th><th>Status</th>'
        "<th>Attempts</th><th>Created</th><th>Error</th><th></th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if rows
        else "<p>No background runs.</p>"
    )
    return page.layout("Background runs", body, current="/runs")


def deliveries_page(
    page: Page, deliveries: Sequence[Delivery], *, state: DeliveryStatus | None
) -> str:
    tabs = "".join(
        f'<a href="{page.href("/deliveries" + (f"?state={s.value}" if s else ""))}"'
        f"{CURRENT if s == state else ''}>{e(s.value if s else 'all')}</a>"
        for s in (None, *DeliveryStatus)
    )
    rows = "".join(
        f'<tr class="delivery {e(d.status.value)}" data-id="{e(d.delivery_id)}">'
        f"<td><code>{e(d.delivery_id)}</code></td><td>{e(d.channel)}</td>"
        f"<td><code>{e(d.identity.native_id)}</code></td>"
        f'<td class="state">{e(d.status.value)}</td><td>{d.attempts}</td>'
        f'<td class="reason">{e(d.last_error or "")}</td><td>{e(when(d.updated_at))}</td><td>'
        + (
            page.action(f"/deliveries/{u(d.delivery_id)}/replay", "Replay")
            if d.status in (DeliveryStatus.DEAD, DeliveryStatus.UNKNOWN)
            else ""
        )
        + "</td></tr>"
        for d in deliveries
    )
    body = f'<nav class="tabs">{tabs}</nav>' + (
        '<table id="deliveries"><thead><tr><th>Delivery</th><th>Channel</th>'
        "<th>To</th><th>State</th><th>Attempts</th><th>Reason</th><th>Updated</th>"
        f"<th></th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else "<p>No deliveries in this state.</p>"
    )
    return page.layout("Deliveries", body, current="/deliveries")


def live_page(page: Page) -> str:
    body = (
        "<p>New turns, runs and deliveries as the host reports them (ids and outcomes "
        "only).</p>"
        f'<p id="live-status">connecting…</p><ol id="live" data-source="'
        f'{page.href("/events")}"></ol>'
    )
    return page.layout("Live", body, current="/live")


def link_page(page: Page, *, reply: str | None = None) -> str:
    answer = f'<p id="link-reply" class="reply">{e(reply)}</p>' if reply is not None else ""
    body = (
        "<p>Link this console's identity with one you use on another channel.</p>"
        f"{answer}"
        "<h2>I have a code from another channel</h2>"
        f'<form method="post" action="{page.href("/link")}" class="row">{page.csrf_field()}'
        '<label>Code <input name="code" required maxlength="64" autocomplete="off" '
        'spellcheck="false"></label><button type="submit">Link</button></form>'
        "<h2>I want a code to enter on another channel</h2>"
        + page.action("/link", "Show a code", fields={"code": ""})
    )
    return page.layout("Link", body, current="/link")


def message_page(page: Page, title: str, message: str, *, status_path: str = "") -> str:
    back = f'<p><a href="{page.href(status_path)}">Back</a></p>' if status_path else ""
    return page.layout(title, f'<p class="reply">{e(message)}</p>{back}')


def sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
