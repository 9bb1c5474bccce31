"""Shards as databases of one PostgreSQL server, for planner, merge and executor tests.

``sharded_databases`` creates a database with every row (``whole``) and one database
per shard for 2 and 3 shards (``s2_0``…, ``s3_2``), rows placed by
``contract.placement`` exactly as the proxy places them.
"""

from __future__ import annotations

import datetime
import decimal
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from pgshard_proxy.contract import placement, topology
from tests.support import pgserver

TABLES = [("orders", "customer_id"), ("items", "customer_id")]
SCHEMA = """
CREATE TABLE orders (customer_id bigint NOT NULL, id int PRIMARY KEY, total numeric(10,2),
                     qty int, note text, paid bool, day date);
CREATE TABLE items (customer_id bigint NOT NULL, sku text, n int);
CREATE TABLE countries (code text PRIMARY KEY);
"""


def make_rows(seed: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    rng = random.Random(seed)
    orders, items = [], []
    for i in range(1, 1201):
        cust = rng.randint(1, 150)
        orders.append(
            (
                cust, i,
                None if i % 17 == 0 else decimal.Decimal(rng.randint(0, 100000)) / 100,
                None if i % 23 == 0 else rng.randint(-5, 50),
                rng.choice(["a", "b", "B", "é", "zz", None, "a b", ""]),
                None if i % 29 == 0 else rng.random() < 0.6,
                None if i % 31 == 0 else datetime.date(2026, 1, 1 + i % 28),
            )
        )  # fmt: skip
        if i % 2:
            items.append((cust, rng.choice(["x", "y", "z"]), rng.randint(1, 9)))
    return orders, items


class Cluster:
    def __init__(self, whole: asyncpg.Connection, layouts: dict[int, list[asyncpg.Connection]]):
        self.whole = whole
        self.layouts = layouts


async def sharded_databases(server: pgserver.PgServer) -> AsyncIterator[Cluster]:
    admin = await asyncpg.connect(server.dsn)
    names = ["whole", "s2_0", "s2_1", "s3_0", "s3_1", "s3_2"]
    conns: dict[str, asyncpg.Connection] = {}
    try:
        for n in names:
            await admin.execute(f"DROP DATABASE IF EXISTS {n}")
            await admin.execute(f"CREATE DATABASE {n}")
            conns[n] = await asyncpg.connect(server.dsn.rsplit("/", 1)[0] + "/" + n)
            await conns[n].execute(SCHEMA)
        orders, items = make_rows(1)
        await conns["whole"].copy_records_to_table("orders", records=orders)
        await conns["whole"].copy_records_to_table("items", records=items)
        await conns["whole"].execute("INSERT INTO countries VALUES ('de'), ('fr')")
        layouts: dict[int, list[asyncpg.Connection]] = {}
        for count in (2, 3):
            layout = shards(count)
            layouts[count] = [conns[f"s{count}_{i}"] for i in range(count)]
            for table, rows in (("orders", orders), ("items", items)):
                for i in range(count):
                    mine = [r for r in rows if shard_of(r[0], layout) == i]
                    await layouts[count][i].copy_records_to_table(table, records=mine)
            await layouts[count][0].execute("INSERT INTO countries VALUES ('de'), ('fr')")
        for c in conns.values():
            await c.execute("ANALYZE")
        yield Cluster(conns["whole"], layouts)
    finally:
        for c in conns.values():
            await c.close()
        await admin.close()


def shards(count: int) -> tuple[topology.Shard, ...]:
    return tuple(
        topology.Shard(index=i, epoch=1, primary=None, hash_range=r)
        for i, r in enumerate(topology.hash_ranges(count))
    )


def shard_of(key: object, shards: Sequence[topology.Shard]) -> int:
    h = placement.hash_key(key, placement.KeyType.INTEGER)
    return placement.shard_of(placement.reduce(h), shards)
