"""``pgshard local up`` runs the proxy; clients use ``status --json``'s ``proxy.dsn``.

A real local cluster (one shard, a primary and two followers, one of them late):
the proxy follows ``DIR/topology.json``, sends writes to the primary and reads
to followers, and carries sessions over a failover: the idle session keeps
working, writes reach only the new primary.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from tests.support import localcluster


def _retry(dsn: str, sql: str, timeout: float = 90) -> tuple[object, ...]:
    """Run ``sql`` in a new session until it succeeds (a failover is in progress)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute(sql).fetchone()
                assert row is not None
                return tuple(row)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_local_up_starts_the_proxy_and_it_survives_failover(pg_tmp: Path) -> None:
    with localcluster.running(
        pg_tmp, "--follower-delay-ms=0,200", "--detection-seconds=2", shards=1, replicas=2
    ) as c:
        doc = c.status()
        proxy = doc["proxy"]
        assert proxy["address"].endswith(f":{proxy['address'].rpartition(':')[2]}")
        dsn = proxy["dsn"]
        assert dsn.startswith("postgresql://app:") and proxy["address"] in dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create table t(i int primary key)")
            conn.execute("insert into t values (1)")
            # read-your-writes through a lagging shard (session mode, the default)
            assert conn.execute("select count(*) from t").fetchone() == (1,)
            conn.execute("set pgshard.consistency = 'eventual'")
            assert conn.execute("select pg_is_in_recovery()").fetchone() == (True,)
            conn.execute("set pgshard.consistency = 'session'")

            old = doc["shards"][0]["primary"]["name"]
            c.kill(0, old)
            # The idle session survives: the proxy holds its next statement until the
            # topology names the new primary, then runs it there.
            conn.execute("insert into t values (2)")
            assert conn.execute("select count(*) from t").fetchone() == (2,)
        new = c.status()["shards"][0]
        assert new["primary"]["name"] != old and new["epoch"] > doc["shards"][0]["epoch"]
        assert _retry(dsn, "select count(*) from t") == (2,)
