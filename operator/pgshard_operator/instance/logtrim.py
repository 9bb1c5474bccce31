"""Trimming the statement log: entries every follower applied are removed.

The rule (README "Statement replication"): the primary keeps every entry above the
*horizon*, the smallest position among its followers' bookmarks in
``pgshard.followers`` (each applier keeps its own up to date; a snapshot copy sets
one before its dump, so a bootstrapping follower holds what it will need), and
never its newest entry (the position). A follower trims its own copy only below what
its primary already trimmed and below its own position: if it is promoted, every
follower that counted on the old primary still finds all it has not applied.

A bookmark stops counting when it is the primary's own (a stale row carried by the
dump it was copied from) or when its address is no longer a member of the shard and
it was not updated for :data:`GRACE_SECONDS` (a removed follower; the grace covers a
new member not yet listed). With the membership unknown, every bookmark counts.
A follower stopped for any time keeps its entries. Nothing is trimmed while a member
has no bookmark at all: a primary just promoted holds only the bookmarks its own copy
carried, and a follower that set its own later (copied at the same time, say) would
otherwise find the entries it still needs gone.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from pgshard_proxy.contract import statement_log as slog

log = logging.getLogger(__name__)

BATCH = 1000
"""Entries removed per statement: a short transaction that never holds many locks."""
ROUNDS = 20
"""Batches per call at most (then the next period continues)."""
PERIOD_SECONDS = 5.0
"""How often the primary's agent trims (and a follower's applier at most)."""
GRACE_SECONDS = 60.0

_FORGET = f"""
DELETE FROM {slog.SCHEMA}.followers
WHERE name = $1
   OR ($2::text[] IS NOT NULL
       AND NOT coalesce(address, '') = ANY($2::text[])
       AND updated_at < now() - make_interval(secs => $3))
RETURNING name
"""

_HORIZON = f"""
SELECT least((SELECT min(seq) FROM {slog.SCHEMA}.followers), ({slog.POSITION_SQL}))
"""

_UNMARKED = f"""
SELECT m FROM unnest($1::text[]) AS m
WHERE NOT EXISTS (SELECT 1 FROM {slog.SCHEMA}.followers f WHERE f.address = m)
ORDER BY m
"""


async def trim(conn: Any, below: int, batch: int = BATCH, rounds: int = ROUNDS) -> int:
    """Remove entries with ``seq < below``, oldest first, in bounded batches; how many."""
    total = 0
    for _ in range(rounds):
        n = int(await conn.fetchval(slog.TRIM_SQL, below, batch))
        total += n
        if n < batch:
            break
    return total


async def trim_primary(
    conn: Any,
    own_name: str,
    members: Collection[str] | None,
    own_address: str | None = None,
    grace: float = GRACE_SECONDS,
    batch: int = BATCH,
) -> int:
    """On the primary (``conn`` to its application database, as the superuser): forget
    bookmarks that stop counting, then trim below the horizon; entries removed. Members
    (``host:port``; ``own_address`` is this primary's) without a bookmark hold it all."""
    known = sorted(members) if members else None  # empty means "not known" too
    for row in await conn.fetch(_FORGET, own_name, known, grace):
        if row["name"] != own_name:
            log.info("follower %s is no longer a member: its bookmark stops counting", row[0])
    others = [m for m in known or () if m != own_address]
    if unmarked := [r[0] for r in await conn.fetch(_UNMARKED, others)]:
        log.debug("not trimming: no position yet from %s", ", ".join(unmarked))
        return 0
    horizon = int(await conn.fetchval(_HORIZON))
    n = await trim(conn, horizon, batch)
    if n:
        log.info("statement log trimmed: %d entries below %d", n, horizon)
    return n
