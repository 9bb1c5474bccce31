"""``pgshard rewrite --catalog-dsn`` against a real server: defaults, keys, volatility."""

from __future__ import annotations

import subprocess

import psycopg

from tests.support import procs
from tests.support.pgserver import PgServer


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        procs.pgshard_argv("rewrite", *args),
        env=procs.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rewrite_with_the_catalog_of_a_live_server(pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigserial PRIMARY KEY, item text, "
            "at timestamptz DEFAULT now(), qty int DEFAULT 1);"
            "CREATE FUNCTION bump(x int) RETURNS int LANGUAGE sql VOLATILE AS 'SELECT x + 1'"
        )
    ts = ("--timestamp", "2026-11-29T10:00:00+00:00", "--catalog-dsn", pg_server.dsn)

    ok = _cli(*ts, "INSERT INTO orders (item) VALUES ('pen')")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == [
        "INSERT INTO orders (item, id, at) VALUES "
        "('pen', :c1::bigint, '2026-11-29 10:00:00.000000+00:00'::timestamptz)",
        "-- :c1 = nextval('orders_id_seq'::regclass)  (captured on the primary, bigint)",
    ]

    refused = _cli(*ts, "UPDATE orders SET qty = bump(qty)")
    assert refused.returncode == 1
    assert "VOLATILE function bump()" in refused.stdout

    unordered = _cli(
        *ts, "DELETE FROM orders WHERE id IN (SELECT id FROM orders ORDER BY qty LIMIT 1)"
    )
    assert unordered.returncode == 1
    assert "without a unique key among (qty)" in unordered.stdout


def test_rewrite_reports_an_unreachable_catalog(pg_server: PgServer) -> None:
    dsn = pg_server.dsn.replace("/postgres", "/no_such_database")
    out = _cli("--catalog-dsn", dsn, "SELECT 1")
    assert out.returncode == 2
    assert "cannot read the catalog" in out.stderr
