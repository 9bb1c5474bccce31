"""Failover under a write workload through the proxy (sync replication, kill -9 of the primary).

Writers insert unique ids through the proxy and record what was acknowledged and
by which member (``inet_server_port()`` in the same statement). The primary is
killed mid-run. Expected: clients see errors during the switch and then succeed
again; every acknowledged write is on the new primary (sync mode loses none);
no write acknowledged after the proxy saw the new epoch came from the old primary.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from tests.support import localcluster, writer

CLEAR_ERRORS = ("outcome is unknown", "cannot reach", "connection", "terminat", "closed")
"""What the errors clients see during the switch talk about (lower case)."""


def test_failover_during_writes(pg_tmp: Path) -> None:
    with localcluster.running(
        pg_tmp, "--replication-mode=sync", "--detection-seconds=2", shards=1, replicas=2
    ) as c:
        doc = c.status()
        dsn = doc["proxy"]["dsn"]
        old = doc["shards"][0]["primary"]
        writers = [
            writer.Writer(dsn, timeout=60, connect_timeout=10, first_id=i * 1_000_000 + 1)
            for i in range(3)
        ]
        with writer.in_thread(writers):
            time.sleep(2)
            c.kill(0, old["name"])
            deadline = time.monotonic() + 90
            while c.shard(0)["epoch"] == doc["shards"][0]["epoch"]:
                assert time.monotonic() < deadline, "no failover within 90 s"
                time.sleep(0.5)
            switched = time.monotonic()
            new = c.shard(0)["primary"]
            # Let every writer get writes through the new primary.
            while not all(any(a.at > switched for a in w.acks) for w in writers):
                assert time.monotonic() < deadline, "writers did not recover after the failover"
                time.sleep(0.2)
        new_port = int(new["address"].rpartition(":")[2])
        acks = [a for w in writers for a in w.acks]
        # The topology file is polled every 0.2 s by the proxy: allow it a second to notice.
        late = [a for a in acks if a.at > switched + 1.0 and a.port != new_port]
        assert late == [], "writes acknowledged by the old primary after the epoch changed"
        with psycopg.connect(new["dsn"], autocommit=True) as conn:
            stored = {r[0] for r in conn.execute("select id from acked").fetchall()}
        lost = sorted({a.id for a in acks} - stored)
        assert lost == [], f"{len(lost)} acknowledged writes lost"
        errors = [e for w in writers for e in w.errors]
        unclear = [e for e in errors if not any(m in e.lower() for m in CLEAR_ERRORS)]
        assert unclear == [], "errors that do not say what happened"
        assert [h for w in writers for h in w.hung] == [], "statements hung"
