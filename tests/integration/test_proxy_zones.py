"""Zone-aware follower choice through the proxy of ``pgshard local up`` (issue 14).

One shard, a follower in zone ``a`` (s0m1) and one in zone ``b`` (s0m2), the proxy in
zone ``b``. Each read names the member that served it (``current_setting('port')``,
which the proxy sends to followers like any read). Fresh sessions read from the
same-zone follower only; while its replay is paused (it lags behind the session's
writes) reads go to the other zone's follower (or the primary) and still see the
session's writes; once it replays again, reads come back to it.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import psycopg

from pgshard_operator.local import layout
from tests.support import localcluster

READ = "select current_setting('port')::int, count(*) from t"


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _wait_for_row(dsn: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            try:
                if conn.execute("select count(*) from t").fetchone() == (1,):
                    return
            except psycopg.errors.UndefinedTable:
                pass
            assert time.monotonic() < deadline, "the follower did not replay the first row"
            time.sleep(0.1)


def test_reads_prefer_the_proxys_zone_and_leave_it_while_its_follower_lags(pg_tmp: Path) -> None:
    with localcluster.running(
        pg_tmp, "--follower-zones=a,b", "--proxy-zone=b", shards=1, replicas=2
    ) as c:
        doc = c.status()
        shard = doc["shards"][0]
        assert doc["proxy"]["zone"] == "b"
        zones = {f["name"]: f.get("zone") for f in shard["followers"]}
        assert zones == {"s0m1": "a", "s0m2": "b"}
        member_port = {
            m["name"]: _port(m["address"]) for m in (shard["primary"], *shard["followers"])
        }
        dsn = doc["proxy"]["dsn"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create table t(i int primary key)")
            conn.execute("insert into t values (0)")
        cfg = layout.ClusterDir(c.dir).load_config()
        creds = layout.ClusterDir(c.dir).load_credentials(cfg)
        for name in ("s0m1", "s0m2"):  # fresh sessions have no position to wait for
            _wait_for_row(creds.superuser_dsn(cfg.member(name).address, creds.app_database))

        served: collections.Counter[int] = collections.Counter()
        for _ in range(20):  # fresh sessions: the seed that spreads them varies
            with psycopg.connect(dsn, autocommit=True) as conn:
                for _ in range(3):
                    port, rows = conn.execute(READ).fetchone() or (0, 0)
                    assert rows == 1
                    served[port] += 1
        print(f"reads per port, both followers current: {dict(served)} ({member_port})")
        assert served == {member_port["s0m2"]: 60}

        same_zone = creds.superuser_dsn(cfg.member("s0m2").address)
        with psycopg.connect(same_zone, autocommit=True) as su:
            su.execute("select pg_wal_replay_pause()")
            lagging: collections.Counter[int] = collections.Counter()
            with psycopg.connect(dsn, autocommit=True) as conn:
                for i in range(1, 11):
                    conn.execute("insert into t values (%s)", (i,))
                    port, rows = conn.execute(READ).fetchone() or (0, 0)
                    assert rows == i + 1  # read-your-writes, whoever served it
                    lagging[port] += 1
            print(f"reads per port, s0m2 paused: {dict(lagging)}")
            assert member_port["s0m2"] not in lagging
            assert lagging[member_port["s0m1"]] >= 1
            assert set(lagging) <= {member_port["s0m1"], member_port["s0m0"]}
            su.execute("select pg_wal_replay_resume()")

        # Replaying again: after its next write the session reads in its zone again.
        deadline = time.monotonic() + 30
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                conn.execute("insert into t select max(i) + 1 from t")
                time.sleep(0.3)
                port, _ = conn.execute(READ).fetchone() or (0, 0)
                if port == member_port["s0m2"]:
                    break
                assert time.monotonic() < deadline, "reads never came back to s0m2"
