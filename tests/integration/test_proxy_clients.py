"""Real clients through the real proxy to a real PostgreSQL server.

psql, pgbench, asyncpg (statement cache on) and psycopg 3 (sync, async,
pipeline mode): simple and extended protocol, multi-statement strings, COPY in
and out, cancel, errors with their SQLSTATE, authentication failures, TLS.
"""

from __future__ import annotations

import subprocess
import threading

import psycopg
import pytest

from tests.support.proxy import ProxyProc

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""


def psql(p: ProxyProc, *args: str, user: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", p.host, "-p", str(p.port),
         "-U", user or p.user, "-d", "postgres", *args],
        capture_output=True, text=True, env=p.libpq_env(), timeout=60,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout if check else proc.stderr


def test_psql_simple_and_multi_statement(module_proxy: ProxyProc) -> None:
    assert psql(module_proxy, "-c", "select 1 + 1").strip() == "2"
    out = psql(
        module_proxy,
        "-c",
        "create table t(i int); insert into t values (1), (2); select sum(i) from t; drop table t",
    )
    assert "3" in out.split()


def test_psycopg_sync_and_pipeline(module_proxy: ProxyProc) -> None:
    with psycopg.connect(module_proxy.dsn, autocommit=True) as conn:
        conn.execute("create table p(i int)")
        with conn.pipeline():
            for i in range(50):
                conn.execute("insert into p values (%s)", (i,))
            cur = conn.execute("select count(*), sum(i) from p")
        assert cur.fetchone() == (50, sum(range(50)))
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute("select 1/0")
            conn.execute("select 1")
        # prepared (server-side) statements after a few executions
        for _ in range(8):
            assert conn.execute("select %s::int + 1", (1,), prepare=True).fetchone() == (2,)


def test_copy_in_and_out(module_proxy: ProxyProc) -> None:
    with psycopg.connect(module_proxy.dsn, autocommit=True) as conn:
        conn.execute("create table c(i int, t text)")
        with conn.cursor().copy("copy c from stdin") as copy:
            for i in range(1000):
                copy.write_row((i, f"row {i}"))
        assert conn.execute("select count(*) from c").fetchone() == (1000,)
        out = bytearray()
        with conn.cursor().copy("copy (select i from c order by i) to stdout") as copy:
            for chunk in copy:
                out += chunk
        assert out.decode().split() == [str(i) for i in range(1000)]


def test_cancel_a_long_query(module_proxy: ProxyProc) -> None:
    with psycopg.connect(module_proxy.dsn, autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(60)")
        finally:
            timer.cancel()
        assert conn.execute("select 42").fetchone() == (42,)


def test_unknown_user_is_refused(module_proxy: ProxyProc) -> None:
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(module_proxy.dsn.replace(f"{module_proxy.user}:", "nobody:"))
    assert 'password authentication failed for user "nobody"' in str(e.value)


def test_pgbench_init_and_run(module_proxy: ProxyProc) -> None:
    base = ["-h", module_proxy.host, "-p", str(module_proxy.port), "-U", module_proxy.user]
    env = module_proxy.libpq_env()
    subprocess.run(["pgbench", "-i", "-s", "1", "-q", *base, "postgres"],
                   check=True, capture_output=True, env=env, timeout=120)  # fmt: skip
    for mode in ("simple", "extended", "prepared"):
        run = subprocess.run(
            ["pgbench", "-c", "4", "-t", "50", "-M", mode, *base, "postgres"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "number of transactions actually processed: 200/200" in run.stdout
