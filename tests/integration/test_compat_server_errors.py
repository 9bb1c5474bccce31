"""A server's own error reaches the client when it is why the session ends (issue 17).

Each scenario runs against a plain PostgreSQL and through the proxy in front of it,
with psycopg and asyncpg; the client must see the same outcome (exception class and
SQLSTATE): ``idle_session_timeout`` -> 57P05, ``pg_terminate_backend()`` of an idle,
an idle-in-transaction or a busy session -> 57P01, a fast shutdown while a
transaction is open -> 57P01. 08007 ("outcome unknown") stays for a server that
vanishes without a word (tests/integration/test_proxy_dead_primary.py).

One difference is by design (README "Proxy"): a fast shutdown of the server an
*idle* session last used is, to the proxy, a restart or a switchover it hides; the
session goes on once a primary answers again, where PostgreSQL would end it. In
transaction pooling (the default) an idle session holds no server at all: a FATAL that
ends an idle server (``pg_terminate_backend()``, ``idle_session_timeout``) ends that
pooled connection, never the session, which goes on with another server (README "Pool
modes"); the tests expect that there, and check every time that new sessions are still
served (the dead connection is never lent again).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgshard_operator.instance import postgres
from tests.support import pgserver
from tests.support import proxy as proxy_support

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""

Outcome = tuple[str, str | None]
"""What the client saw: the exception's class name and SQLSTATE, or ("ok", None)."""


@pytest.fixture
def both(
    pg_server: pgserver.PgServer, proxy: proxy_support.ProxyProc
) -> Iterator[tuple[pgserver.PgServer, proxy_support.ProxyProc]]:
    yield pg_server, proxy


def _outcome(run: Callable[[], object]) -> Outcome:
    try:
        run()
    except psycopg.Error as e:
        return type(e).__name__, e.sqlstate
    return "ok", None


