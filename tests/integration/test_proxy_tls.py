"""TLS between clients and the proxy: offered when a certificate is configured, else 'N'."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.support import pgserver
from tests.support import proxy as proxy_support


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
