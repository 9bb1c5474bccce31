"""A follower whose replayed WAL went past the new primary's fork cannot be repointed.

Seen in an end-to-end roll-out: a restarted member's PostgreSQL kept exiting with
"requested timeline N is not a child of this server's history" while the shard
manager kept rejoining it by a plain restart. Built here with three real servers:
follower ``a`` stops early, follower ``b`` replays (and checkpoints) more of the old
primary's WAL, then ``a`` is promoted. ``b`` then cannot start as ``a``'s follower,
and ``timeline.why_not_follow`` (what ``agent.rejoin`` asks before a plain restart)
must say so, and ``rejoin.follow`` (what ``agent.rejoin`` does with a stopped member)
must bring such a member back with pg_rewind (a standby target works as an old primary
does, given pgshard's ``wal_log_hints`` and full page writes).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from pgshard_operator.instance import bootstrap, config, postgres, rejoin, timeline
from pgshard_operator.instance.credentials import Credentials
from tests.support import pgserver

pytestmark = pytest.mark.integration

PASSWORD = "rejoin-test"
"""Set on the first primary: test servers trust local connections, but a member that
``rejoin.follow`` rewinds gets pgshard's pg_hba.conf (SCRAM only)."""
REWINDABLE = (
    "full_page_writes=on",
    "wal_log_hints=on",
    "wal_keep_size=128MB",
    "unix_socket_directories=",
)
"""What pg_rewind needs and pgshard's members have (config.render): full page writes
(test servers skip them), hint bits in WAL, the target's WAL back to the last
checkpoint before the fork (a standby's restartpoint past it recycles the rest; then
pg_rewind fails with "could not find previous WAL record" and the member is re-cloned),
and no socket in PGDATA (pg_rewind cannot copy it)."""
CREDS = Credentials(
    superuser_password=PASSWORD,
    replication_user="postgres",
    replication_password=PASSWORD,
    app_user="postgres",
    app_password=PASSWORD,
    app_database="postgres",
)


async def _sql(server: pgserver.PgServer, query: str) -> object:
    conn = await asyncpg.connect(server.dsn, password=PASSWORD, timeout=10)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def _replayed(follower: pgserver.PgServer, lsn: str) -> None:
    for _ in range(600):  # bounded: 60 s
        if await _sql(follower, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{follower.datadir.name} did not replay up to {lsn}")


async def test_a_follower_past_the_fork_never_restarts_as_it_is_and_is_brought_back(
    pg_server: pgserver.PgServer, pg_tmp: Path
) -> None:
    bins = postgres.Binaries.detect()
    primary = pg_server
    await _sql(primary, f"ALTER USER postgres PASSWORD '{PASSWORD}'")
    primary.stop()
    primary.options = REWINDABLE
    primary.start(bins)
    a = pgserver.make_follower(primary, pg_tmp, "a", options=REWINDABLE)
    b = pgserver.make_follower(primary, pg_tmp, "b", options=REWINDABLE)
    try:
        await _sql(primary, "CREATE TABLE t AS SELECT 1 AS x")
        await _replayed(a, str(await _sql(primary, "SELECT pg_current_wal_lsn()::text")))
        a.stop()
        await _sql(primary, "INSERT INTO t SELECT generate_series(1, 1000)")
        await _sql(primary, "CHECKPOINT")
        await _replayed(b, str(await _sql(primary, "SELECT pg_current_wal_lsn()::text")))
        await _sql(b, "CHECKPOINT")  # a restartpoint past where ``a`` stopped
        primary.stop()
        b.stop()
        a.start(bins)
        assert await _sql(a, "SELECT pg_promote(true, 30)")
        await _sql(a, "CHECKPOINT")

        up = bootstrap.Upstream(a.host, a.port)
        why = await timeline.why_not_follow(bins, b.datadir, up, CREDS)
        assert why is not None and "not on the history of timeline 2" in why, why

        # What a plain repoint does: it runs, but cannot follow; it fetched timeline 2's
        # history, so the next restart (a roll-out, a plain rejoin) exits at once.
        auto = b.datadir / "postgresql.auto.conf"
        info = f"primary_conninfo = 'host={a.host} port={a.port} user=postgres'\n"
        auto.write_text(auto.read_text() + info)
        b.start(bins)
        history = b.datadir / "pg_wal" / "00000002.history"
        for _ in range(300):  # bounded: 30 s
            if history.exists():
                break
            await asyncio.sleep(0.1)
        assert history.exists(), "b never fetched timeline 2's history from a"
        b.stop()
        with pytest.raises(RuntimeError, match="postgres exited"):
            b.start(bins, timeout=30)
        log = (b.datadir.parent / "b.log").read_text()
        assert "is not a child of this server's history" in log

        # What the agent does now with that stopped member: it comes back, on a's timeline.
        settings = config.ServerSettings(name="b", host=b.host, port=b.port)
        result = await rejoin.follow(bins, b.datadir, settings, CREDS, up)
        await _sql(a, "INSERT INTO t VALUES (2)")
        end = str(await _sql(a, "SELECT pg_current_wal_lsn()::text"))
        b.start(bins, timeout=30)
        await _replayed(b, end)
        assert await _sql(b, "SELECT received_tli FROM pg_stat_wal_receiver") == 2
        b.stop()
        b.start(bins, timeout=30)  # and it starts again, as any follower
        assert await _sql(b, "SELECT count(*) FROM t WHERE x = 2") == 1
        assert result.method is rejoin.Method.REWIND, result
    finally:
        for s in (a, b):
            s.stop()


async def test_a_follower_behind_the_fork_is_only_repointed(
    pg_server: pgserver.PgServer, pg_tmp: Path
) -> None:
    bins = postgres.Binaries.detect()
    primary = pg_server
    a = pgserver.make_follower(primary, pg_tmp, "a")
    b = pgserver.make_follower(primary, pg_tmp, "b")
    try:
        await _sql(primary, "CREATE TABLE t AS SELECT 1 AS x")
        await _sql(primary, "CHECKPOINT")
        end = str(await _sql(primary, "SELECT pg_current_wal_lsn()::text"))
        await _replayed(a, end)
        await _replayed(b, end)
        await _sql(b, "CHECKPOINT")
        primary.stop()
        b.stop()
        assert await _sql(a, "SELECT pg_promote(true, 30)")
        await _sql(a, "CHECKPOINT")
        up = bootstrap.Upstream(a.host, a.port)
        assert await timeline.why_not_follow(bins, b.datadir, up, CREDS) is None
        # Not rewound nor re-cloned needlessly: repointed, and it follows a's timeline.
        settings = config.ServerSettings(name="b", host=b.host, port=b.port)
        result = await rejoin.follow(bins, b.datadir, settings, CREDS, up)
        assert result.method is rejoin.Method.RESTART, result
        await _sql(a, "INSERT INTO t VALUES (2)")
        end = str(await _sql(a, "SELECT pg_current_wal_lsn()::text"))
        b.start(bins, timeout=30)
        await _replayed(b, end)
        assert await _sql(b, "SELECT received_tli FROM pg_stat_wal_receiver") == 2
    finally:
        for s in (a, b):
            s.stop()
