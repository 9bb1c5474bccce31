"""``--workers 2``: two proxy processes on one port; cancel requests reach the right one,
and a killed worker takes no other session down (it is started again)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgshard_proxy.server.cancel import worker_of
from tests.support import pgserver
from tests.support import proxy as proxy_support

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""


@pytest.fixture
def two_workers(pg_server: pgserver.PgServer, pg_tmp: Path) -> Iterator[proxy_support.ProxyProc]:
    topo = proxy_support.single_primary_topology(
        "pg-0", pg_server.host, pg_server.port, pg_server.dsn
    )
    p = proxy_support.start_proxy(pg_tmp, topo, "--workers", "2")
    try:
        yield p
    finally:
        p.stop()


def _connections(p: proxy_support.ProxyProc, n: int) -> list[psycopg.Connection]:
    return [psycopg.connect(p.dsn, autocommit=True) for _ in range(n)]


def _worker_pids(p: proxy_support.ProxyProc, timeout: float = 10) -> dict[int, int]:
    """Worker index -> pid of the worker started last for it, from the proxy's log."""
    deadline = time.monotonic() + timeout
    while True:
        found = {
            int(i): int(pid)
            for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", p.log_text())
        }
        if len(found) == 2 or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_cancel_reaches_the_session_through_any_worker(
    two_workers: proxy_support.ProxyProc,
) -> None:
    conns = _connections(two_workers, 12)
    try:
        # The kernel spreads connections over both workers (all on one: 2**-11).
        assert {worker_of(c.info.backend_pid) for c in conns} == {0, 1}
        # psycopg cancels over a new connection, which may reach either worker.
        for c in conns:
            timer = threading.Timer(0.3, c.cancel)
            timer.start()
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                c.execute("select pg_sleep(20)")
            timer.join()
            assert time.monotonic() - started < 10
            assert c.execute("select 1").fetchone() == (1,)
    finally:
        for c in conns:
            c.close()


def test_a_killed_worker_takes_no_other_session_down_and_comes_back(
    two_workers: proxy_support.ProxyProc,
) -> None:
    p = two_workers
    conns = _connections(p, 12)
    try:
        by_worker = {worker_of(c.info.backend_pid) for c in conns}
        assert by_worker == {0, 1}
        pids = _worker_pids(p)
        os.kill(pids[0], signal.SIGKILL)
        for c in conns:
            if worker_of(c.info.backend_pid) == 0:
                with pytest.raises(psycopg.OperationalError):
                    c.execute("select 1")
            else:
                assert c.execute("select 1").fetchone() == (1,)
        # New clients are served all along, and worker 0 is back within seconds.
        seen: set[int] = set()
        deadline = time.monotonic() + 15
        while seen != {0, 1} and time.monotonic() < deadline:
            with psycopg.connect(p.dsn, autocommit=True) as c:
                assert c.execute("select 1").fetchone() == (1,)
                seen.add(worker_of(c.info.backend_pid))
        assert seen == {0, 1}
        assert _worker_pids(p)[0] != pids[0]
    finally:
        for c in conns:
            c.close()
