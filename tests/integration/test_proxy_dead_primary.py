"""A frozen primary (SIGSTOP: sockets stay open, nothing answers) under asyncpg writers.

Also a crashed one (kill -9: connections reset), the same expectations.

Writers use prepared statements (asyncpg's ``fetchval`` with arguments: Parse/
Describe/Sync, then Bind/Execute/Sync) each on its own connection through the
proxy. The primary is frozen mid-run; the supervisor fails over. Expected
(DESIGN §5, issue 3 item 5): every statement ends within a bound, either
acknowledged or with a clear error (08007 outcome unknown, or cannot reach);
asyncpg never sees a message sequence it does not expect (``InternalClientError``);
afterwards every writer writes through the new primary, every acknowledged write is
on it (sync mode loses none), and no write acknowledged after the proxy saw the new
epoch came from the old primary (each acknowledgement records ``inet_server_port()``).
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from tests.support import localcluster, writer

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""

STATEMENT_BOUND = 60.0
"""Longer than detection + failover + the proxy noticing: a statement still waiting is hung."""

CLEAR_ERRORS = ("outcome is unknown", "cannot reach", "connection", "terminat", "closed")


@pytest.mark.parametrize("signal", ["STOP", "KILL"])
def test_dead_primary_under_prepared_statement_writers(pg_tmp: Path, signal: str) -> None:
    with localcluster.running(
        pg_tmp, "--replication-mode=sync", "--detection-seconds=2", shards=1, replicas=2
    ) as c:
        doc = c.status()
        dsn = doc["proxy"]["dsn"]
        old = doc["shards"][0]["primary"]
        writers = [
            writer.Writer(
                dsn,
                timeout=STATEMENT_BOUND,
                connect_timeout=10,
                first_id=i * 1_000_000 + 1,
                retry_pause=0.2,
            )
            for i in range(4)
        ]
        with writer.in_thread(writers):
            deadline = time.monotonic() + 30
            while not all(w.acks for w in writers):
                assert time.monotonic() < deadline, "writers did not start writing"
                time.sleep(0.2)
            c.kill(0, old["name"], signal)
            deadline = time.monotonic() + 90
            while c.shard(0)["epoch"] == doc["shards"][0]["epoch"]:
                assert time.monotonic() < deadline, "no failover within 90 s"
                time.sleep(0.5)
            switched = time.monotonic()
            new = c.shard(0)["primary"]
            deadline = time.monotonic() + STATEMENT_BOUND + 30
            while not all(any(a.at > switched for a in w.acks) for w in writers):
                hung = [h for w in writers for h in w.hung]
                assert hung == [], "statements hung through the failover"
                assert time.monotonic() < deadline, (
                    "writers did not recover after the failover: "
                    f"{[(w.errors[-3:], w.confused) for w in writers]}"
                )
                time.sleep(0.2)
        assert [h for w in writers for h in w.hung] == [], "statements hung"
        confused = [e for w in writers for e in w.confused]
        assert confused == [], "the proxy sent asyncpg a message sequence it did not expect"
        errors = [e for w in writers for e in w.errors]
        unclear = [e for e in errors if not any(m in e.lower() for m in CLEAR_ERRORS)]
        assert unclear == [], "errors that do not say what happened"
        new_port = int(new["address"].rpartition(":")[2])
        late = [a for w in writers for a in w.acks if a.at > switched + 1.0 and a.port != new_port]
        assert late == [], "writes acknowledged by the old primary after the epoch changed"
        with psycopg.connect(new["dsn"], autocommit=True) as conn:
            stored = {r[0] for r in conn.execute("select id from acked").fetchall()}
        lost = sorted({a.id for w in writers for a in w.acks} - stored)
        assert lost == [], f"{len(lost)} acknowledged writes lost"
