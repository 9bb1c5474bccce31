"""A client that goes away mid-query leaves no busy server behind (issue 17).

With PostgreSQL a session's backend ends with its client. Through the proxy the
server connection is pooled, so two cases need care, each run against the server
directly and through the proxy in front of it:

- a client interrupted (Ctrl-C: psycopg cancels, waits for the error, rolls back,
  closes): the backend its cancel reached ends with the session, as PostgreSQL's
  does, instead of serving the next session (a cancel still in flight would hit that
  session's query);
- a client killed mid-query (no cancel, no Terminate): through the proxy its query is
  cancelled and the backend ends at once. PostgreSQL itself keeps running the query
  until it next talks to the client (``client_connection_check_interval``); the proxy
  does not leave a pooled server slot working for nobody (a difference the README
  lists).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psycopg
import pytest

from tests.support import pgserver
from tests.support import proxy as proxy_support

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""

APPNAME = "compat_client_gone"
SLEEPER = f"""\
import psycopg, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
with psycopg.connect(sys.argv[1], application_name={APPNAME!r}) as conn:
    print("connected", flush=True)
    conn.execute("select pg_sleep(60)")
"""


def _backend_of_sleeper(admin: str, timeout: float = 10) -> int:
    """The pid of the server backend running the sleeper's query (bounded wait)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(admin, autocommit=True) as a:
        while True:
            row = a.execute(
                "select pid from pg_stat_activity where application_name = %s"
                " and query like 'select pg_sleep%%' and state = 'active'",
                (APPNAME,),
            ).fetchone()
            if row is not None:
                return int(row[0])
            assert time.monotonic() < deadline, "the sleeper's query never started"
            time.sleep(0.05)


GONE = 30.0
"""Bound for a backend to end: well under the sleeper's 60 s query (a backend still
running it, or kept in the pool, never gets there), generous for a loaded machine."""


def _seconds_until_gone(admin: str, pid: int, timeout: float = GONE) -> float:
    """How long until the backend ``pid`` has left pg_stat_activity (bounded)."""
    started = time.monotonic()
    with psycopg.connect(admin, autocommit=True) as a:
        while a.execute("select 1 from pg_stat_activity where pid = %s", (pid,)).fetchone():
            assert time.monotonic() - started < timeout, f"backend {pid} still there"
            time.sleep(0.05)
    return time.monotonic() - started


def _sleeper(dsn: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, dsn], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
    return proc


def _reap(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _interrupted(dsn: str, admin: str) -> float:
    proc = _sleeper(dsn)
    try:
        pid = _backend_of_sleeper(admin)
        proc.send_signal(signal.SIGINT)  # psycopg cancels, then the session ends
        assert proc.wait(GONE) != 0
        return _seconds_until_gone(admin, pid)
    finally:
        _reap(proc)


def test_ctrl_c_ends_the_backend_as_postgresql_does(
    pg_server: pgserver.PgServer, proxy: proxy_support.ProxyProc
) -> None:
    print(f"gone after {_interrupted(pg_server.dsn, pg_server.dsn):.2f}s (PostgreSQL itself)")
    print(f"gone after {_interrupted(proxy.dsn, pg_server.dsn):.2f}s (through the proxy)")
    with psycopg.connect(proxy.dsn) as c:  # the proxy serves new sessions as before
        assert c.execute("select 1").fetchone() == (1,)


def test_a_killed_client_has_its_query_cancelled(
    pg_server: pgserver.PgServer, proxy: proxy_support.ProxyProc
) -> None:
    proc = _sleeper(proxy.dsn)
    try:
        pid = _backend_of_sleeper(pg_server.dsn)
        proc.kill()  # no cancel, no Terminate: the socket just closes
        proc.wait(GONE)
        print(f"gone after {_seconds_until_gone(pg_server.dsn, pid):.2f}s")
    finally:
        _reap(proc)
    with psycopg.connect(proxy.dsn) as c:
        assert c.execute("select 1").fetchone() == (1,)
