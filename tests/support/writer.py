"""A write load for failover tests: insert rows one by one, remember which were acknowledged.

Each insert is its own transaction; an id counts as acknowledged only when its
COMMIT returned. On any error the writer re-reads ``DIR/topology.json`` (the file
the proxy follows) and reconnects to whatever primary it names, so it follows
failovers the way a client of the proxy would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

TABLE = "acked"


@dataclasses.dataclass
class Writer:
    topology: Path
    shard: int = 0
    timeout: float = 5.0
    """Bound on one insert (a frozen primary holds a client this long)."""
    connect_timeout: float = 5.0
    acked: list[int] = dataclasses.field(default_factory=list)
    log: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    """(monotonic time, primary DSN) of every acknowledged insert (for bench/failover)."""
    failed: int = 0
    _next: int = 1
    _stop: bool = False

    def primary_dsn(self) -> str:
        doc = json.loads(self.topology.read_text())
        dsn: str = doc["shards"][self.shard]["primary"]["dsn"]
        return dsn

    async def setup(self) -> None:
        conn = await asyncpg.connect(self.primary_dsn())
        try:
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY)")
            # Fresh ids after an earlier writer's, so no insert fails as a duplicate.
            self._next = int(await conn.fetchval(f"SELECT coalesce(max(id), 0) + 1 FROM {TABLE}"))
        finally:
            await conn.close()

    async def run(self) -> None:
        conn: Any = None
        dsn = ""
        while not self._stop:
            try:
                if conn is None:
                    dsn = self.primary_dsn()
                    conn = await asyncpg.connect(dsn, timeout=self.connect_timeout)
                await asyncio.wait_for(
                    conn.execute(f"INSERT INTO {TABLE} VALUES ({self._next})"), 5
                )
                self.acked.append(self._next)
                self.log.append((time.monotonic(), dsn))
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,  # a statement cancelled by the timeout
                TimeoutError,
            ):
                self.failed += 1
                if conn is not None:
                    conn.terminate()
                    conn = None
                await asyncio.sleep(0.02)
            self._next += 1  # a failed id is never retried: its fate is unknown
        if conn is not None:
            await conn.close()

    def stop(self) -> None:
        self._stop = True

    async def wait_acked(self, more: int, timeout: float = 60) -> None:
        """Until ``more`` further rows were acknowledged (the load goes on)."""
        target = len(self.acked) + more
        deadline = time.monotonic() + timeout
        while len(self.acked) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.acked)} of {target} rows acknowledged")
            await asyncio.sleep(0.05)


async def ids_on(dsn: str) -> set[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["id"] for r in await conn.fetch(f"SELECT id FROM {TABLE}")}
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def running(topology: Path, shard: int = 0, timeout: float = 5.0) -> AsyncIterator[Writer]:
    """A writer whose inserts and connects are both bounded by ``timeout``."""
    w = Writer(topology, shard, timeout, connect_timeout=timeout)
    await w.setup()
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)
