"""``agenthost deliveries list|show|replay|purge``: the outbox, for operators.

It opens the store a host uses (``--store URL`` or ``AGENTHOST_STORE``, say the
PostgreSQL database of several replicas; else the SQLite file under ``--state-dir``,
default ``.agenthost``, or ``--db``) and works through the store contract, so it is safe
beside running hosts: a replayed delivery is picked up at a host's next sweep.
Output is one JSON object a line; message text is shown only by ``show``. ``list`` shows
the newest first (the dead letter an operator is looking for is usually recent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from agenthost.sansio_core import delivery
from agenthost.sansio_core.delivery import Delivery, DeliveryStatus
from agenthost.stores import selection
from agenthost.stores.base import DeliveryNotFound, Store, StoreError
from agenthost.stores.sqlite import SQLiteStore


def add_parser(commands: Any) -> None:
    from agenthost.cli import HelpFormatter  # --help shows each default

    parser = commands.add_parser(
        "deliveries", help="list, show, replay or purge deliveries", formatter_class=HelpFormatter
    )
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser(
        "list", help="deliveries, newest first (no message text)", formatter_class=HelpFormatter
    )
    listing.add_argument(
        "--status",
        action="append",
        choices=[s.value for s in DeliveryStatus],
        help="only these statuses (repeatable; all when not given)",
    )
    listing.add_argument("--limit", type=int, default=100, help="at most this many")
    show = actions.add_parser(
        "show", help="one delivery, with its messages", formatter_class=HelpFormatter
    )
    listing.add_argument(
        "--oldest-first", action="store_true", help="the oldest ones instead, oldest first"
    )
    show.add_argument("delivery_id")
    replay = actions.add_parser(
        "replay", help="send a dead or unknown delivery again", formatter_class=HelpFormatter
    )
    replay.add_argument("delivery_id")
    actions.add_parser("purge", help="delete the dead letters", formatter_class=HelpFormatter)
    for sub in (listing, show, replay, actions.choices["purge"]):
        sub.add_argument("--state-dir", default=".agenthost", help="the host's state_dir")
        sub.add_argument("--db", default=None, help="the SQLite file (overrides --state-dir)")
        sub.add_argument(
            "--store",
            default=None,
            metavar="URL",
            help="the store by URL, e.g. postgresql://... (default: $AGENTHOST_STORE, else "
            "the SQLite file)",
        )


def run(args: argparse.Namespace) -> int:
    url = args.store or (None if args.db else os.environ.get(selection.ENVIRONMENT))
    if url:
        try:
            store = selection.store_from_url(url)
        except StoreError as error:
            print(f"agenthost: {error}", file=sys.stderr)
            return 2
    else:
        path = Path(args.db) if args.db else Path(args.state_dir) / "state.db"
        if not path.exists():
            print(f"agenthost: no store at {path}", file=sys.stderr)
            return 2
        store = SQLiteStore(path)
    code: int = anyio.run(_run, args, store)
    return code


async def _run(args: argparse.Namespace, store: Store) -> int:
    try:
        if args.action == "list":
            statuses = [DeliveryStatus(s) for s in args.status] if args.status else None
            found_ones = await store.list_deliveries(
                statuses, limit=args.limit, newest_first=not args.oldest_first
            )
            for found in found_ones:
                _print(summary(found))
            return 0
        if args.action == "show":
            shown = await store.get_delivery(args.delivery_id)
            if shown is None:
                print(f"agenthost: no delivery {args.delivery_id!r}", file=sys.stderr)
                return 1
            _print({**summary(shown), "reply": dict(shown.reply), "echo": shown.echo})
            return 0
        if args.action == "replay":
            try:
                replayed = await store.apply_delivery_event(
                    args.delivery_id, delivery.Replay(time.time())
                )
            except DeliveryNotFound:
                print(f"agenthost: no delivery {args.delivery_id!r}", file=sys.stderr)
                return 1
            except delivery.DeliveryTransitionRefused as refused:
                print(f"agenthost: cannot replay: {refused}", file=sys.stderr)
                return 1
            _print(summary(replayed))
            return 0
        purged = await store.purge_deliveries([DeliveryStatus.DEAD])
        _print({"purged": purged})
        return 0
    finally:
        await store.close()


def summary(d: Delivery) -> dict[str, Any]:
    return {
        "delivery_id": d.delivery_id,
        "status": d.status.value,
        "channel": d.channel,
        "native_id": d.identity.native_id,
        "attempts": d.attempts,
        "echo_sent": d.echo_sent if d.echo is not None else None,
        "parts_sent": d.parts_sent,
        "next_attempt_at": d.next_attempt_at,
        "created_at": d.created_at,
        "delivered_at": d.delivered_at,
        "last_error": d.last_error,
    }


def _print(entry: dict[str, Any]) -> None:
    print(json.dumps(entry, default=str))
