"""Create a member's PGDATA: the first primary (initdb) or a follower (snapshot of the primary).

Called by agent.py when PGDATA is empty. Both paths build into ``data.partial``
next to PGDATA and rename it into place only when complete, so a failure (disk
full, primary gone) leaves nothing half-made behind and the next start retries
cleanly.

Follower snapshot: the replication slot is created on the primary *before*
``pg_basebackup`` starts, so the primary keeps every WAL segment from the
snapshot's start until the follower streams from that slot: nothing is lost
between snapshot and streaming.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

from . import config, postgres, sql
from .credentials import Credentials


class BootstrapFailed(Exception):
    """PGDATA could not be created; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Upstream:
    """The primary a follower copies from and streams from."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _partial(datadir: Path) -> Path:
    return datadir.with_name(datadir.name + ".partial")


def _explain(what: str, datadir: Path, err: Exception) -> BootstrapFailed:
    text = str(err)
    if "No space left on device" in text:
        return BootstrapFailed(
            f"disk full while {what} in {datadir.parent}: free some space and start again "
            "(the partial copy was removed; nothing else was touched)"
        )
    return BootstrapFailed(f"{what} failed: {text}")


def replication_conninfo(up: Upstream, creds: Credentials, application_name: str) -> str:
    return config.conninfo(
        up.host, up.port, creds.replication_user, creds.replication_password, application_name
    )


async def init_primary(
    bins: postgres.Binaries,
    datadir: Path,
    settings: config.ServerSettings,
    creds: Credentials,
    log: Path,
) -> None:
    """initdb, our config, then roles: replication user, application user and database."""
    partial = _partial(datadir)
    shutil.rmtree(partial, ignore_errors=True)
    try:
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
        finally:
            proc.terminate()  # SIGTERM: smart shutdown, nothing is connected any more
            await proc.wait()
    except (postgres.PostgresCommandFailed, OSError, RuntimeError, TimeoutError) as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise _explain("initdb of the first primary", datadir, e) from None
    partial.rename(datadir)


async def ensure_slot(up: Upstream, creds: Credentials, slot: str) -> None:
    """Create the physical slot ``slot`` on ``up`` now (reserving WAL) unless it exists."""
    await sql.fetchrow(
        up.host,
        up.port,
        creds,
        "SELECT pg_create_physical_replication_slot($1, true) "
        "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
        slot,
    )


async def clone_follower(
    bins: postgres.Binaries,
    datadir: Path,
    settings: config.ServerSettings,
    creds: Credentials,
    up: Upstream,
) -> None:
    """A snapshot of ``up`` via ``pg_basebackup``, streaming from a slot named after us."""
    slot = settings.name
    partial = _partial(datadir)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        await ensure_slot(up, creds, slot)
        bins.run_as.own(partial)
        await bins.run_async(
            "pg_basebackup",
            "-D",
            str(partial),
            "-h",
            up.host,
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
            timeout=3600,
            password=creds.replication_password,
        )
        config.write_server_files(bins, partial, settings)
        config.make_standby(bins, partial, replication_conninfo(up, creds, settings.name), slot)
    except (postgres.PostgresCommandFailed, OSError) as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise _explain(f"snapshot of primary {up.address}", datadir, e) from None
    except Exception as e:  # asyncpg errors while creating the slot
        shutil.rmtree(partial, ignore_errors=True)
        raise BootstrapFailed(f"cannot prepare a snapshot of primary {up.address}: {e}") from None
    partial.rename(datadir)
