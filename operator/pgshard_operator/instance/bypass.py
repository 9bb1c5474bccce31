"""Writes that bypassed the proxy: committed on a statement-mode primary, never logged.

Such a write (a client connected to the primary directly) reaches no follower, so
the followers silently differ from the primary. The primary's agent finds them by
decoding its own WAL: a logical replication slot (``test_decoding``, in the
application database) is read every few seconds, and a committed transaction that
changed a table outside the ``pgshard`` schema (INSERT, UPDATE, DELETE, TRUNCATE)
without appending to the statement log in the same transaction is one. The proxy
appends in the same transaction as the data, and the agents write only ``pgshard``
tables, so nothing else is counted. The server does the decoding and the grouping;
only the offending transactions come back.

A statement follower's agent decodes its own WAL the same way: the applier appends
every entry it applies to the follower's log in the same transaction, so a transaction
that changed a table without it was someone else's (read-only was turned off by hand).

Blind spots (README): DDL and sequence changes are not decoded; nothing is seen
before the slot exists (it is created when the member becomes primary) nor while
its WAL was dropped (``max_slot_wal_keep_size``); other databases are not watched.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from typing import Any

from pgshard_proxy.contract import statement_log as slog

log = logging.getLogger(__name__)

SLOT = "pgshard_bypass"
BATCH = 20000
"""Decoded rows per call at most (whole transactions; the next call continues)."""

_SLOT = """
SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()
"""

_DECODE = f"""
SELECT xid::text AS xid,
       array_agg(DISTINCT substring(data from '^table (.*?): [A-Z]+:'))
           FILTER (WHERE data LIKE 'table %' AND data NOT LIKE 'table {slog.SCHEMA}.%')
           AS tables
FROM pg_logical_slot_get_changes($1, NULL, $2, 'skip-empty-xacts', '1', 'include-xids', '1')
GROUP BY xid::text
HAVING bool_or(data LIKE 'table %' AND data NOT LIKE 'table {slog.SCHEMA}.%')
   AND NOT bool_or(data LIKE 'table {slog.TABLE}: INSERT:%')
"""


@dataclasses.dataclass
class Watch:
    """What the primary's agent found so far (reported in its status).

    A statement follower's agent runs one too (``follower``): there a transaction that
    changed a table without appending to the log did not come from the applier."""

    follower: bool = False

    transactions: int = 0
    """Committed transactions that bypassed the log since the watch began."""
    last_xid: str | None = None
    last_tables: tuple[str, ...] = ()
    last_at: str | None = None
    since: str | None = None
    """When this member began watching (the slot was made): nothing before is seen."""
    error: str | None = None
    """Why the watch is not working now (then bypasses may go unseen)."""
    checks: int = 0
    """Completed checks: everything committed before one began has been looked at."""

    def status(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions,
            "lastXid": self.last_xid,
            "lastTables": list(self.last_tables),
            "lastAt": self.last_at,
            "watchingSince": self.since,
            "error": self.error,
            "checks": self.checks,
        }

    async def check(self, conn: Any) -> int:
        """Read the WAL decoded since the last call; how many bypasses it held."""
        try:
            found = await _decode(conn, self)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            if error != self.error:
                log.warning("cannot look for writes that bypassed the proxy: %s", error)
            self.error = error
            raise
        self.error = None
        self.checks += 1
        for row in found:
            self.transactions += 1
            self.last_xid = row["xid"]
            self.last_tables = tuple(row["tables"] or ())
            self.last_at = _now()
            log.error(
                "transaction %s wrote %s on this follower, not through its applier: the "
                "follower no longer matches its primary"
                if self.follower
                else "transaction %s wrote %s on the primary without going through the proxy: "
                "it is not replicated, the followers now differ from the primary",
                row["xid"],
                ", ".join(self.last_tables),
            )
        return len(found)


async def _decode(conn: Any, watch: Watch) -> list[Any]:
    state = await conn.fetchval(_SLOT, SLOT)
    if state == "lost":
        log.warning("bypass slot lost its WAL (unread too long): made again, a gap unseen")
        await conn.execute("SELECT pg_drop_replication_slot($1)", SLOT)
        state = None
    if state is None:
        await conn.execute("SELECT pg_create_logical_replication_slot($1, 'test_decoding')", SLOT)
        watch.since = _now()
    elif watch.since is None:
        watch.since = _now()  # a slot of this member's earlier run: unread WAL is decoded
    return list(await conn.fetch(_DECODE, SLOT, BATCH))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
