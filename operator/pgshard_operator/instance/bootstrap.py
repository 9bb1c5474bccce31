"""Create a member's PGDATA: the first primary (initdb) or a follower (snapshot of the primary).

Called by agent.py when PGDATA is empty. Both paths build into ``data.partial``
next to PGDATA and rename it into place only when complete, so a failure (disk
full, primary gone) leaves nothing half-made behind and the next start retries
cleanly.

Follower snapshot: the replication slot is created on the primary *before*
``pg_basebackup`` starts, so the primary keeps every WAL segment from the
snapshot's start until the follower streams from that slot: nothing is lost
between snapshot and streaming. A slot created for a copy that then fails is
dropped again, so a failed attempt does not make the primary keep WAL forever.

Disk space: a snapshot that would not fit (with headroom, see diskspace.py) is
refused before the slot and the copy (``DiskFull``, nothing touched); a disk that
fills anyway during initdb or the copy also raises ``DiskFull``, after the partial
copy was removed. Both messages name the member, the directory and the space.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
from pathlib import Path

import asyncpg

from pgshard_proxy.contract import statement_log as slog

from . import config, diskspace, dumpcopy, postgres, sql
from .credentials import Credentials

log = logging.getLogger(__name__)


class BootstrapFailed(Exception):
    """PGDATA could not be created; the message says why and what to do."""


class DiskFull(BootstrapFailed):
    """Not enough disk space for PGDATA: retrying cannot help until space is freed."""


@dataclasses.dataclass(frozen=True)
class Upstream:
    """The primary a follower copies from and streams from."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclasses.dataclass
class Progress:
    """How far a follower's snapshot copy has come (read by the agent's metrics)."""

    total: int = 0
    """Bytes to copy, from the primary's own figures; 0 until known."""
    directory: Path | None = None
    """Where the copy is being written; its size is what was copied so far."""
    finished: bool = False

    def copied(self) -> int:
        if self.finished:
            return self.total
        if self.directory is None:
            return 0
        size = 0
        for root, _, files in os.walk(self.directory):
            for name in files:
                with contextlib.suppress(OSError):  # files come and go during the copy
                    size += (Path(root) / name).stat().st_size
        return size


def _partial(datadir: Path) -> Path:
    return datadir.with_name(datadir.name + ".partial")


def _explain(name: str, what: str, datadir: Path, err: Exception) -> BootstrapFailed:
    """The error for a failed initdb/copy, called once the partial copy is removed."""
    text = str(err)
    if "No space left on device" in text:
        space = diskspace.measure(datadir.parent)
        return DiskFull(
            f"disk full while {what} for member {name} in {datadir.parent} "
            f"({space.describe()} now); the partial copy was removed, nothing else was "
            "touched: free some space and start again"
        )
    return BootstrapFailed(f"{what} failed: {text}")


def replication_conninfo(up: Upstream, creds: Credentials, application_name: str) -> str:
    return config.conninfo(
        creds.host_word(up.host),
        up.port,
        creds.replication_user,
        creds.replication_password,
        application_name,
        creds.tls_conninfo(up.host),
    )


async def init_primary(
    bins: postgres.Binaries,
    datadir: Path,
    settings: config.ServerSettings,
    creds: Credentials,
    log: Path,
    statement_log: bool = False,
) -> None:
    """initdb, our config, then roles: replication user, application user and database
    (with ``statement_log``, the log's schema in it: statement replication)."""
    partial = _partial(datadir)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        proc = await _initdb_and_start(bins, partial, settings, creds, log)
        try:
            if statement_log:
                await _create_statement_log(settings, creds)
        finally:
            proc.terminate()  # SIGTERM: smart shutdown, nothing is connected any more
            await proc.wait()
    except (postgres.PostgresCommandFailed, OSError, RuntimeError, TimeoutError) as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise _explain(settings.name, "initdb of the first primary", datadir, e) from None
    partial.rename(datadir)