def _ended(admin: str, pid: int, timeout: float = 30.0) -> None:
    """Return once the server process ``pid`` has exited (its error is on the wire by
    then; the proxy relays it as it arrives)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(admin, autocommit=True) as a:
        while a.execute("select 1 from pg_stat_activity where pid = %s", (pid,)).fetchone():
            if time.monotonic() > deadline:
                raise TimeoutError(f"server process {pid} still runs after {timeout:.0f}s")
            time.sleep(0.05)
    time.sleep(0.1)  # the proxy's event loop reads the FATAL it was sent before the exit


def _terminate(admin: str, pid: int, after: float = 0.0) -> None:
    time.sleep(after)
    with psycopg.connect(admin, autocommit=True) as a:
        a.execute("select pg_terminate_backend(%s)", (pid,))


def _backend_pid(c: psycopg.Connection[tuple[object, ...]]) -> int:
    """The server process ``c`` talks to (through the proxy: the server's own pid)."""
    return int(c.execute("select pg_backend_pid()").fetchone()[0])  # type: ignore[index,arg-type]


def _idle_timeout(dsn: str, admin: str) -> Outcome:
    with psycopg.connect(dsn, autocommit=True) as c:
        pid = _backend_pid(c)
        c.execute("set idle_session_timeout = '300ms'")
        _ended(admin, pid)
        return _outcome(lambda: c.execute("select 1"))


def _terminated_idle(dsn: str, admin: str) -> Outcome:
    with psycopg.connect(dsn, autocommit=True) as c:
        pid = _backend_pid(c)
        _terminate(admin, pid)
        _ended(admin, pid)
        return _outcome(lambda: c.execute("select 1"))


def _terminated_in_transaction(dsn: str, admin: str) -> Outcome:
    with psycopg.connect(dsn) as c:
        pid = _backend_pid(c)
        _terminate(admin, pid)
        _ended(admin, pid)
        return _outcome(lambda: c.execute("select 1"))


def _terminated_busy(dsn: str, admin: str) -> Outcome:
    with psycopg.connect(dsn, autocommit=True) as c:
        pid = c.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        killer = threading.Thread(target=_terminate, args=(admin, pid, 0.5))
        killer.start()
        try:
            return _outcome(lambda: c.execute("select pg_sleep(10)"))
        finally:
            killer.join()


IDLE = frozenset({"idle_session_timeout", "terminate idle"})
"""The scenarios where the session holds no server in transaction pooling."""


def _through_proxy(name: str, direct: Outcome) -> Outcome:
    """What a client of the proxy sees where PostgreSQL's sees ``direct``."""
    if name in IDLE and proxy_support.pool_mode() == "transaction":
        return "ok", None
    return direct


SCENARIOS: dict[str, tuple[Callable[[str, str], Outcome], Outcome]] = {
    "idle_session_timeout": (_idle_timeout, ("IdleSessionTimeout", "57P05")),
    "terminate idle": (_terminated_idle, ("AdminShutdown", "57P01")),
    "terminate in transaction": (_terminated_in_transaction, ("AdminShutdown", "57P01")),
    "terminate busy": (_terminated_busy, ("AdminShutdown", "57P01")),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_psycopg_sees_the_server_error(
    both: tuple[pgserver.PgServer, proxy_support.ProxyProc], name: str
) -> None:
    server, proxy = both
    scenario, expected = SCENARIOS[name]
    assert scenario(server.dsn, server.dsn) == expected  # PostgreSQL itself
    assert scenario(proxy.dsn, server.dsn) == _through_proxy(name, expected)
    for _ in range(3):  # the proxy serves new sessions as before
        with psycopg.connect(proxy.dsn) as c:
            assert c.execute("select 1").fetchone() == (1,)


async def _asyncpg_outcome(dsn: str, admin: str, name: str) -> Outcome:
    conn = await asyncpg.connect(dsn)
    try:
        pid = await conn.fetchval("select pg_backend_pid()")
        if name == "idle_session_timeout":
            await conn.execute("set idle_session_timeout = '300ms'")
        else:
            await asyncio.to_thread(_terminate, admin, pid)
        await asyncio.to_thread(_ended, admin, pid)
        await conn.fetchval("select 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        return type(e).__name__, getattr(e, "sqlstate", None)
    finally:
        conn.terminate()
    return "ok", None


@pytest.mark.parametrize("name", ["idle_session_timeout", "terminate idle"])
async def test_asyncpg_sees_what_postgresql_sends(
    both: tuple[pgserver.PgServer, proxy_support.ProxyProc], name: str
) -> None:
    server, proxy = both
    direct = await _asyncpg_outcome(server.dsn, server.dsn, name)
    assert direct != ("ok", None)
    assert await _asyncpg_outcome(proxy.dsn, server.dsn, name) == _through_proxy(name, direct)
    conn = await asyncpg.connect(proxy.dsn)  # and serves new sessions as before
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


def _restart(server: pgserver.PgServer) -> None:
    server.stop()  # SIGINT: fast shutdown
    server.start(postgres.Binaries.detect())


def test_fast_shutdown_in_a_transaction_is_57p01(
    both: tuple[pgserver.PgServer, proxy_support.ProxyProc],
) -> None:
    server, proxy = both
    for dsn in (server.dsn, proxy.dsn):
        with psycopg.connect(dsn) as c:
            c.execute("select 1")  # a transaction is open
            _restart(server)
            assert _outcome(lambda c=c: c.execute("select 1")) == ("AdminShutdown", "57P01")


def test_fast_shutdown_of_an_idle_session_is_hidden_by_the_proxy(
    both: tuple[pgserver.PgServer, proxy_support.ProxyProc], pg_tmp: Path
) -> None:
    """The documented difference: PostgreSQL ends the session, the proxy keeps it."""
    server, proxy = both
    with psycopg.connect(server.dsn, autocommit=True) as direct:
        direct.execute("select 1")
        _restart(server)
        assert _outcome(lambda: direct.execute("select 1")) == ("AdminShutdown", "57P01")
    with psycopg.connect(proxy.dsn, autocommit=True) as c:
        c.execute("select 1")
        _restart(server)
        assert c.execute("select 1").fetchone() == (1,)
