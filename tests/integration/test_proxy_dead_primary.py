"""A frozen primary (SIGSTOP: sockets stay open, nothing answers) under asyncpg writers.

Also a crashed one (kill -9: connections reset), the same expectations.

Writers use prepared statements (asyncpg's ``fetchval`` with arguments: Parse/
Describe/Sync, then Bind/Execute/Sync) each on its own connection through the
proxy. The primary is frozen mid-run; the supervisor fails over. Expected
(DESIGN §5, issue 3 item 5): every statement ends within a bound, either
acknowledged or with a clear error (08007 outcome unknown, or cannot reach);
asyncpg never sees a message sequence it does not expect (``InternalClientError``);
afterwards every writer writes through the new primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tests.support import localcluster

STATEMENT_BOUND = 60.0
"""Longer than detection + failover + the proxy noticing: a statement still waiting is hung."""

CLEAR_ERRORS = ("outcome is unknown", "cannot reach", "connection", "terminat", "closed")


class Writer:
    def __init__(self, dsn: str, index: int, stop: asyncio.Event) -> None:
        self.dsn, self.index, self.stop = dsn, index, stop
        self.acks: list[tuple[int, int, float]] = []  # (id, server port, ack time)
        self.errors: list[str] = []
        self.hung: list[str] = []
        self.confused: list[str] = []

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncio.wait_for(asyncpg.connect(self.dsn), 10)
                while not self.stop.is_set():
                    n += 1
                    wid = self.index * 1_000_000 + n
                    try:
                        port = await asyncio.wait_for(
                            conn.fetchval(
                                "insert into acked values ($1) returning inet_server_port()", wid
                            ),
                            STATEMENT_BOUND,
                        )
                    except TimeoutError:
                        self.hung.append(f"insert {wid} waited {STATEMENT_BOUND:.0f} s")
                        raise
                    self.acks.append((wid, int(port), time.monotonic()))
            except asyncpg.InternalClientError as e:
                self.confused.append(f"{type(e).__name__}: {e}")
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as e:
                self.errors.append(f"{type(e).__name__}: {e}".splitlines()[0])
            except TimeoutError:
                self.errors.append("TimeoutError: connect or statement timed out")
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(0.2)


def _run_writers(dsn: str, count: int) -> tuple[list[Writer], threading.Event, threading.Thread]:
    """Writers on an event loop in a thread; set the returned event to stop them."""
    stop_flag = threading.Event()
    started = threading.Event()
    writers: list[Writer] = []

    async def main() -> None:
        stop = asyncio.Event()
        writers.extend(Writer(dsn, i, stop) for i in range(count))
        tasks = [asyncio.create_task(w.run()) for w in writers]
        started.set()
        await asyncio.to_thread(stop_flag.wait)
        stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks), STATEMENT_BOUND + 15)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    started.wait(10)
    return writers, stop_flag, thread


@pytest.mark.parametrize("signal", ["STOP", "KILL"])
def test_dead_primary_under_prepared_statement_writers(pg_tmp: Path, signal: str) -> None:
    with localcluster.running(
        pg_tmp, "--replication-mode=sync", "--detection-seconds=2", shards=1, replicas=2
    ) as c:
        doc = c.status()
        dsn = doc["proxy"]["dsn"]
        old = doc["shards"][0]["primary"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create table acked(id bigint primary key)")
        writers, stop, thread = _run_writers(dsn, 4)
        try:
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
            while not all(any(t > switched for *_, t in w.acks) for w in writers):
                hung = [h for w in writers for h in w.hung]
                assert hung == [], "statements hung through the failover"
                assert time.monotonic() < deadline, (
                    "writers did not recover after the failover: "
                    f"{[(w.errors[-3:], w.confused) for w in writers]}"
                )
                time.sleep(0.2)
        finally:
            stop.set()
            thread.join(STATEMENT_BOUND + 30)
        assert not thread.is_alive(), "writers did not stop"
        assert [h for w in writers for h in w.hung] == [], "statements hung"
        confused = [e for w in writers for e in w.confused]
        assert confused == [], "the proxy sent asyncpg a message sequence it did not expect"
        errors = [e for w in writers for e in w.errors]
        unclear = [e for e in errors if not any(m in e.lower() for m in CLEAR_ERRORS)]
        assert unclear == [], "errors that do not say what happened"
        new_port = int(new["address"].rpartition(":")[2])
        late = [a for w in writers for a in w.acks if a[2] > switched + 1.0 and a[1] != new_port]
        assert late == [], "writes acknowledged by the old primary after the epoch changed"
        with psycopg.connect(new["dsn"], autocommit=True) as conn:
            stored = {r[0] for r in conn.execute("select id from acked").fetchall()}
        lost = sorted({a[0] for w in writers for a in w.acks} - stored)
        assert lost == [], f"{len(lost)} acknowledged writes lost"
