"""observe() against a real PostgreSQL primary, and against nothing at all."""

import asyncpg

from pgshard_operator.shard import observe, state
from tests.support import net
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
