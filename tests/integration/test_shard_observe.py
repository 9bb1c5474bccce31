"""observe() against a real PostgreSQL primary and follower, and against nothing at all."""

import asyncio
from pathlib import Path

import asyncpg

from pgshard_operator.shard import observe, state
from tests.support import net, pgserver
from tests.support.pgserver import PgServer


async def test_observe_a_primary(pg_server: PgServer) -> None:
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        before = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
        await conn.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS x")
    finally:
        await conn.close()
    obs = await observe.observe("p", pg_server.dsn, timeout=5, process=state.ProcessState.ALIVE)
    assert obs.ok, obs.error
    assert obs.in_recovery is False
    assert obs.timeline == 1
    assert obs.current_lsn is not None
    assert obs.current_lsn > state.positions.parse_lsn(before)
    assert obs.received_lsn is None and obs.replayed_lsn is None
    assert obs.sync_standby_names == ""
    assert obs.replicas == ()
    assert obs.process is state.ProcessState.ALIVE


async def test_observe_nothing_listening_is_an_observation_not_an_error() -> None:
    host = net.random_loopback()
    dsn = f"postgresql://postgres@{host}:{net.free_port(host)}/postgres"
    obs = await observe.observe("gone", dsn, timeout=2)
    assert not obs.reachable and not obs.ok
    assert obs.error
    assert obs.in_recovery is None


async def test_observe_a_streaming_follower(pg_server: PgServer, pg_tmp: Path) -> None:
    follower = pgserver.make_follower(pg_server, pg_tmp, "f1")
    try:
        conn = await asyncpg.connect(pg_server.dsn)
        try:
            await conn.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS x")
            target = state.positions.parse_lsn(
                await conn.fetchval("SELECT pg_current_wal_lsn()::text")
            )
        finally:
            await conn.close()
        # Streaming is asynchronous: poll (bounded) until the follower replayed the write.
        async with asyncio.timeout(30):
            while True:
                f_obs = await observe.observe("f1", follower.dsn, timeout=5)
                assert f_obs.ok, f_obs.error
                if f_obs.replayed_lsn is not None and f_obs.replayed_lsn >= target:
                    break
                await asyncio.sleep(0.1)
        assert f_obs.in_recovery is True
        assert f_obs.timeline == 1
        assert f_obs.received_lsn is not None and f_obs.received_lsn >= target
        assert f_obs.current_lsn is None
        assert f_obs.upstream == f"{pg_server.host}:{pg_server.port}"
        assert f_obs.position is not None and f_obs.position >= target
        p_obs = await observe.observe("p", pg_server.dsn, timeout=5)
        (replica,) = p_obs.replicas
        assert replica.name == "f1"
        assert replica.state == "streaming"
        assert replica.flush_lsn is not None and replica.flush_lsn >= target
    finally:
        follower.stop()
