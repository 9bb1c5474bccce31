"""Transaction pooling (``--pool-mode transaction``): many clients on few servers.

A server goes back to the pool at each idle ReadyForQuery and idle servers are lent
oldest first, so one client's consecutive transactions land on different servers:
every test below crosses servers that other sessions used. Real PostgreSQL, asyncpg
and psycopg through the real proxy (22-29 s in all at a load average of 10, 8 of them
the module's PostgreSQL and proxy starting; ``PGSHARD_TXPOOL_CLIENTS`` sizes the crowd,
default 200).

Transaction pooling is the proxy's default, so the whole suite runs in it; the modules
marked ``pool_modes`` (the proxy's and the compatibility tests) run once more in session
pooling (``scripts/test``, ``PGSHARD_PROXY_POOL_MODE=session``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tests.support import pgserver, procs
from tests.support import proxy as proxy_support

POOL = 10
CLIENTS = int(os.environ.get("PGSHARD_TXPOOL_CLIENTS", "200"))


def _start(server: pgserver.PgServer, workdir: Path, *args: str) -> proxy_support.ProxyProc:
    topo = proxy_support.single_primary_topology("pg-0", server.host, server.port, server.dsn)
    return proxy_support.start_proxy(workdir, topo, "--pool-mode", "transaction", *args)


@pytest.fixture(scope="module")
def tx_proxy(pg_module_server: pgserver.PgServer) -> Iterator[proxy_support.ProxyProc]:
    with tempfile.TemporaryDirectory(prefix="pgshard-test-") as d:
        p = _start(pg_module_server, Path(d), "--pool-size", str(POOL))
        try:
            yield p
        finally:
            p.stop()


def _server_pids(server: pgserver.PgServer) -> set[int]:
    """The proxy's backends on the server: its pool's and its position monitor's one."""
    with psycopg.connect(server.dsn, autocommit=True) as c:
        rows = c.execute(
            "select pid from pg_stat_activity where backend_type = 'client backend' "
            "and pid <> pg_backend_pid() and application_name not like 'pgshard-proxy%'"
        ).fetchall()
    return {r[0] for r in rows}


async def _asyncpg_client(dsn: str, i: int, logins: asyncio.Semaphore) -> list[int]:
    async with logins:
        conn = await asyncpg.connect(dsn)
    try:
        stmt = await conn.prepare("select $1::int * 2")  # a named statement, kept
        out = []
        for r in range(4):
            out.append(await stmt.fetchval(i + r))
            out.append(await conn.fetchval("select $1::int + 1", i))  # asyncpg's cache
            async with conn.transaction():
                out.append(await stmt.fetchval(r))
        return out
    finally:
        await conn.close()


async def _psycopg_client(dsn: str, i: int, logins: asyncio.Semaphore) -> list[int]:
    async with logins:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with conn:
        out = []
        for r in range(4):
            cur = await conn.execute("select %s::int * 2", (i + r,), prepare=True)
            out.append((await cur.fetchone() or (0,))[0])
            async with conn.transaction():
                cur = await conn.execute("select %s::int + 1", (i,), prepare=True)
                out.append((await cur.fetchone() or (0,))[0])
        return out


def test_many_clients_with_named_prepared_statements_on_a_small_pool(
    tx_proxy: proxy_support.ProxyProc, pg_module_server: pgserver.PgServer
) -> None:
    async def main() -> None:
        half = CLIENTS // 2
        logins = asyncio.Semaphore(50)  # the proxy's max_pending_logins is 100
        results = await asyncio.gather(
            *(_asyncpg_client(tx_proxy.dsn, i, logins) for i in range(half)),
            *(_psycopg_client(tx_proxy.dsn, i, logins) for i in range(half)),
        )
        for i, got in enumerate(results[:half]):
            want = []
            for r in range(4):
                want += [2 * (i + r), i + 1, 2 * r]
            assert got == want, f"asyncpg client {i}"
        for i, got in enumerate(results[half:]):
            want = []
            for r in range(4):
                want += [2 * (i + r), i + 1]
            assert got == want, f"psycopg client {i}"

    asyncio.run(main())
    assert 1 < len(_server_pids(pg_module_server)) <= POOL + 1  # + the position monitor


