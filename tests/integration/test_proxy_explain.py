"""EXPLAIN through the real proxy on two shards: routed as the explained statement.

A keyed statement's plan comes from the key's shard (``EXPLAIN ANALYZE`` counts the
rows there, so a plan from the wrong shard shows none); a statement that would run on
several shards is refused with ``0A000`` naming its shards and whether it is merged.
"""

from __future__ import annotations

import asyncpg
import psycopg
import pytest

from tests.integration.test_proxy_sharding import DDL, Setup, sharded  # noqa: F401
from tests.support import shardsim


async def test_explain_goes_where_the_statement_goes(sharded: Setup) -> None:  # noqa: F811
    key = next(k for k in range(1, 1000) if shardsim.shard_of(k, sharded.topo.shards) == 1)
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        await conn.execute(DDL[0])
        await conn.execute(DDL[2])
        await conn.execute("INSERT INTO orders (customer_id, id) VALUES ($1, 1)", key)
        analyze = "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) "
        keyed = [  # literal key (simple and extended protocol) and a $1 parameter
            await conn.fetch(f"{analyze}SELECT * FROM orders WHERE customer_id = {key}"),
            await conn.fetch(f"{analyze}SELECT * FROM orders WHERE customer_id = $1", key),
            await conn.fetch(f"EXPLAIN ANALYZE UPDATE orders SET qty = 2 WHERE customer_id={key}"),
        ]
        for plan in keyed:  # the scan found the row: the plan is shard 1's
            assert "rows=1 loops=1" in "\n".join(r[0] for r in plan), plan
        # EXPLAIN ANALYZE of the UPDATE ran it, on the key's shard only
        direct = await asyncpg.connect(sharded.servers[1].dsn)
        assert await direct.fetchval("SELECT qty FROM orders WHERE id = 1") == 2
        await direct.close()
        home = await conn.fetch("EXPLAIN SELECT * FROM countries")
        assert "countries" in home[0][0]
        for sql in (
            "EXPLAIN SELECT count(*) FROM orders",
            "EXPLAIN ANALYZE SELECT * FROM orders",
            "EXPLAIN (VERBOSE) SELECT * FROM orders WHERE customer_id IN (1, 2, 3, 4)",
        ):
            with pytest.raises(asyncpg.FeatureNotSupportedError, match=r"shards 0, 1 \(a read"):
                await conn.fetch(sql)
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    with psycopg.connect(sharded.proxy.dsn, autocommit=True) as pc:
        text = pc.execute(f"EXPLAIN ANALYZE SELECT * FROM orders WHERE customer_id = {key}")
        assert "rows=1 loops" in text.fetchone()[0]  # type: ignore[index]
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="merged"):
            pc.execute("EXPLAIN SELECT * FROM orders ORDER BY id")
