"""``agenthost links list|revoke``: who is linked to whom, for operators.

Like ``agenthost deliveries`` it opens the SQLite store a host uses (``--state-dir``,
default ``.agenthost``; or ``--db``) and works through the store contract, so it is safe
beside a running host. ``list`` prints the identities sharing a user's isolation key (named
by one of its identities, or by ``--key``), one JSON object a line, with how each joined.
``revoke`` unlinks one identity: it gets a fresh isolation key of its own and never reaches
the former user's sessions again (the same as ``/unlink``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

from agenthost.sansio_core.identity import candidate_isolation_key
from agenthost.sansio_core.types import ChannelIdentity
from agenthost.stores.sqlite import SQLiteStore


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("links", help="list or revoke identity links")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the identities of one user and how they joined")
    listing.add_argument("--key", help="the user's isolation key")
    revoke = actions.add_parser("revoke", help="unlink one identity from its user")
    for sub in (listing, revoke):
        sub.add_argument("--channel", help="the identity's channel (e.g. telegram)")
        sub.add_argument("--native-id", help="the identity's id on that channel")
        sub.add_argument("--state-dir", default=".agenthost", help="the host's state_dir")
        sub.add_argument("--db", default=None, help="the SQLite file (overrides --state-dir)")


def run(args: argparse.Namespace) -> int:
    path = Path(args.db) if args.db else Path(args.state_dir) / "state.db"
    if not path.exists():
        print(f"agenthost: no store at {path}", file=sys.stderr)
        return 2
    named = bool(args.channel and args.native_id)
    if args.action == "revoke" and not named:
        print("agenthost: revoke needs --channel and --native-id", file=sys.stderr)
        return 2
    if args.action == "list" and not named and not getattr(args, "key", None):
        print("agenthost: list needs --key, or --channel and --native-id", file=sys.stderr)
        return 2
    code: int = anyio.run(_run, args, path)
    return code


async def _run(args: argparse.Namespace, path: Path) -> int:
    store = SQLiteStore(path)
    try:
        identity = (
            ChannelIdentity(args.channel, args.native_id)
            if args.channel and args.native_id
            else None
        )
        key = getattr(args, "key", None)
        if identity is not None:
            context = await store.load_context(identity, None)
            if context.isolation_key is None:
                print(f"agenthost: no identity {args.channel}:{args.native_id}", file=sys.stderr)
                return 1
            key = context.isolation_key
        assert key is not None
        if args.action == "list":
            links = {
                (link.identity.channel, link.identity.native_id): link
                for link in await store.list_links(key)
            }
            identities = await store.list_identities(key)
            if not identities:
                print(f"agenthost: no user has isolation key {key!r}", file=sys.stderr)
                return 1
            for found in identities:
                link = links.get((found.channel, found.native_id))
                _print(
                    {
                        "isolation_key": key,
                        "channel": found.channel,
                        "native_id": found.native_id,
                        "linked_to": (
                            f"{link.anchor.channel}:{link.anchor.native_id}" if link else None
                        ),
                        "source": link.source if link else None,
                        "linked_at": link.created_at if link else None,
                    }
                )
            return 0
        assert identity is not None
        new_key = candidate_isolation_key(identity, uuid.uuid4().hex)
        result = await store.unlink_identity(identity, new_key, time.time())
        _print(
            {
                "channel": identity.channel,
                "native_id": identity.native_id,
                "reason": result.reason.value,
                "isolation_key": result.isolation_key,
            }
        )
        return 0
    finally:
        await store.close()


def _print(entry: dict[str, Any]) -> None:
    print(json.dumps(entry, default=str))
