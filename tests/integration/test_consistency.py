"""Session guarantees end to end: recorded client histories checked for violations.

The workload (tests/support/consistency_workload.py) runs asyncpg and psycopg
sessions concurrently; the checker (tests/support/history.py) looks for
read-your-writes, monotonic-read and lost-write violations. Through the real
pgshard-proxy in front of ``pgshard local up --follower-delay-ms …`` there must be
none in ``session`` mode while followers serve the reads; the same workload in
``eventual`` mode, or with reads sent straight to a lagging follower, must show
violations — so these tests can fail.
"""

from __future__ import annotations

import asyncio
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.support import consistency_workload as workload
from tests.support import history, localcluster, proxy
from tests.support.pgserver import PgServer

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""

FOLLOWER_DELAYS = "150,400"
"""``--follower-delay-ms``: both followers lag behind commits (ms)."""
MAX_WAIT_MS = 1000
"""The proxy's maxWaitMs: longer than the lag, so session reads mostly wait for followers."""


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


@pytest.fixture(scope="module")
def proxy_dsn(lagging_cluster: localcluster.LocalCluster) -> Iterator[str]:
    """The real pgshard-proxy following the cluster's topology file, as the app user."""
    app = urllib.parse.urlsplit(lagging_cluster.shard(0)["primary"]["dsn"])
    assert app.username and app.password
    p = proxy.start_proxy(
        lagging_cluster.dir,
        None,
        f"--max-wait-ms={MAX_WAIT_MS}",
        topology_file=lagging_cluster.dir / "topology.json",
        user=urllib.parse.unquote(app.username),
        password=urllib.parse.unquote(app.password),
    )
    try:
        yield f"postgresql://{app.username}:{app.password}@{p.host}:{p.port}{app.path}"
    finally:
        p.stop()
        print(p.log_text()[-3000:])  # shown when a test fails


async def run_through_proxy(
    cluster: localcluster.LocalCluster, dsn: str, mode: str, ops_per_client: int
) -> tuple[workload.Result, dict[history.Guarantee, int]]:
    plan = workload.Plan(clients=4, ops_per_client=ops_per_client, keys=8, write_ratio=0.2)
    await workload.prepare(dsn, plan.keys)
    for f in cluster.shard(0)["followers"]:
        await wait_for_table(f["dsn"], "kv", plan.keys)
    result = await asyncio.wait_for(workload.run(dsn, mode, plan), 240)
    final = await workload.final_values(cluster.shard(0)["primary"]["dsn"])
    return result, history.summary(history.check(result.ops, final))


async def test_session_mode_keeps_read_your_writes_and_monotonic_reads(
    lagging_cluster: localcluster.LocalCluster, proxy_dsn: str
) -> None:
    result, counts = await run_through_proxy(lagging_cluster, proxy_dsn, "session", 500)
    print(f"session: {result.follower_reads} follower reads, {result.primary_reads} primary")
    assert len(result.ops) == 2000
    assert counts == {}, counts
    # followers really served reads (not everything sent to the primary)
    assert result.follower_reads > 0.2 * (result.follower_reads + result.primary_reads)


async def test_eventual_mode_shows_violations(
    lagging_cluster: localcluster.LocalCluster, proxy_dsn: str
) -> None:
    """The same workload with the guarantees switched off: the test can fail."""
    result, counts = await run_through_proxy(lagging_cluster, proxy_dsn, "eventual", 250)
    print(f"eventual: {counts}; {result.follower_reads} follower, {result.primary_reads} primary")
    assert counts.get(history.Guarantee.READ_YOUR_WRITES, 0) > 0, counts
    assert history.Guarantee.LOST_WRITE not in counts
    assert result.follower_reads > 0.9 * (result.follower_reads + result.primary_reads)
