"""Role changes of a member in ``statement`` replication (called by agent.py).

A statement-mode follower is an ordinary server, read-only by default, whose
applier pulls from the primary named by the ``pgshard.upstream`` setting (what
``primary_conninfo`` is in wal mode; the shard manager reads it to see whom a
follower follows). Promotion makes it writable and continues the log's sequence
after the last entry it applied, and records that point; an old primary rejoins by
a fresh copy (its entries past the new primary's point are counted, then discarded
with its data).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import shutil
from pathlib import Path

import asyncpg

from pgshard_proxy.contract import statement_log as slog

from . import bootstrap, config, postgres, rejoin, sql
from .credentials import Credentials

log = logging.getLogger(__name__)


def pin_upstream(bins: postgres.Binaries, datadir: Path, up: bootstrap.Upstream) -> None:
    """While PG is stopped: record whom this follower applies the log of."""
    config.set_auto_conf(bins, datadir, {slog.UPSTREAM_SETTING: up.address})


async def set_upstream(host: str, port: int, creds: Credentials, up: bootstrap.Upstream) -> None:
    conn = await sql.connect(host, port, creds)
    try:
        await conn.execute(f"ALTER SYSTEM SET {slog.UPSTREAM_SETTING} = {config.quote(up.address)}")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def make_writer(host: str, port: int, creds: Credentials, datadir: Path) -> int:
    """A follower becomes its shard's log writer: writable, the sequence continued; its
    position. The caller has stopped the applier and holds the lease."""
    conn = await sql.connect(host, port, creds, database=creds.app_database)
    try:
        # The reload reaches open sessions only at their next command: set it here too.
        await conn.execute("SET default_transaction_read_only = off")
        await conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        await conn.execute(f"ALTER SYSTEM RESET {slog.UPSTREAM_SETTING}")
        await conn.execute("SELECT pg_reload_conf()")
        await conn.execute(slog.CONTINUE_SQL)
        position = int(await conn.fetchval(slog.POSITION_SQL))
        await conn.execute(slog.SCHEMA_SQL)  # a log copied before ``promoted`` existed
        await conn.execute(slog.PROMOTED_SQL, position)
    finally:
        await conn.close()
    (datadir / config.STATEMENT_FOLLOWER).unlink(missing_ok=True)
    return position


@dataclasses.dataclass
class WritesStopped:
    """The shard's write lock, held by an open session of this primary until
    :meth:`release`, which its caller calls once the server has stopped: released any
    earlier (this session closed), a writer waiting for the lock would commit an entry
    past ``position`` that no follower may ever get (CI saw acknowledged inserts lost
    after a primary's pod was deleted, and promoted followers missing them)."""

    position: int
    """The last entry's ``seq``: what the new primary must have applied."""
    conn: asyncpg.Connection

    def release(self) -> None:
        self.conn.terminate()


async def stop_writes(host: str, port: int, creds: Credentials) -> WritesStopped:
    """Before this primary stops (a switchover, a clean shutdown): take the shard's
    write lock for good (no logged transaction can commit after it, until released)
    and wait for a follower to apply the last entry. A writer holding the lock longer
    than a few seconds has its session terminated (its transaction never committed)."""
    conn = await sql.connect(host, port, creds, database=creds.app_database)
    try:
        return await _stop_writes(conn)
    except BaseException:
        conn.terminate()
        raise


async def _stop_writes(conn: asyncpg.Connection) -> WritesStopped:
    log.info("stopping writes: taking the shard's write lock")
    await conn.execute("SET lock_timeout = '3s'")
    try:
        await conn.execute(f"SELECT pg_advisory_lock({slog.LOCK_KEY})")
    except asyncpg.LockNotAvailableError:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        await conn.execute(f"SELECT pg_advisory_lock({slog.LOCK_KEY})")
    position = int(await conn.fetchval(slog.POSITION_SQL))
    name, applied = await _handed_over(conn, position)
    if applied < position:
        log.warning(
            "no follower applied the last entry %d within %gs (the furthest, %s, is at %d): "
            "a failover now loses what they lack",
            position,
            HANDOVER_SECONDS,
            name,
            applied,
        )
    else:
        log.info("writes stopped at entry %d, which %s applied", position, name)
    return WritesStopped(position, conn)


HANDOVER_SECONDS = 5.0
"""How long a stopping primary waits for a follower to pull its last entries."""


async def _handed_over(conn: asyncpg.Connection, position: int) -> tuple[str | None, int]:
    """Until a follower's applier reports ``position`` applied (``pgshard.followers``),
    at most ``HANDOVER_SECONDS``. Appliers pull over ordinary connections, which the
    server's stop ends: without this wait a switchover target a few entries behind
    could never get them, and the switchover failed (the new primary must hold every
    entry). A follower that does not come in time is left behind, as before. Returns
    the furthest follower and its position."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANDOVER_SECONDS
    query = f"SELECT name, seq FROM {slog.SCHEMA}.followers ORDER BY seq DESC, name LIMIT 1"
    furthest: tuple[str | None, int] = (None, 0)
    try:
        while loop.time() < deadline:
            row = await conn.fetchrow(query)
            furthest = (row["name"], int(row["seq"])) if row is not None else (None, 0)
            if furthest[1] >= position:
                break
            await asyncio.sleep(0.02)
    except asyncpg.UndefinedTableError:
        return None, position  # no follower ever applied here
    return furthest


async def recopy(
    bins: postgres.Binaries,
    datadir: Path,
    settings: config.ServerSettings,
    creds: Credentials,
    up: bootstrap.Upstream,
    pg_log: Path,
) -> rejoin.RejoinResult:
    """Replace this (stopped) member's data by a fresh copy of ``up``'s, as a follower;
    an old primary's entries that ``up`` never applied are counted first."""
    discarded = None
    if config.is_initialised(datadir) and not config.is_statement_follower(datadir):
        discarded = await _discarded(bins, datadir, creds, up)
    await _remove(datadir)
    await bootstrap.copy_follower(bins, datadir, settings, creds, up, pg_log)
    return rejoin.RejoinResult(rejoin.Method.RECLONE, None, 0, discarded)


async def _discarded(
    bins: postgres.Binaries, datadir: Path, creds: Credentials, up: bootstrap.Upstream
) -> int | None:
    """The entries of this stopped old primary's log past ``up``'s promotion point (read
    in single-user mode, which also recovers a crashed PGDATA); None if unknown."""
    try:
        conn = await sql.connect(up.host, up.port, creds, database=creds.app_database)
        try:
            after = await conn.fetchval(slog.FORK_SQL)
        finally:
            await conn.close()
        if after is None:
            return None
        out = await asyncio.to_thread(
            bins.run,
            "postgres",
            "--single",
            "-D",
            str(datadir),
            creds.app_database,
            input=f"SELECT count(*) AS discarded FROM {slog.TABLE} WHERE seq > {int(after)}\n",
            timeout=300,
        )
    except (OSError, asyncpg.PostgresError, postgres.PostgresCommandFailed) as e:
        log.warning("cannot count the log entries discarded with the old primary: %s", e)
        return None
    found = _COUNT.search(out)
    return int(found.group(1)) if found else None


_COUNT = re.compile(r'discarded = "(\d+)"')


async def _remove(datadir: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, datadir, True)
