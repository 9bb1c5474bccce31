"""Session guarantees end to end: recorded client histories checked for violations.

The workload (tests/support/consistency_workload.py) runs asyncpg and psycopg
sessions concurrently; the checker (tests/support/history.py) looks for
read-your-writes, monotonic-read and lost-write violations.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.support import consistency_workload as workload
from tests.support import history, localcluster
from tests.support.pgserver import PgServer

FOLLOWER_DELAYS = "150,400"
"""``--follower-delay-ms``: both followers lag behind commits (ms)."""


async def test_the_workload_against_one_server_is_consistent(pg_server: PgServer) -> None:
    """The recorder and checker agree on a trivially consistent system (no followers)."""
    plan = workload.Plan(clients=4, ops_per_client=250, keys=8)
    await workload.prepare(pg_server.dsn, plan.keys)
    result = await asyncio.wait_for(workload.run(pg_server.dsn, "session", plan), 120)
    final = await workload.final_values(pg_server.dsn)
    assert len(result.ops) == plan.clients * plan.ops_per_client
    writes = [op for op in result.ops if op.kind is history.OpKind.WRITE]
    assert writes and sum(final.values()) == len(writes)
    assert history.check(result.ops, final) == []
    assert result.follower_reads == 0 and result.primary_reads > 0


@pytest.fixture(scope="module")
def lagging_cluster() -> Iterator[localcluster.LocalCluster]:
    """``pgshard local up`` with one shard whose two followers apply commits late."""
    with tempfile.TemporaryDirectory(prefix="pgshard-test-") as d:
        base = Path(d)
        base.chmod(0o755)
        with localcluster.running(
            base, f"--follower-delay-ms={FOLLOWER_DELAYS}", shards=1, replicas=2
        ) as cluster:
            yield cluster


async def test_the_checker_catches_stale_reads_from_a_lagging_follower(
    lagging_cluster: localcluster.LocalCluster,
) -> None:
    """Without a consistency-keeping proxy (reads straight to a follower) the same
    workload violates read-your-writes: the test can fail."""
    shard = lagging_cluster.shard(0)
    primary_dsn, follower_dsn = shard["primary"]["dsn"], shard["followers"][1]["dsn"]
    plan = workload.Plan(clients=4, ops_per_client=150, keys=8, seed=7)
    await workload.prepare(primary_dsn, plan.keys)
    await wait_for_table(follower_dsn, "kv", plan.keys)
    result = await asyncio.wait_for(
        workload.run(primary_dsn, "session", plan, read_dsn=follower_dsn), 180
    )
    final = await workload.final_values(primary_dsn)
    counts = history.summary(history.check(result.ops, final))
    assert counts.get(history.Guarantee.READ_YOUR_WRITES, 0) > 0, counts
    assert history.Guarantee.LOST_WRITE not in counts
    assert result.primary_reads == 0 and result.follower_reads > 0


async def wait_for_table(dsn: str, table: str, rows: int, timeout: float = 60) -> None:
    """Until ``table`` has ``rows`` rows at ``dsn`` (a follower catching up)."""
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
            if exists and await conn.fetchval(f"SELECT count(*) FROM {table}") >= rows:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{table} never reached {rows} rows at {dsn}")
    finally:
        await conn.close()