async def _initdb_and_start(
    bins: postgres.Binaries,
    partial: Path,
    settings: config.ServerSettings,
    creds: Credentials,
    log: Path,
) -> asyncio.subprocess.Process:
    """A new server in ``partial``, running, with the cluster's roles and database."""
    await asyncio.to_thread(
        postgres.initdb, bins, partial, creds.superuser, creds.superuser_password
    )
    config.write_server_files(bins, partial, settings)
    proc = await postgres.spawn(bins, partial, log)
    try:
        await sql.wait_ready(settings.host, settings.port, creds, 60, proc)
        conn = await sql.connect(settings.host, settings.port, creds)
        try:
            for fmt, user, password in (
                (
                    "CREATE ROLE %I WITH REPLICATION LOGIN PASSWORD %L",
                    creds.replication_user,
                    creds.replication_password,
                ),
                ("CREATE ROLE %I WITH LOGIN PASSWORD %L", creds.app_user, creds.app_password),
            ):
                ddl = await conn.fetchval(
                    "SELECT format($1::text, $2::text, $3::text)", fmt, user, password
                )
                await conn.execute(ddl)
            ddl = await conn.fetchval(
                "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)",
                creds.app_database,
                creds.app_user,
            )
            await conn.execute(ddl)
        finally:
            await conn.close()
    except BaseException:
        proc.terminate()
        await proc.wait()
        raise
    return proc


async def _create_statement_log(settings: config.ServerSettings, creds: Credentials) -> None:
    """The log's schema in the application database. The application role (what the
    proxy logs in as) appends entries and reads positions, its own and (sync mode)
    the followers'."""
    conn = await sql.connect(settings.host, settings.port, creds, database=creds.app_database)
    try:
        await conn.execute(slog.SCHEMA_SQL)
        grant = await conn.fetchval(
            "SELECT format('GRANT USAGE ON SCHEMA %1$I TO %2$I; "
            "GRANT SELECT, INSERT ON %3$s TO %2$I; GRANT USAGE ON SEQUENCE %4$s TO %2$I; "
            "GRANT SELECT ON %5$s TO %2$I', "
            "$1::text, $2::text, $3::text, $4::text, $5::text)",
            slog.SCHEMA,
            creds.app_user,
            slog.TABLE,
            slog.SEQUENCE,
            f"{slog.SCHEMA}.followers",
        )
        await conn.execute(grant)
    finally:
        await conn.close()


async def copy_follower(
    bins: postgres.Binaries,
    datadir: Path,
    settings: config.ServerSettings,
    creds: Credentials,
    up: Upstream,
    log: Path,
) -> int:
    """A statement-mode follower: a new server holding a snapshot of ``up``'s application
    database (dumpcopy.py); the log position it starts applying after.

    The copy's server listens on a free port of the member's address, not on the
    member's port: that port open means the member serves (the pods' readiness probe,
    which a roll-out waits for; the proxies' position monitors), and a half-restored
    copy does not."""
    partial = _partial(datadir)
    shutil.rmtree(partial, ignore_errors=True)
    what = f"copy (pg_dump) of primary {up.address}"
    try:
        restoring = dataclasses.replace(settings, port=_free_port(settings.host))
        proc = await _initdb_and_start(bins, partial, restoring, creds, log)
        try:
            position = await dumpcopy.copy_database(
                bins,
                dumpcopy.Endpoint.member(creds, up.host, up.port),
                dumpcopy.Endpoint.member(creds, restoring.host, restoring.port),
                bookmark=(settings.name, f"{settings.host}:{settings.port}"),
            )
        finally:
            # Fast shutdown: a smart one would wait for any client still connected.
            proc.send_signal(signal.SIGINT)
            await proc.wait()
        config.write_server_files(bins, partial, settings)  # the member's own port
        config.make_statement_follower(bins, partial, up.address)
    except (postgres.PostgresCommandFailed, OSError, RuntimeError, TimeoutError) as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise _explain(settings.name, what, datadir, e) from None
    except asyncpg.PostgresError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise BootstrapFailed(f"{what} failed: {e}") from None
    partial.rename(datadir)
    return position


