"""The proxy never writes to a member that is not the primary (issue 15).

Real servers: a primary and a streaming follower of it. Two ways the proxy's
"primary" can be read-only:

- its topology is stale and names, as primary, an address that now serves a
  standby (the old primary's pod came back on the same IP as a follower), and the
  file's new content went unnoticed (same size, old mtime): the connection check
  (``in_hot_standby``) refuses the standby and makes the proxy read the topology
  again, so an autocommit write lands on the real primary;
- the primary the sessions hold connections to turns read-only under them
  (``default_transaction_read_only``) while the follower is promoted: an autocommit
  simple-protocol write is run again on the new primary once the topology names it;
  one whose answer had begun (extended protocol) gets a clear "primary moved" error.

Never ``cannot execute INSERT in a read-only transaction``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgshard_proxy.contract import topology
from tests.support import pgserver
from tests.support import proxy as proxy_support

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""

Pair = tuple[pgserver.PgServer, pgserver.PgServer]


@pytest.fixture
def pair(pg_tmp: Path) -> Iterator[Pair]:
    """A primary with table ``t`` and a follower that has replayed it."""
    primary = pgserver.make_server(pg_tmp, "primary")
    follower = None
    try:
        with psycopg.connect(primary.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            conn.execute("GRANT ALL ON t TO PUBLIC")
        follower = pgserver.make_follower(primary, pg_tmp, "follower")
        with psycopg.connect(follower.dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while conn.execute("SELECT to_regclass('t')").fetchone() == (None,):
                assert time.monotonic() < deadline, "the follower never replayed table t"
                time.sleep(0.1)
        yield primary, follower
    finally:
        if follower is not None:
            follower.stop()
        primary.stop()


def member(name: str, server: pgserver.PgServer) -> topology.Member:
    return topology.Member(name, f"{server.host}:{server.port}", server.dsn)


def shard(epoch: int, primary: topology.Member, *followers: topology.Member) -> topology.Topology:
    return topology.Topology(
        shards=(topology.Shard(index=0, epoch=epoch, primary=primary, followers=followers),),
        version=epoch,
    )


def rows(server: pgserver.PgServer) -> list[int]:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")]


def _write_until_accepted(
    proxy: proxy_support.ProxyProc, limit: float = 20
) -> tuple[float | None, list[str]]:
    """Retry one insert through the proxy for ``limit`` seconds: when it was first
    accepted (seconds after the start, None if never) and the errors before."""
    errors: list[str] = []
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            with psycopg.connect(proxy.dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute("SET statement_timeout = '5s'")
                conn.execute("INSERT INTO t VALUES (%s)", (1,))
                return time.monotonic() - start, errors
        except psycopg.Error as e:
            errors.append(str(e))
            time.sleep(0.5)
    return None, errors


def test_stale_topology_naming_a_standby_as_primary(pg_tmp: Path, pair: Pair) -> None:
    primary, follower = pair
    stale = topology.to_json(shard(1, member("s0m1", follower)))
    real = topology.to_json(shard(2, member("s0m0", primary), member("s0m1", follower)))
    path = pg_tmp / "topology.json"
    path.write_text(stale.ljust(len(real)))
    proxy = proxy_support.start_proxy(pg_tmp, topology_file=path)
    try:
        proxy_support.rewrite_unnoticed(path, real)  # the failover the proxy missed
        written, errors = _write_until_accepted(proxy)
        assert not [e for e in errors if "read-only" in e], errors
        assert written is not None, f"no write succeeded within 20 s: {errors[-3:]}"
        assert written < 10, f"first write after {written:.1f}s"
        assert rows(primary) == [1]
        assert "standby" in proxy.log_text()  # it said why it did not use s0m1
    finally:
        proxy.stop()


async def test_primary_turning_read_only_under_open_sessions(pg_tmp: Path, pair: Pair) -> None:
    primary, follower = pair
    path = pg_tmp / "topology.json"
    path.write_text(topology.to_json(shard(1, member("s0m0", primary), member("s0m1", follower))))
    proxy = proxy_support.start_proxy(pg_tmp, topology_file=path)
    simple = await asyncpg.connect(proxy.dsn)
    extended = await asyncpg.connect(proxy.dsn)
    try:
        await simple.execute("INSERT INTO t VALUES (1)")  # both hold a primary connection now
        await extended.execute("INSERT INTO t VALUES ($1)", 2)
        with psycopg.connect(primary.dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            conn.execute("SELECT pg_reload_conf()")
        with psycopg.connect(follower.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_promote(wait => true)")

        retried = asyncio.ensure_future(simple.execute("INSERT INTO t VALUES (3)"))
        with pytest.raises(asyncpg.PostgresError) as moved:
            await extended.execute("INSERT INTO t VALUES ($1)", 4)
        assert moved.value.sqlstate == "57P03"
        assert "primary of shard 0 moved" in str(moved.value)
        assert "was not run" in str(moved.value)
        await asyncio.sleep(0.5)
        assert not retried.done()  # waiting for a primary, not answered "read-only"

        path.write_text(topology.to_json(shard(2, member("s0m1", follower))))
        assert await asyncio.wait_for(retried, 10) == "INSERT 0 1"
        await extended.execute("INSERT INTO t VALUES ($1)", 4)
        assert rows(follower) == [1, 2, 3, 4]
        assert "read-only" in proxy.log_text()  # it said why it retried
    finally:
        await simple.close()
        await extended.close()
        proxy.stop()


def test_a_primary_of_an_older_epoch_is_refused(pg_tmp: Path) -> None:
    """The topology names, at epoch 2, an address where a writable server of epoch 1
    answers (e.g. an old primary not yet fenced on the address its successor had): the
    member's epoch (``pgshard.epoch``, set by its agent when promoted) is older than the
    topology's, so no write goes there; the proxy reads its topology again and writes on
    the primary of epoch 2."""
    old = pgserver.make_server(pg_tmp, "old")
    new = pgserver.make_server(pg_tmp, "new")
    proxy = None
    try:
        for server, epoch in ((old, 1), (new, 2)):
            with psycopg.connect(server.dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
                conn.execute("GRANT ALL ON t TO PUBLIC")
                conn.execute(f"SET {topology.EPOCH_SETTING} = '{epoch}'")  # PostgreSQL 15 ALTERs
                conn.execute(f"ALTER SYSTEM SET {topology.EPOCH_SETTING} = '{epoch}'")  # known ones
                conn.execute("SELECT pg_reload_conf()")
        stale = topology.to_json(shard(2, member("s0m1", old)))
        real = topology.to_json(shard(2, member("s0m1", new)))
        path = pg_tmp / "topology.json"
        path.write_text(stale.ljust(len(real)))
        proxy = proxy_support.start_proxy(pg_tmp, topology_file=path)
        proxy_support.rewrite_unnoticed(path, real)
        written, errors = _write_until_accepted(proxy)
        assert written is not None, f"no write succeeded within 20 s: {errors[-3:]}"
        assert rows(old) == [], "a write went to a member of an older epoch"
        assert rows(new) == [1]
        assert "epoch 1" in proxy.log_text()  # it said why it did not use the old one
    finally:
        if proxy is not None:
            proxy.stop()
        new.stop()
        old.stop()
