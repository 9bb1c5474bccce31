"""Scatter reads keep the session's guarantees on every shard they read.

A real local cluster: two shards, one follower each that applies commits 1.5 s late,
the supervisor's proxy in session mode. A scatter read either reads a follower that
has the session's position on that shard, or a primary, whose position then becomes
the session's token there: a later keyed read of that shard never sees less than the
scatter saw (monotonic reads), and a session's scatter sees its own writes.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

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


Cluster = tuple[str, topology.Topology, localcluster.LocalCluster]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="pgshard-test-") as d:
        base = Path(d)
        base.chmod(0o755)
        with localcluster.running(
            base, "--distributed-table=t:k", "--follower-delay-ms=1500", shards=2, replicas=1
        ) as c:
            status = c.status()
            yield status["proxy"]["dsn"], topology.from_dict(status), c


def test_scatter_reads_are_monotonic_and_see_the_sessions_writes(cluster: Cluster) -> None:
    asyncio.run(_scenario(*cluster))


def test_new_sessions_see_on_every_shard_what_was_committed_before_they_connected(
    cluster: Cluster,
) -> None:
    """Cross-session causality, per shard: rows committed on both shards by one session
    are seen by new sessions' keyed reads of each shard and by a new session's scatter
    read, although both followers apply them 1.5 s late."""
    asyncio.run(_causal_scenario(*cluster))


async def _causal_scenario(dsn: str, topo: topology.Topology, c: localcluster.LocalCluster) -> None:
    writer = await asyncpg.connect(dsn)
    try:
        await writer.execute("CREATE TABLE IF NOT EXISTS t (k bigint NOT NULL, v int)")
        for i in range(2):
            for f in c.shard(i)["followers"]:
                await wait_for_table(f["dsn"], "t", 0)
        keys = [_key_on(topo.shards, shard, 50_000 + 1000 * shard) for shard in range(2)]
        for key in keys:
            await writer.execute("INSERT INTO t (k, v) VALUES ($1, 0)", key)
    finally:
        await writer.close()
    missing = []
    for key in keys:
        reader = await asyncpg.connect(dsn)
        try:
            if await reader.fetchval("SELECT count(*) FROM t WHERE k = $1", key) != 1:
                missing.append(f"a new session's keyed read did not see key {key}")
        finally:
            await reader.close()
    reader = await asyncpg.connect(dsn)
    try:
        seen = {r["k"] for r in await reader.fetch("SELECT k FROM t")}
        if not set(keys) <= seen:
            missing.append(f"a new session's scatter read saw {sorted(seen)}, not all of {keys}")
    finally:
        await reader.close()
    assert not missing, missing


async def _scenario(dsn: str, topo: topology.Topology, c: localcluster.LocalCluster) -> None:
    writer = await asyncpg.connect(dsn)
    reader = await asyncpg.connect(dsn)
    try:
        await writer.execute("CREATE TABLE IF NOT EXISTS t (k bigint NOT NULL, v int)")
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
