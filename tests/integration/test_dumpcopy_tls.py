"""A statement follower's copy (``dumpcopy``) verifies the server it dumps, as replication
and ``pg_basebackup`` do: ``sslmode=verify-full`` against the cluster CA, for the
member's name while connecting to its address (libpq's ``hostaddr``, as on Kubernetes).

Before, ``pg_dump`` connected with libpq's default ``prefer``: TLS without checking
whom it talked to, so the dump (all the data, the superuser's password) went to any
server on the member's address. One server, about 3 s.
"""

from __future__ import annotations

import os
import shutil
import ssl
from pathlib import Path

import asyncpg
import pytest

from pgshard_operator import certs
from pgshard_operator.instance import dumpcopy, postgres
from tests.support import pgserver

NAME = "s0.member.test"
"""What the server's certificate names (not its address)."""


def _serve_tls(server: pgserver.PgServer, tls: certs.TlsFiles, bins: postgres.Binaries) -> None:
    server.stop()
    for name in ("server.crt", "server.key"):
        path = server.datadir / name
        shutil.copyfile(tls.directory / name, path)
        path.chmod(0o600)
        if bins.run_as.uid is not None:
            os.chown(path, bins.run_as.uid, bins.run_as.gid or -1)
    server.options = ("ssl=on",)
    server.start(bins)


async def test_the_copy_verifies_the_servers_name_and_ca(pg_tmp: Path) -> None:
    bins = postgres.Binaries.detect()
    ours, _ = certs.ensure(pg_tmp / "tls", "test", [NAME])
    other, _ = certs.ensure(pg_tmp / "other", "other", [NAME])
    server = pgserver.make_server(pg_tmp)
    try:
        _serve_tls(server, ours, bins)
        conn = await asyncpg.connect(server.dsn)
        try:
            await conn.execute("CREATE DATABASE app")
            await conn.execute("CREATE DATABASE copy")
        finally:
            await conn.close()
        conn = await asyncpg.connect(server.dsn.rsplit("/", 1)[0] + "/app")
        try:
            await conn.execute("CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
        finally:
            await conn.close()

        def endpoint(db: str, ca: certs.TlsFiles, name: str | None) -> dumpcopy.Endpoint:
            return dumpcopy.Endpoint(
                server.host, server.port, server.user, db, None, str(ca.ca_cert), name
            )

        # The right CA and name, reached at the address: copied.
        await dumpcopy.copy_database(
            bins, endpoint("app", ours, NAME), endpoint("copy", ours, NAME), timeout=60
        )
        conn = await asyncpg.connect(server.dsn.rsplit("/", 1)[0] + "/copy")
        try:
            assert await conn.fetchval("SELECT v FROM t") == 7
        finally:
            await conn.close()

        # The address is not the name the certificate is for: refused.
        with pytest.raises(ssl.SSLCertVerificationError):
            await dumpcopy.copy_database(
                bins, endpoint("app", ours, None), endpoint("copy", ours, None), timeout=60
            )

        # pg_dump itself verifies: a certificate from another CA is refused.
        with pytest.raises(postgres.PostgresCommandFailed, match="certificate verify failed"):
            await bins.run_async(
                "pg_dump", *endpoint("app", other, NAME).tool_args(), "--schema-only", timeout=60
            )
    finally:
        server.stop()
