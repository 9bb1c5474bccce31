"""Reads to a lagging follower, writes to the primary, session guarantees kept.

One primary, one streaming follower that applies WAL 300 ms late, and the proxy
in front (``--max-wait-ms 50``: a read waits that long for the follower, then
uses the primary). The consistency workload is recorded and checked: ``session``
mode has no violation while reads really go to the follower; ``eventual`` mode
on the same setup does show violations, so the check can fail.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgshard_proxy.contract import topology
from tests.support import consistency_workload as workload
from tests.support import history, pgserver
from tests.support import proxy as proxy_support


@pytest.fixture(scope="module")
def lagging() -> Iterator[tuple[proxy_support.ProxyProc, pgserver.PgServer, pgserver.PgServer]]:
    with tempfile.TemporaryDirectory(prefix="pgshard-test-") as d:
        base = Path(d)
        base.chmod(0o755)
        primary = pgserver.make_server(base, "primary")
        follower = None
        p = None
        try:
            follower = pgserver.make_follower(primary, base, "f1", apply_delay_ms=300)
            topo = topology.Topology(
                shards=(
                    topology.Shard(
                        index=0,
                        epoch=1,
                        primary=topology.Member(
                            "primary", f"{primary.host}:{primary.port}", primary.dsn
                        ),
                        followers=(
                            topology.Member("f1", f"{follower.host}:{follower.port}", follower.dsn),
                        ),
                    ),
                )
            )
            p = proxy_support.start_proxy(base, topo, "--max-wait-ms", "50")
            yield p, primary, follower
        finally:
            if p is not None:
                p.stop()
            if follower is not None:
                follower.stop()
            primary.stop()


Setup = tuple[proxy_support.ProxyProc, pgserver.PgServer, pgserver.PgServer]


async def _run(setup: Setup, mode: str) -> tuple[workload.Result, list[history.Violation]]:
    p, primary, follower = setup
    plan = workload.Plan(clients=4, ops_per_client=150, keys=8)
    await workload.prepare(p.dsn, plan.keys)
    # New sessions carry no token: let the follower replay the new table first.
    conn = await asyncpg.connect(primary.dsn)
    try:
        lsn = await conn.fetchval("select pg_current_wal_insert_lsn()::text")
    finally:
        await conn.close()
    conn = await asyncpg.connect(follower.dsn)
    try:
        caught_up = "select pg_last_wal_replay_lsn() >= $1::text::pg_lsn"
        async with asyncio.timeout(30):
            while not await conn.fetchval(caught_up, lsn):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await conn.close()
    result = await asyncio.wait_for(workload.run(p.dsn, mode, plan), 240)
    final = await workload.final_values(primary.dsn)
    return result, history.check(result.ops, final)


async def test_session_mode_keeps_read_your_writes_and_monotonic_reads(
    lagging: Setup,
) -> None:
    result, violations = await _run(lagging, "session")
    assert violations == []
    assert result.follower_reads > 0 and result.primary_reads > 0


async def test_eventual_mode_shows_violations(
    lagging: Setup,
) -> None:
    result, violations = await _run(lagging, "eventual")
    assert result.follower_reads > 0
    assert violations, "eventual reads from a 300 ms late follower should be stale sometimes"


def test_transactions_pinning_settings_and_statements_follow_the_session(
    lagging: Setup,
) -> None:
    p = lagging[0]
    in_recovery = "select pg_is_in_recovery()"
    with psycopg.connect(p.dsn, autocommit=True, options="-c pgshard.consistency=eventual") as c:
        assert c.execute("show pgshard.consistency").fetchone() == ("eventual",)
        assert c.execute(in_recovery).fetchone() == (True,)  # a read: the follower
        # A SET runs on the primary and is replayed on the follower before its next read.
        c.execute("set application_name = 'routed-probe'")
        row = c.execute("select current_setting('application_name'), pg_is_in_recovery()")
        assert row.fetchone() == ("routed-probe", True)
        # A write transaction stays on the primary, reads included.
        with c.transaction():
            c.execute("create table if not exists tx_probe(i int)")
            assert c.execute(in_recovery).fetchone() == (False,)
        # A read-only transaction may use the follower.
        c.execute("begin read only")
        assert c.execute(in_recovery).fetchone() == (True,)
        c.execute("commit")
        # A bad value is refused by the proxy in the extended protocol too.
        for prepare in (False, True):  # simple, then extended protocol
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                c.execute("set pgshard.consistency = 'sometimes'", prepare=prepare)
        assert c.execute("show pgshard.consistency").fetchone() == ("eventual",)
        # Temporary tables pin the session to the primary.
        c.execute("create temp table pinned(i int)")
        assert c.execute(in_recovery).fetchone() == (False,)


async def test_prepared_statements_move_between_servers(
    lagging: Setup,
) -> None:
    p = lagging[0]
    conn = await asyncpg.connect(p.dsn, server_settings={"pgshard.consistency": "eventual"})
    try:
        stmt = await conn.prepare("select pg_is_in_recovery(), $1::int + 1")
        assert tuple(await stmt.fetchrow(1)) == (True, 2)
        await conn.execute("set pgshard.consistency = 'strong'")
        assert tuple(await stmt.fetchrow(2)) == (False, 3)  # same statement, now on the primary
        await conn.execute("set pgshard.consistency = 'eventual'")
        assert tuple(await stmt.fetchrow(3)) == (True, 4)
        with pytest.raises(asyncpg.InvalidParameterValueError):
            await conn.execute("set pgshard.consistency = 'sometimes'")
    finally:
        await conn.close()