def test_settings_follow_the_session_and_never_leak(tx_proxy: proxy_support.ProxyProc) -> None:
    """Each session's statement_timeout and search_path, on whatever server it gets; a
    session that set nothing sees the defaults (fails if a server keeps another's SETs)."""
    n = 6
    conns = [psycopg.connect(tx_proxy.dsn, autocommit=True) for _ in range(n)]
    plain = psycopg.connect(tx_proxy.dsn, autocommit=True)
    try:
        for i, c in enumerate(conns):
            c.execute(f"set statement_timeout = '{10 + i}ms'")
            c.execute(f"set search_path = s{i}, public")
        default_path = plain.execute("show search_path").fetchone()
        for _ in range(2 * POOL):
            for i, c in enumerate(conns):
                got = c.execute(
                    "select current_setting('statement_timeout'), current_setting('search_path')"
                ).fetchone()
                assert got == (f"{10 + i}ms", f"s{i}, public")
                assert plain.execute("show statement_timeout").fetchone() == ("0",)
                assert plain.execute("show search_path").fetchone() == default_path
            # A statement slower than the others' timeouts: canceled (57014) if leaked.
            plain.execute("select pg_sleep(0.03)")
        conns[0].execute("reset statement_timeout")
        conns[1].execute("discard all")
        for _ in range(POOL):
            assert conns[0].execute("show statement_timeout").fetchone() == ("0",)
            assert conns[0].execute("show search_path").fetchone() == ("s0, public",)
            assert conns[1].execute("show statement_timeout").fetchone() == ("0",)
            assert conns[1].execute("show search_path").fetchone() == default_path
            # psycopg forgets its statements at DISCARD ALL and prepares them again
            assert conns[1].execute("select %s::int", (5,), prepare=True).fetchone() == (5,)
            assert conns[2].execute("show statement_timeout").fetchone() == ("12ms",)
    finally:
        for c in (*conns, plain):
            c.close()


def test_a_temporary_table_pins_its_server(tx_proxy: proxy_support.ProxyProc) -> None:
    with psycopg.connect(tx_proxy.dsn, autocommit=True) as t:
        t.execute("create temp table scratch (x int)")
        t.execute("insert into scratch values (1)")
        pid = t.execute("select pg_backend_pid()").fetchone()
        with psycopg.connect(tx_proxy.dsn, autocommit=True) as other:
            for _ in range(2 * POOL):
                assert t.execute("select count(*), pg_backend_pid() from scratch").fetchone() == (
                    1,
                    pid[0] if pid else None,
                )
                got = other.execute("select to_regclass('pg_temp.scratch')").fetchone()
                assert got == (None,)
    with psycopg.connect(tx_proxy.dsn, autocommit=True) as later:
        for _ in range(2 * POOL):  # the pinned server was reset before anyone else got it
            assert later.execute("select to_regclass('pg_temp.scratch')").fetchone() == (None,)


_DOOMED = """
import sys, time, psycopg
dsn = sys.argv[1]
idle = psycopg.connect(dsn)
idle.execute("insert into doomed values (1)")
busy = psycopg.connect(dsn)
busy.execute("insert into doomed values (2)")
pids = [c.execute("select pg_backend_pid()").fetchone()[0] for c in (idle, busy)]
print(*pids, flush=True)
busy.execute("select pg_sleep(60)")
"""


def test_a_client_killed_mid_transaction_leaves_no_dirty_server(
    tx_proxy: proxy_support.ProxyProc, pg_module_server: pgserver.PgServer
) -> None:
    with psycopg.connect(tx_proxy.dsn, autocommit=True) as c:
        c.execute("drop table if exists doomed")
        c.execute("create table doomed (x int)")
    with subprocess.Popen(
        [sys.executable, "-c", _DOOMED, tx_proxy.dsn], stdout=subprocess.PIPE, env=procs.env()
    ) as child:
        try:
            assert child.stdout is not None
            dirty = {int(p) for p in child.stdout.readline().split()}
            assert len(dirty) == 2
            time.sleep(0.2)  # lets the pg_sleep start (not a timing assertion)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
    deadline = time.monotonic() + 15
    while dirty & _server_pids(pg_module_server):
        assert time.monotonic() < deadline, "the killed client's servers are still open"
        time.sleep(0.1)
    with psycopg.connect(tx_proxy.dsn, autocommit=True) as c:
        for _ in range(2 * POOL):
            pid, xid, status = c.execute(
                "select pg_backend_pid(), txid_current_if_assigned(), (select count(*) from doomed)"
            ).fetchone() or (0, 0, 0)
            assert pid not in dirty and xid is None and status == 0


def test_a_full_pool_fails_waiters_with_53300_after_the_timeout(
    pg_module_server: pgserver.PgServer, pg_tmp: Path
) -> None:
    p = _start(pg_module_server, pg_tmp, "--pool-size", "1", "--pool-timeout-ms", "300")
    try:
        with (
            psycopg.connect(p.dsn, autocommit=True) as holder,
            psycopg.connect(p.dsn, autocommit=True) as waiter,
        ):
            holder.execute("begin")
            holder.execute("select 1")  # the pool's only server, until COMMIT
            with pytest.raises(psycopg.errors.TooManyConnections, match="none became free"):
                waiter.execute("select 2")
            with pytest.raises(psycopg.OperationalError, match="are in use"):
                psycopg.connect(p.dsn, connect_timeout=10)
            holder.execute("commit")
            assert waiter.execute("select 2").fetchone() == (2,)  # the session carries on
    finally:
        p.stop()
