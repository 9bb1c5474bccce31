"""One writer through a cluster's proxy for the e2e failover tests: it inserts n + 1,
n + 2, … one at a time and keeps the acknowledged ``n``; what an insert does is the
test's (``insert``: a plain INSERT into ``t`` by default)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

Insert = Callable[[Any, int], Awaitable[object]]

STATEMENT_TIMEOUT = 10.0


async def insert_id(conn: Any, n: int) -> None:
    await conn.execute("insert into t values ($1)", n)


class Writer:
    def __init__(self, dsn: str, insert: Insert = insert_id) -> None:
        self.dsn = dsn
        self.insert = insert
        self.acked: list[int] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()

    async def run(self, n: int) -> None:
        """Insert after ``n`` until stopped; a failed ``n`` is not retried (its fate is
        unknown) and the connection is replaced."""
        conn: Any = None
        while not self._stop.is_set():
            n += 1
            try:
                if conn is None:
                    conn = await asyncpg.connect(self.dsn, timeout=5)
                insert = asyncio.ensure_future(self.insert(conn, n))
                done, _ = await asyncio.wait({insert}, timeout=STATEMENT_TIMEOUT)
                if not done:
                    # Give up on the connection rather than on the statement: cancelling
                    # asyncpg's query waits for the server side (the proxy) to answer.
                    conn.terminate()
                    insert.add_done_callback(lambda t: t.cancelled() or t.exception())
                    insert.cancel()
                    raise TimeoutError(f"insert {n} got no answer within {STATEMENT_TIMEOUT:g}s")
                insert.result()
                self.acked.append(n)
            except Exception as e:  # any failure: the insert is not acknowledged
                self.errors.append(f"{type(e).__name__}: {e}")
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.2)
        if conn is not None:
            await conn.close()

    async def acked_more(self, count: int, timeout: float) -> None:
        target = len(self.acked) + count
        deadline = time.monotonic() + timeout
        while len(self.acked) < target:
            assert time.monotonic() < deadline, (
                f"the proxy did not acknowledge {count} more writes within {timeout}s "
                f"(last errors: {self.errors[-3:]})"
            )
            await asyncio.sleep(0.1)

    @contextlib.asynccontextmanager
    async def running(self, after: int) -> AsyncIterator[Writer]:
        """Writes in the background from ``after + 1`` while the block runs."""
        task = asyncio.create_task(self.run(after))
        try:
            yield self
        finally:
            self._stop.set()
            await asyncio.wait_for(task, 30)
