"""Key column types of distributed tables, learned once from shard 0's catalogue.

One per proxy (``server.context.ServerContext.key_types``): placing a key needs its
column's type (``contract.placement.KeyType``), which the declaration
(``sharding.tables``) does not give.
"""

from __future__ import annotations

import logging

import asyncpg

from ..contract import pgtls, placement, topology

log = logging.getLogger(__name__)

_KEY_TYPE_SQL = """
SELECT format_type(a.atttypid, a.atttypmod),
       (SELECT count(*) FROM pg_attribute b WHERE b.attrelid = a.attrelid AND b.attnum > 0
        AND b.attnum < a.attnum AND NOT b.attisdropped AND b.attgenerated = '')
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped
"""


class KeyTypes:
    """Key column types of distributed tables, learned from shard 0 (one per proxy)."""

    def __init__(self) -> None:
        self.types: dict[str, placement.KeyType] = {}
        self.positions: dict[str, int] = {}
        """The key's 0-based place among the columns a ``COPY`` without a column list
        reads (not dropped, not generated)."""

    async def learn(self, table: topology.DistributedTable, shard0: topology.Shard) -> None:
        """Look the column up; a table that does not exist yet stays unknown (its
        statements go to shard 0, where PostgreSQL reports the missing table)."""
        if shard0.primary is None:
            return
        try:
            conn = await asyncpg.connect(**pgtls.asyncpg_args(shard0.primary.dsn), timeout=10)
            try:
                found = await conn.fetchrow(_KEY_TYPE_SQL, table.name, table.key)
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("cannot look up the key type of %s: %s", table.name, e)
            return
        if found is None:
            return
        self.positions[table.name] = int(found[1])
        try:
            self.types[table.name] = placement.KeyType.of(str(found[0]))
        except ValueError as e:
            log.warning("table %s: %s", table.name, e)
