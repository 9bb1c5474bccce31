"""The pid a driver is given is the server's, as PostgreSQL gives it (issue 17).

BackendKeyData's pid is compared by drivers with ``pg_backend_pid()`` and with the
``pid`` of the notifications a session sends itself; through the proxy it is the pid
of the session's primary backend, and cancelling with that key still works (the
proxy keeps its own secret). Each check runs against PostgreSQL and through the
proxy, with psycopg and asyncpg.
"""

from __future__ import annotations

import asyncio
import threading

import asyncpg
import psycopg
import pytest

from tests.support import pgserver
from tests.support import proxy as proxy_support

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""


def _pids_and_notify(dsn: str) -> tuple[bool, bool, str]:
    with psycopg.connect(dsn, autocommit=True) as c:
        own = c.execute("select pg_backend_pid()").fetchone()
        c.execute("listen fid17")
        c.execute("notify fid17, 'payload'")
        n = next(c.notifies(timeout=5, stop_after=1))
        return c.info.backend_pid == (own or [None])[0], n.pid == c.info.backend_pid, n.payload


def _cancelled(dsn: str) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as c:
        t = threading.Timer(0.5, c.cancel)
        t.start()
        try:
            c.execute("select pg_sleep(10)")
        except psycopg.errors.QueryCanceled as e:
            return e.sqlstate
        finally:
            t.join()
        assert c.execute("select 1").fetchone() == (1,)
    return None


def test_psycopg_backend_pid_notifications_and_cancel(
    pg_server: pgserver.PgServer, proxy: proxy_support.ProxyProc
) -> None:
    for dsn in (pg_server.dsn, proxy.dsn):
        assert _pids_and_notify(dsn) == (True, True, "payload"), dsn
        assert _cancelled(dsn) == "57014", dsn


async def test_asyncpg_server_pid_and_notifications(
    pg_server: pgserver.PgServer, proxy: proxy_support.ProxyProc
) -> None:
    for dsn in (pg_server.dsn, proxy.dsn):
        conn = await asyncpg.connect(dsn)
        try:
            assert conn.get_server_pid() == await conn.fetchval("select pg_backend_pid()")
            got: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

            def heard(
                _c: object,
                pid: int,
                _ch: str,
                payload: str,
                q: asyncio.Queue[tuple[int, str]] = got,
            ) -> None:
                q.put_nowait((pid, payload))

            await conn.add_listener("fid17", heard)
            await conn.execute("notify fid17, 'p'")
            assert await asyncio.wait_for(got.get(), 5) == (conn.get_server_pid(), "p")
            with pytest.raises(TimeoutError):
                await conn.execute("select pg_sleep(10)", timeout=0.5)
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()
