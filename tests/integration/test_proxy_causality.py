"""Cross-session causality: a new session sees every commit acknowledged before it connected.

One primary, one streaming follower whose replay is paused (``pg_wal_replay_pause()``:
it keeps answering, and the proxy's position monitor keeps seeing it behind) and the
proxy in front, with one worker and with ``--workers 2`` (a client's two connections
may land in different workers). Session A creates a table, inserts and commits; a new
session B then reads it through the proxy: it must see the row, not "relation does not
exist" from the follower. Once replay resumes, new sessions read from the follower again.
The issue's own case too: ``pgbench -i`` then ``pgbench -S`` through the proxy.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.support import pgserver, replicated
from tests.support import proxy as proxy_support

Setup = tuple[proxy_support.ProxyProc, pgserver.PgServer, pgserver.PgServer]
ON_FOLLOWER = "pg_last_wal_replay_lsn() is not null"
"""True on a follower; not a server-local probe, so a ``session`` read may go there."""


@pytest.fixture(scope="module", params=["1", "2"], ids=["one-worker", "two-workers"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Setup]:
    with replicated.running(
        "--max-wait-ms", "100", "--workers", request.param, wait_for_reads=False
    ) as setup:
        yield setup


@contextlib.contextmanager
def replay_paused(follower: pgserver.PgServer) -> Iterator[None]:
    """The follower receives WAL but replays none of it until the block ends."""
    with psycopg.connect(follower.dsn, autocommit=True) as c:
        c.execute("select pg_wal_replay_pause()")
        try:
            yield
        finally:
            c.execute("select pg_wal_replay_resume()")


def _caught_up(primary: pgserver.PgServer, follower: pgserver.PgServer) -> None:
    with psycopg.connect(primary.dsn, autocommit=True) as c:
        row = c.execute("select pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
    with psycopg.connect(follower.dsn, autocommit=True) as c:
        deadline = time.monotonic() + 30
        caught_up = "select pg_last_wal_replay_lsn() >= %s::pg_lsn"
        while c.execute(caught_up, (row[0],)).fetchone() != (True,):
            assert time.monotonic() < deadline, "the follower never caught up"
            time.sleep(0.05)


def _reads_reach_the_follower(p: proxy_support.ProxyProc) -> None:
    """New sessions' reads go to the follower (bounded wait for the position monitor)."""
    deadline = time.monotonic() + 15
    while True:
        with psycopg.connect(p.dsn, autocommit=True) as c:
            if c.execute(f"select {ON_FOLLOWER}").fetchone() == (True,):
                return
        assert time.monotonic() < deadline, "new sessions' reads never reached the follower"
        time.sleep(0.1)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_new_session_sees_what_others_committed_before_it_connected(
    cluster: Setup, protocol: str
) -> None:
    p, primary, follower = cluster
    table = f"causal_{protocol}"
    with psycopg.connect(p.dsn, autocommit=True) as a:
        a.execute(f"drop table if exists {table}")
    _caught_up(primary, follower)
    _reads_reach_the_follower(p)
    prepare = protocol == "extended"
    with replay_paused(follower):
        with psycopg.connect(p.dsn, autocommit=True) as a:
            a.execute(f"create table {table} (i int)")
            a.execute(f"insert into {table} values (1)")
        for _ in range(6):  # several new sessions: with two workers, both serve some
            with psycopg.connect(p.dsn, autocommit=True) as b:
                rows = b.execute(f"select i from {table}", prepare=prepare).fetchall()
                assert rows == [(1,)]
    _caught_up(primary, follower)
    # Not by sending every read to the primary: once the follower has it, it serves it.
    with psycopg.connect(p.dsn, autocommit=True) as b:
        assert b.execute(f"select i, {ON_FOLLOWER} from {table}").fetchall() == [(1, True)]


def test_pgbench_select_only_right_after_init(cluster: Setup) -> None:
    p, primary, follower = cluster
    base = ["-h", p.host, "-p", str(p.port), "-U", p.user]
    env = p.libpq_env()
    _caught_up(primary, follower)
    _reads_reach_the_follower(p)
    with replay_paused(follower):
        subprocess.run(["pgbench", "-i", "-s", "1", "-q", *base, "postgres"],
                       check=True, capture_output=True, env=env, timeout=120)  # fmt: skip
        run = subprocess.run(
            ["pgbench", "-S", "-c", "2", "-t", "20", *base, "postgres"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "number of transactions actually processed: 40/40" in run.stdout
