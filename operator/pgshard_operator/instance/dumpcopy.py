"""Copy a primary's application database into a new statement-mode follower.

Called by bootstrap.py for a follower in ``statement`` mode (which cannot start from
a physical copy: it may run another PostgreSQL major version). On the primary, a
REPEATABLE READ transaction exports its snapshot (``pg_export_snapshot()``) and
reads the statement log's position in it; ``pg_dump --snapshot`` dumps exactly that
state while writes go on, and ``pg_restore`` loads it into the follower in one
transaction. The dump carries the log itself, so the restored follower's position
is the snapshot's, and its applier continues with the next entry.
The follower's own ``pg_dump``/``pg_restore`` are used: a newer pg_dump reads an
older server, which is what a follower on a newer major version needs. When members
serve TLS every connection here verifies the server (verify-full), as replication and
``pg_basebackup`` do: the dump carries the superuser's password and all the data.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

from pgshard_proxy.contract import pgtls
from pgshard_proxy.contract import statement_log as slog

from . import postgres
from .credentials import Credentials


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One database on one server, as client tools reach it."""

    host: str
    port: int
    user: str
    database: str
    password: str | None = None
    root_cert: str | None = None
    """The cluster CA when members serve TLS: connections then verify the server."""
    server_name: str | None = None
    """With ``root_cert``: the name verified while connecting to ``host`` (libpq's
    ``hostaddr``, ``Credentials.tls_server_name``); None: ``host`` itself."""

    @classmethod
    def member(cls, creds: Credentials, host: str, port: int) -> Endpoint:
        """The application database of the member at ``host:port``, as the superuser,
        verified as every connection between members is."""
        return cls(
            host,
            port,
            creds.superuser,
            creds.app_database,
            creds.superuser_password,
            creds.root_cert,
            creds.tls_server_name if creds.root_cert else None,
        )

    def connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
        }
        if self.root_cert is not None:
            args["ssl"] = pgtls.verifying_context(self.root_cert, self.server_name)
        return args

    def tool_args(self) -> list[str]:
        """``pg_dump``/``pg_restore`` arguments reaching the database (``--dbname`` a
        libpq conninfo asking for ``sslmode=verify-full`` when ``root_cert`` is set)."""
        host, dbname = self.host, self.database
        if self.root_cert is not None:
            words = {"dbname": self.database, "sslmode": "verify-full"}
            words["sslrootcert"] = self.root_cert
            if self.server_name is not None:
                host, words["hostaddr"] = self.server_name, self.host.strip("[]")
            dbname = " ".join(f"{k}={_quoted(v)}" for k, v in words.items())
        return ["-h", host, "-p", str(self.port), "-U", self.user, "--no-password", "-d", dbname]


def _quoted(value: str) -> str:
    """A libpq conninfo value, quoted."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def copy_database(
    bins: postgres.Binaries,
    source: Endpoint,
    target: Endpoint,
    timeout: float = 3600,
    bookmark: tuple[str, str] | None = None,
) -> int:
    """Dump ``source`` at one snapshot into ``target``; the log position in that snapshot.

    With ``bookmark`` (the follower's name and address), first record it on ``source``
    at its current position, no later than the snapshot's: the primary keeps the
    entries the copy will apply after the dump (logtrim.py)."""
    conn = await asyncpg.connect(**source.connect_args(), timeout=10)
    try:
        if bookmark is not None and await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", f"{slog.SCHEMA}.followers"
        ):
            now = await conn.fetchval(slog.POSITION_SQL)
            await conn.execute(slog.BOOKMARK_SQL, bookmark[0], now, bookmark[1])
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            has_log = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", slog.TABLE)
            position = int(await conn.fetchval(slog.POSITION_SQL)) if has_log else 0
            with tempfile.TemporaryDirectory(prefix="pgshard-dump-") as tmp:
                bins.run_as.own(Path(tmp))
                dump = str(Path(tmp) / "dump")
                # The snapshot can be imported only while this transaction is open.
                await bins.run_async(
                    "pg_dump",
                    *source.tool_args(),
                    "--snapshot",
                    snapshot,
                    "--format=custom",
                    "--file",
                    dump,
                    timeout=timeout,
                    password=source.password,
                )
                await bins.run_async(
                    "pg_restore",
                    *target.tool_args(),
                    "--single-transaction",
                    "--exit-on-error",
                    dump,
                    timeout=timeout,
                    password=target.password,
                )
    finally:
        await conn.close()
    return position
