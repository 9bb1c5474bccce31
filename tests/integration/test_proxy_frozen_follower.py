"""A frozen follower (SIGSTOP: sockets stay open, nothing answers) under readers.

Real ``pgshard local up`` cluster (1 primary, 2 followers, async), the real
proxy the supervisor starts (``follower_read_timeout`` 5 s by default), asyncpg
and psycopg 3 clients. Expected (README "Proxy"):

* a read in flight on the follower when it froze, nothing of it relayed yet, is
  retried on the primary and answered there;
* a read-only transaction open on it cannot be retried: the session ends with 08006;
* while it is frozen, read-only sessions keep getting answers (none waits longer
  than ``BOUND``) and a writer still reads its own writes;
* after SIGCONT the follower serves reads again.

Without the proxy's follower watch the in-flight read waits for ever: ``BOUND`` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.support import localcluster

PORT = "current_setting('port')::int"
"""Which member answered a read (``inet_server_port()`` is answered by the session's
primary: it reads server-local state)."""

BOUND = 60.0
"""Far beyond the follower read timeout (5 s) plus the monitor's probe bound: a read
still unanswered after this is hung."""


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


async def _on_follower(
    dsn: str, follower: int | None, followers: set[int], begin: str | None = None
) -> tuple[asyncpg.Connection, int]:
    """A session whose next statements run on ``follower`` (any follower if None),
    after ``begin`` if given."""
    for _ in range(40):
        conn = await asyncpg.connect(dsn)
        if begin is not None:
            await conn.execute(begin)
        port = await conn.fetchval(f"select {PORT}")
        if port == follower or (follower is None and port in followers):
            return conn, port
        conn.terminate()
    raise AssertionError(f"no session was routed to follower {follower or followers}")


class Readers:
    """Read-only sessions (asyncpg and psycopg) reading in a loop; a writer reading its writes."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.ports: list[int] = []
        self.hung: list[str] = []
        self.errors: list[str] = []
        self.stale: list[int] = []
        self.stop = asyncio.Event()

    async def _bounded(self, what: str, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, BOUND)
        except TimeoutError:
            self.hung.append(what)
            raise

    async def asyncpg_reader(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self.stop.is_set():
                port = await self._bounded(
                    "asyncpg read",
                    conn.fetchval(f"select {PORT} from kv where id = $1", 1),
                )
                self.ports.append(port)
                await asyncio.sleep(0.01)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
            self.errors.append(f"asyncpg reader: {type(e).__name__}: {e}")
        finally:
            conn.terminate()

    async def psycopg_reader(self) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    cur = await self._bounded(
                        "psycopg read", conn.execute(f"select {PORT}, count(*) from kv")
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    self.ports.append(row[0])
                    await asyncio.sleep(0.01)
        except psycopg.Error as e:
            self.errors.append(f"psycopg reader: {type(e).__name__}: {e}")

    async def writer(self) -> None:
        """Insert, then read the row back in the same session: it must be there."""
        conn = await asyncpg.connect(self.dsn)
        try:
            n = 1000
            while not self.stop.is_set():
                n += 1
                await self._bounded("write", conn.execute("insert into kv values ($1, $1)", n))
                seen = await self._bounded(
                    "read-your-write", conn.fetchval("select v from kv where id = $1", n)
                )
                if seen != n:
                    self.stale.append(n)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
            self.errors.append(f"writer: {type(e).__name__}: {e}")
        finally:
            conn.terminate()


async def _scenario(c: localcluster.LocalCluster, dsn: str, shard: dict[str, Any]) -> None:
    primary = _port(shard["primary"]["address"])
    names = {_port(f["address"]): f["name"] for f in shard["followers"]}
    reader, frozen = await _on_follower(dsn, None, set(names))
    in_tx, _ = await _on_follower(dsn, frozen, set(names), begin="begin read only")
    readers = Readers(dsn)
    try:
        # In flight on the follower when it freezes: answered by the primary instead.
        # Long on the follower (the kill below may take seconds on a loaded machine), at
        # once on the primary that answers it instead.
        slow = asyncio.ensure_future(
            reader.fetchval(f"select {PORT} from pg_sleep(({PORT} = {frozen})::int * 60)")
        )
        await asyncio.sleep(0.5)
        await asyncio.to_thread(c.kill, 0, names[frozen], "STOP")
        assert not slow.done(), "the read ended before the follower froze"
        assert await asyncio.wait_for(slow, BOUND) == primary
        # A transaction on it cannot move: a clear error, the session ends.
        with pytest.raises(asyncpg.PostgresError) as failed:
            await asyncio.wait_for(in_tx.fetchval("select 1"), BOUND)
        # asyncpg reports the FATAL 08006 as the cause of "connection closed" (08003).
        assert "08006" in {failed.value.sqlstate, getattr(failed.value.__cause__, "sqlstate", 0)}
        assert "did not answer" in str(failed.value)

        # While it stays frozen: everyone keeps getting answers, writes stay visible.
        tasks = [asyncio.ensure_future(readers.asyncpg_reader()) for _ in range(4)]
        tasks.append(asyncio.ensure_future(readers.psycopg_reader()))
        tasks.append(asyncio.ensure_future(readers.writer()))
        await asyncio.sleep(6)
        answered = len(readers.ports)
        await asyncio.sleep(6)
        assert len(readers.ports) > answered, "no read was answered while the follower was frozen"
        await asyncio.to_thread(c.kill, 0, names[frozen], "CONT")

        # Awake again: it serves reads again (sessions go back to it once it answers).
        deadline = asyncio.get_running_loop().time() + 120
        while frozen not in readers.ports[-200:]:
            if asyncio.get_running_loop().time() > deadline:
                state = await asyncio.to_thread(c.shard, 0)
                raise AssertionError(f"the follower never came back: {state['followers']}")
            assert not readers.errors and not readers.hung, (readers.errors, readers.hung)
            await asyncio.sleep(0.5)
            fresh = await asyncpg.connect(dsn)
            readers.ports.append(await fresh.fetchval(f"select {PORT}"))
            await fresh.close()
        readers.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), BOUND)
    finally:
        readers.stop.set()
        for conn in (reader, in_tx):
            conn.terminate()
    assert readers.hung == []
    assert readers.errors == []
    assert readers.stale == [], "a session did not read its own write"
    assert primary in readers.ports


def test_reads_keep_working_while_a_follower_is_frozen(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, shards=1, replicas=2) as c:
        doc = c.status()
        with psycopg.connect(doc["proxy"]["dsn"], autocommit=True) as conn:
            conn.execute("create table kv (id int primary key, v int)")
            conn.execute("insert into kv select i, i from generate_series(1, 100) i")
        try:
            asyncio.run(_scenario(c, doc["proxy"]["dsn"], doc["shards"][0]))
        finally:
            with contextlib.suppress(AssertionError):
                for f in doc["shards"][0]["followers"]:
                    c.kill(0, f["name"], "CONT")
