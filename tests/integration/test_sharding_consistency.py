"""Scatter reads keep the session's guarantees on every shard they read.

A real local cluster: two shards, one follower each that applies commits 1.5 s late,
the supervisor's proxy in session mode. A scatter read either reads a follower that
has the session's position on that shard, or a primary, whose position then becomes
the session's token there: a later keyed read of that shard never sees less than the
scatter saw (monotonic reads), and a session's scatter sees its own writes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from pgshard_proxy.contract import placement, topology
from tests.integration.test_consistency import wait_for_table
from tests.support import localcluster


def _key_on(shards: tuple[topology.Shard, ...], shard: int, start: int) -> int:
    h = placement.KeyType.INTEGER
    return next(
        k
        for k in range(start, start + 1000)
        if placement.shard_of(placement.reduce(placement.hash_key(k, h)), shards) == shard
    )


def test_scatter_reads_are_monotonic_and_see_the_sessions_writes(pg_tmp: Path) -> None:
    with localcluster.running(
        pg_tmp, "--distributed-table=t:k", "--follower-delay-ms=1500", shards=2, replicas=1
    ) as c:
        status = c.status()
        asyncio.run(_scenario(status["proxy"]["dsn"], topology.from_dict(status), c))


async def _scenario(dsn: str, topo: topology.Topology, c: localcluster.LocalCluster) -> None:
    writer = await asyncpg.connect(dsn)
    reader = await asyncpg.connect(dsn)
    try:
        await writer.execute("CREATE TABLE t (k bigint NOT NULL, v int)")
        for i in range(2):
            for f in c.shard(i)["followers"]:
                await wait_for_table(f["dsn"], "t", 0)
        worst = []
        for round_ in range(6):
            shard = round_ % 2
            key = _key_on(topo.shards, shard, 1000 * (round_ + 1))
            await writer.execute("INSERT INTO t (k, v) VALUES ($1, $2)", key, round_)
            seen = {r["k"] for r in await reader.fetch("SELECT k FROM t")}
            later = await reader.fetchval("SELECT count(*) FROM t WHERE k = $1", key)
            if key in seen and later == 0:
                worst.append(f"round {round_}: the scatter saw key {key}, the keyed read did not")
            # Read-your-writes: a session's own write, then its scatter read.
            own = _key_on(topo.shards, 1 - shard, 1000 * (round_ + 1) + 500)
            await reader.execute("INSERT INTO t (k, v) VALUES ($1, $2)", own, round_)
            if own not in {r["k"] for r in await reader.fetch("SELECT k FROM t")}:
                worst.append(f"round {round_}: the scatter did not see the session's own write")
        assert not worst, worst
    finally:
        await writer.close()
        await reader.close()
