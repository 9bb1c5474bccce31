"""Reads to a lagging follower, writes to the primary, session guarantees kept.

One primary, one streaming follower that applies WAL 300 ms late, and the proxy
in front (``--max-wait-ms 50``: a read waits that long for the follower, then
uses the primary). The consistency workload is recorded and checked: ``session``
mode has no violation while reads really go to the follower; ``eventual`` mode
on the same setup does show violations, so the check can fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.support import consistency_workload as workload
from tests.support import history, pgserver, pipeline, replicated
from tests.support import proxy as proxy_support

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""


@pytest.fixture(scope="module")
def lagging() -> Iterator[tuple[proxy_support.ProxyProc, pgserver.PgServer, pgserver.PgServer]]:
    with replicated.running(
        "--max-wait-ms", "50", apply_delay_ms=300, wait_for_reads=False
    ) as setup:
        yield setup


Setup = tuple[proxy_support.ProxyProc, pgserver.PgServer, pgserver.PgServer]


async def _run(setup: Setup, mode: str) -> tuple[workload.Result, list[history.Violation]]:
    p, primary, follower = setup
    plan = workload.Plan(clients=4, ops_per_client=150, keys=8)
    await workload.prepare(p.dsn, plan.keys)
    await _caught_up(primary, follower)  # eventual sessions would not see the new table
    result = await asyncio.wait_for(workload.run(p.dsn, mode, plan), 240)
    final = await workload.final_values(primary.dsn)
    return result, history.check(result.ops, final)


async def _caught_up(primary: pgserver.PgServer, follower: pgserver.PgServer) -> None:
    """Until the follower has replayed everything the primary wrote so far (bounded)."""
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


async def test_session_mode_keeps_read_your_writes_and_monotonic_reads(
    lagging: Setup,
) -> None:
    result, violations = await _run(lagging, "session")
    assert violations == []
    # Under this workload's stream of writes the follower is always 300 ms behind what
    # any session started after them needs (cross-session causality), and maxWaitMs is
    # 50: the reads go to the primary. (test_consistency.py, with maxWaitMs 1000, has
    # most reads on followers.) Once the writes stop and the follower has replayed
    # them, a new session reads from it again.
    assert result.primary_reads > 0
    p, primary, follower = lagging
    await _caught_up(primary, follower)
    conn = await asyncpg.connect(p.dsn)
    try:
        assert tuple(await conn.fetchrow(workload.READ_SQL, 0))[1] is True
    finally:
        await conn.close()


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


def _reads_reach_the_follower(c: psycopg.Connection) -> None:
    """Wait (bounded) until the proxy's position monitor lets reads go to the follower."""
    deadline = time.monotonic() + 15
    while c.execute("select pg_is_in_recovery()").fetchone() != (True,):
        assert time.monotonic() < deadline, "reads never reached the follower"
        time.sleep(0.1)


def test_a_write_arriving_later_in_a_pipelined_batch_takes_the_batch_to_the_primary(
    lagging: Setup,
) -> None:
    """Issue 12: a batch is routed as a whole, whatever TCP reads it arrives in."""
    p = lagging[0]
    with psycopg.connect(p.dsn, autocommit=True, options="-c pgshard.consistency=eventual") as c:
        c.execute("create table if not exists late_write(i int)")
        _reads_reach_the_follower(c)
        pg = c.pgconn
        pg.enter_pipeline_mode()
        pg.send_query_params(b"select pg_is_in_recovery()", None)
        assert pg.flush() == 0  # the read's Parse/Bind/Execute leave without a Sync
        time.sleep(0.3)  # ... and reach the proxy in a read of their own
        pg.send_query_params(b"insert into late_write values (1)", None)
        pg.pipeline_sync()
        assert pg.flush() == 0
        results = pipeline.results(pg)
        pg.exit_pipeline_mode()
    errors = [r.error_message.decode() for r in results if r.error_message]
    assert errors == []
    assert results[0].get_value(0, 0) == b"f"  # the batch ran on the primary


async def test_only_discard_all_and_deallocate_all_forget_prepared_statements(
    lagging: Setup,
) -> None:
    """Issue 12: a SET whose text contains "discard" forgot them; DEALLOCATE ALL did not."""
    p = lagging[0]
    conn = await asyncpg.connect(p.dsn, server_settings={"pgshard.consistency": "eventual"})
    try:
        stmt = await conn.prepare("select pg_is_in_recovery()")
        assert await stmt.fetchval() is True  # prepared on the follower
        await conn.execute("set application_name = 'discard_me'")  # runs on the primary
        await conn.execute("set pgshard.consistency = 'strong'")
        assert await stmt.fetchval() is False  # prepared again, transparently, on the primary
        await conn.execute("set pgshard.consistency = 'eventual'")
        await conn.execute("deallocate all")  # runs on the primary: gone everywhere
        with pytest.raises(asyncpg.InvalidSQLStatementNameError):
            await stmt.fetchval()  # a read: the follower, as PostgreSQL would answer
        again = await conn.prepare("select pg_is_in_recovery(), 1")
        assert tuple(await again.fetchrow()) == (True, 1)
    finally:
        await conn.close()


def test_a_write_after_a_flushed_read_in_one_pipeline_runs_on_the_primary(
    lagging: Setup,
) -> None:
    """psycopg fetches a pipelined read with a Flush, then pipelines a write before Sync."""
    p = lagging[0]
    with psycopg.connect(p.dsn, autocommit=True, options="-c pgshard.consistency=eventual") as c:
        c.execute("create table if not exists flushed_then_write(i int)")
        _reads_reach_the_follower(c)
        with c.pipeline():
            first = c.execute("select pg_is_in_recovery()").fetchone()
            c.execute("insert into flushed_then_write values (1)")
    assert first is not None
    with psycopg.connect(lagging[1].dsn) as direct:
        row = direct.execute("select count(*) from flushed_then_write").fetchone()
        assert row == (1,)


def test_after_a_failed_flushed_read_the_rest_of_the_pipeline_is_skipped(
    lagging: Setup,
) -> None:
    """As PostgreSQL skips a batch's messages after an error up to the Sync, the write
    that would move the batch to the primary is skipped, never run."""
    p, primary, follower = lagging
    with psycopg.connect(p.dsn, autocommit=True, options="-c pgshard.consistency=eventual") as c:
        c.execute("create table if not exists skipped_write(i int)")
        _reads_reach_the_follower(c)
        asyncio.run(_caught_up(primary, follower))  # only routing matters below
        pg = c.pgconn
        pg.enter_pipeline_mode()
        pg.send_query_params(b"select 1 / (pg_is_in_recovery()::int - 1)", None)
        pg.send_flush_request()
        assert pg.flush() == 0
        failed = pg.get_result()
        assert failed is not None and failed.status == psycopg.pq.ExecStatus.FATAL_ERROR
        assert b"division by zero" in (failed.error_message or b"")  # it ran on the follower
        pg.send_query_params(b"insert into skipped_write values (1)", None)
        pg.pipeline_sync()
        assert pg.flush() == 0
        statuses = [r.status for r in pipeline.results(pg)]
        pg.exit_pipeline_mode()
    assert psycopg.pq.ExecStatus.PIPELINE_ABORTED in statuses
    with psycopg.connect(primary.dsn) as direct:
        assert direct.execute("select count(*) from skipped_write").fetchone() == (0,)
