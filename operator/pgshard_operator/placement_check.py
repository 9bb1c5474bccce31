"""Which rows sit on the wrong shard: the placement check, run in SQL on each primary.

Called by ``pgshard local check-placement`` (and by tests on both platforms). A row
of a distributed table belongs to the shard whose ``hashRange`` holds its key's
hash (``pgshard_proxy.contract.placement``: PostgreSQL's own hash functions, so the
server computes it); a row of any other (home) table belongs to shard 0. Names are
quoted by the server (``regclass``, ``quote_ident``), never here.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import asyncpg

from pgshard_proxy.contract import placement, topology

_KEY_TYPE = """
SELECT c.oid::regclass::text AS rel, quote_ident(a.attname) AS col,
       format_type(a.atttypid, a.atttypmod) AS typ
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
WHERE c.oid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped
"""

_USER_TABLES = """
SELECT c.oid::regclass::text AS rel
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp)'
"""


class CheckFailed(Exception):
    """A shard could not be checked; the message names it and why."""


@dataclasses.dataclass(frozen=True)
class TableOnShard:
    table: str
    """As the server prints it (``regclass``), or as declared when it is missing."""
    shard: int
    distributed: bool
    rows: int
    misplaced: int
    missing: bool = False
    """A declared distributed table that does not exist on this shard (yet)."""


async def _check_shard(
    shard: topology.Shard, tables: tuple[topology.DistributedTable, ...]
) -> list[TableOnShard]:
    if shard.primary is None:
        raise CheckFailed(f"shard {shard.index} has no primary to check")
    lo, hi = shard.hash_range
    try:
        conn = await asyncpg.connect(shard.primary.dsn, timeout=10)
    except (OSError, asyncpg.PostgresError) as e:
        raise CheckFailed(f"shard {shard.index} ({shard.primary.address}): {e}") from None
    try:
        out: list[TableOnShard] = []
        distributed: set[str] = set()
        for t in tables:
            found = await conn.fetchrow(_KEY_TYPE, t.name, t.key)
            if found is None:
                out.append(TableOnShard(t.name, shard.index, True, 0, 0, missing=True))
                continue
            distributed.add(found["rel"])
            try:
                key_type = placement.KeyType.of(found["typ"])
            except ValueError as e:
                raise CheckFailed(f"table {t.name}: {e}") from None
            h = placement.hash32_sql(found["col"], key_type)
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, count(*) FILTER (WHERE NOT ({h} >= $1 AND {h} < $2))"
                f" AS bad FROM {found['rel']}",
                lo,
                hi,
            )
            out.append(TableOnShard(found["rel"], shard.index, True, row["n"], row["bad"]))
        for r in await conn.fetch(_USER_TABLES):
            if r["rel"] in distributed:
                continue
            n = await conn.fetchval(f"SELECT count(*) FROM {r['rel']}")
            out.append(TableOnShard(r["rel"], shard.index, False, n, n if shard.index else 0))
        return out
    finally:
        await conn.close()


async def check(topo: topology.Topology) -> list[TableOnShard]:
    """Every declared and home table on every shard's primary."""
    per_shard = await asyncio.gather(*(_check_shard(s, topo.tables) for s in topo.shards))
    return [t for shard in per_shard for t in shard]


def to_json(found: list[TableOnShard]) -> dict[str, Any]:
    return {
        "misplaced": sum(t.misplaced for t in found),
        "tables": [dataclasses.asdict(t) for t in found],
    }