def _free_port(host: str) -> int:
    """A TCP port of ``host`` nobody listens on now (the kernel's pick). Another process
    may take it before the server binds it: the copy then fails, and is retried as any
    failed copy is."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


async def ensure_slot(up: Upstream, creds: Credentials, slot: str) -> bool:
    """Create the physical slot ``slot`` on ``up`` now (reserving WAL) unless it exists;
    whether it was created."""
    row = await sql.fetchrow(
        up.host,
        up.port,
        creds,
        "SELECT pg_create_physical_replication_slot($1, true) "
        "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
        slot,
    )
    return row is not None


async def drop_slot(up: Upstream, creds: Credentials, slot: str, timeout: float = 10.0) -> None:
    """Drop ``slot`` on ``up`` once no sender uses it (pg_basebackup's may still be leaving).

    Best effort: a slot left behind is logged, the caller's error is the one that matters.
    """
    try:
        conn = await sql.connect(up.host, up.port, creds)
        try:
            await sql.drop_slot_when_idle(conn, slot, timeout)
        finally:
            await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        log.warning("replication slot %s on %s left in place: %s", slot, up.address, e)


async def snapshot_size(up: Upstream, creds: Credentials) -> diskspace.SnapshotSize:
    """How much a snapshot of ``up`` takes, from the primary's own figures."""
    row = await sql.fetchrow(
        up.host,
        up.port,
        creds,
        "SELECT (SELECT sum(pg_database_size(oid)) FROM pg_database)::bigint AS data, "
        "pg_size_bytes(current_setting('wal_segment_size')) AS wal_segment",
    )
    return diskspace.SnapshotSize(data=int(row["data"]), wal_segment=int(row["wal_segment"]))


async def clone_follower(
    bins: postgres.Binaries,
    datadir: Path,
    settings: config.ServerSettings,
    creds: Credentials,
    up: Upstream,
    progress: Progress | None = None,
) -> None:
    """A snapshot of ``up`` via ``pg_basebackup``, streaming from a slot named after us;
    ``progress`` (when given) follows the copy."""
    slot = settings.name
    partial = _partial(datadir)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        need = await snapshot_size(up, creds)
    except Exception as e:  # asyncpg/OS errors reaching the primary
        raise BootstrapFailed(f"cannot prepare a snapshot of primary {up.address}: {e}") from None
    if progress is not None:
        progress.total, progress.directory = need.copy, partial
    space = diskspace.measure(datadir.parent)
    if missing := diskspace.shortfall(need, space):
        raise DiskFull(
            f"not enough disk space for member {settings.name} in {datadir.parent}: a snapshot "
            f"of primary {up.address} needs about {diskspace.mb(need.copy)} plus "
            f"{diskspace.mb(need.headroom)} left free, there are {space.describe()} "
            f"({diskspace.mb(missing)} short); free some space or give the data directory "
            "a larger disk, then start again (nothing was copied)"
        )
    created = False
    try:
        created = await ensure_slot(up, creds, slot)
        bins.run_as.own(partial)
        await bins.run_async(
            "pg_basebackup",
            "-D",
            str(partial),
            "-h",
            creds.host_word(up.host),
            "-p",
            str(up.port),
            "-U",
            creds.replication_user,
            "-S",
            slot,
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-password",
            *(("-d", tls) if (tls := creds.tls_conninfo(up.host)) else ()),
            timeout=3600,
            password=creds.replication_password,
        )
        config.write_server_files(bins, partial, settings)
        config.make_standby(bins, partial, replication_conninfo(up, creds, settings.name), slot)
    except (postgres.PostgresCommandFailed, OSError) as e:
        shutil.rmtree(partial, ignore_errors=True)
        if created:
            await drop_slot(up, creds, slot)
        raise _explain(settings.name, f"snapshot of primary {up.address}", datadir, e) from None
    except Exception as e:  # asyncpg errors while creating the slot
        shutil.rmtree(partial, ignore_errors=True)
        if created:
            await drop_slot(up, creds, slot)
        raise BootstrapFailed(f"cannot prepare a snapshot of primary {up.address}: {e}") from None
    partial.rename(datadir)
    if progress is not None:
        progress.finished = True
