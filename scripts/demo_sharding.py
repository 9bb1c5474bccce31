"""Demo step: a distributed table through pgshard-proxy, spread over the shards by its key.

Reads ``pgshard local status --json`` on stdin (the cluster must have been started with
``--distributed-table demo_orders:customer_id``). Through the proxy: the table is created
on every shard, rows are inserted one by one (each goes to its key's shard), then a keyed
read, a merged aggregate and a merged ``ORDER BY … LIMIT`` are run. Each shard's primary
is then asked directly how many rows it holds. Used by scripts/demo.
"""

from __future__ import annotations

import asyncio
import json
import sys

import asyncpg

ROWS = 100


async def main() -> None:
    doc = json.load(sys.stdin)
    tables = {t["name"]: t["key"] for t in doc.get("sharding", {}).get("tables", ())}
    if tables.get("demo_orders") != "customer_id":
        sys.exit("demo_orders is not a distributed table of this cluster (see scripts/demo)")
    conn = await asyncpg.connect(doc["proxy"]["dsn"])
    try:
        # DDL through the proxy runs on every shard's primary, all or nothing.
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS demo_orders ("
            " customer_id bigint NOT NULL, id bigint NOT NULL, total numeric(10,2),"
            " PRIMARY KEY (customer_id, id))"
        )
        for i in range(1, ROWS + 1):
            await conn.execute(
                "INSERT INTO demo_orders (customer_id, id, total) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                i,
                i,
                i * 1.5,
            )
        one = await conn.fetchrow("SELECT id, total FROM demo_orders WHERE customer_id = 7")
        count, total = await conn.fetchrow("SELECT count(*), sum(total) FROM demo_orders")
        top = await conn.fetch(
            "SELECT customer_id, total FROM demo_orders ORDER BY total DESC LIMIT 3"
        )
    finally:
        await conn.close()
    print(f"through the proxy: customer 7 -> {dict(one) if one else None} (one shard)")
    print(f"  count(*) = {count}, sum(total) = {total} (merged from every shard)")
    print(f"  top 3 by total: {[(r['customer_id'], str(r['total'])) for r in top]} (merge-sorted)")
    for shard in doc["shards"]:
        direct = await asyncpg.connect(shard["primary"]["dsn"])
        try:
            held = await direct.fetchval("SELECT count(*) FROM demo_orders")
        finally:
            await direct.close()
        lo, hi = shard["hashRange"]
        print(f"  shard {shard['index']} (hashes [{lo}, {hi})) holds {held} rows")


if __name__ == "__main__":
    asyncio.run(main())
