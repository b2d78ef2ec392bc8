"""Identity resolution: from a channel's view of a user to the host's isolation key.

Rules:

1. The default resolver issues one stable isolation key per ``(channel, native_id)`` the
   first time it is seen, and the store keeps it; concurrent first sightings agree on one
   key because the store inserts only if absent and answers the winner.
2. A custom resolver may answer an application-owned key, or ``None`` to refuse the user.
3. Channel-supplied ids are untrusted until resolved: the isolation key, never the native
   id, is what sessions and runs are keyed on.
"""

from __future__ import annotations

from agenthost.sansio_core.types import ChannelIdentity


def candidate_isolation_key(identity: ChannelIdentity, seed: str) -> str:
    """The key to propose for a first sighting; ``seed`` is fresh entropy from the caller."""
    del identity  # the key must not leak the native id into session names or logs
    return f"ik_{seed}"
