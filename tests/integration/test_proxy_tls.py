"""TLS on both sides of the proxy.

Clients → proxy: offered when a certificate is configured (else 'N'), verifiable with
the cluster CA (``sslmode=verify-full``), and with ``--tls-required`` clear text is
refused. Proxy → members: as each member's DSN says (``sslmode``, ``sslrootcert``),
verified against the CA, so a member presenting another CA's certificate is refused.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgshard_operator import certs
from pgshard_operator.instance import postgres
from tests.support import net, pgserver
from tests.support import proxy as proxy_support

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""


def test_tls_when_configured_and_refused_otherwise(
    pg_server: pgserver.PgServer, pg_tmp: Path
) -> None:
    cert, key = pg_tmp / "proxy.crt", pg_tmp / "proxy.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    topo = proxy_support.single_primary_topology(
        "pg-0", pg_server.host, pg_server.port, pg_server.dsn
    )
    with_tls = proxy_support.start_proxy(
        pg_tmp, topo, "--tls-cert", str(cert), "--tls-key", str(key)
    )
    without = proxy_support.start_proxy(pg_tmp, topo)
    try:
        with psycopg.connect(with_tls.dsn + "?sslmode=require") as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("select 7").fetchone() == (7,)
        with psycopg.connect(with_tls.dsn + "?sslmode=disable") as conn:
            assert not conn.pgconn.ssl_in_use
        with psycopg.connect(without.dsn + "?sslmode=prefer") as conn:
            assert not conn.pgconn.ssl_in_use
        with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
            psycopg.connect(without.dsn + "?sslmode=require")
    finally:
        with_tls.stop()
        without.stop()


async def test_verify_full_clients_and_plaintext_refused_when_required(
    pg_server: pgserver.PgServer, pg_tmp: Path
) -> None:
    host = net.random_loopback()
    files, _ = certs.ensure(pg_tmp / "tls", "test", [host, "localhost"])
    other, _ = certs.ensure(pg_tmp / "other-ca", "other", [host])
    topo = proxy_support.single_primary_topology(
        "pg-0", pg_server.host, pg_server.port, pg_server.dsn
    )
    proxy = proxy_support.start_proxy(
        pg_tmp, topo, "--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key),
        "--tls-required", host=host,
    )  # fmt: skip
    verified = f"{proxy.dsn}?sslmode=verify-full&sslrootcert={files.ca_cert}"
    try:
        with psycopg.connect(verified) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("select 1").fetchone() == (1,)
        conn2 = await asyncpg.connect(verified)
        try:
            assert await conn2.fetchval("select 2") == 2
            assert conn2.get_server_pid()  # a real session through TLS
        finally:
            await conn2.close()
        ctx = ssl.create_default_context(cafile=str(files.ca_cert))
        conn3 = await asyncpg.connect(proxy.dsn, ssl=ctx)
        await conn3.close()

        # Clear text: refused with what to do, by both clients.
        with pytest.raises(psycopg.OperationalError, match="accepts only TLS connections"):
            psycopg.connect(proxy.dsn + "?sslmode=disable")
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="sslmode"):
            await asyncpg.connect(proxy.dsn, ssl=False)
        # verify-full really verifies: another CA does not vouch for the proxy.
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            psycopg.connect(f"{proxy.dsn}?sslmode=verify-full&sslrootcert={other.ca_cert}")
        assert proxy.proc.poll() is None
    finally:
        proxy.stop()


def _serve_tls_only(server: pgserver.PgServer, files: certs.TlsFiles) -> None:
    """Restart ``server`` with ssl=on and a pg_hba.conf that accepts TLS connections only."""
    bins = postgres.Binaries.detect()
    server.stop()
    for src, name in ((files.server_cert, "server.crt"), (files.server_key, "server.key")):
        dst = server.datadir / name
        shutil.copyfile(src, dst)
        dst.chmod(0o600)
        bins.run_as.chown(dst)
    with open(server.datadir / "postgresql.auto.conf", "a") as f:
        f.write("ssl = on\n")
    (server.datadir / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.0/8 trust\n"
    )
    server.start(bins)


async def test_proxy_to_member_tls_as_the_dsn_says(
    pg_server: pgserver.PgServer, pg_tmp: Path
) -> None:
    files, _ = certs.ensure(pg_tmp / "tls", "test", [pg_server.host])
    other, _ = certs.ensure(pg_tmp / "other-ca", "other", [pg_server.host])
    _serve_tls_only(pg_server, files)

    def proxy_for(name: str, query: str) -> proxy_support.ProxyProc:
        topo = proxy_support.single_primary_topology(
            "pg-0", pg_server.host, pg_server.port, f"{pg_server.dsn}?{query}"
        )
        (pg_tmp / name).mkdir()
        return proxy_support.start_proxy(pg_tmp / name, topo)

    good = proxy_for("good", f"sslmode=verify-full&sslrootcert={files.ca_cert}")
    default = proxy_for("default", "")  # libpq's default, prefer: TLS when offered
    wrong_ca = proxy_for("wrong", f"sslmode=verify-full&sslrootcert={other.ca_cert}")
    try:
        for proxy in (good, default):
            conn = await asyncpg.connect(proxy.dsn, ssl=False)
            try:
                row = await conn.fetchrow(
                    "select ssl, version from pg_stat_ssl where pid = pg_backend_pid()"
                )
                assert row["ssl"] is True and row["version"].startswith("TLS")
            finally:
                await conn.close()
        # The login needs the primary: it fails naming the member and why.
        with pytest.raises(asyncpg.PostgresError, match=r"pg-0.*certificate verify failed"):
            await asyncpg.connect(wrong_ca.dsn, ssl=False)
        assert wrong_ca.proc.poll() is None
    finally:
        for proxy in (good, default, wrong_ca):
            proxy.stop()
