"""Autocommit writers through the proxy while a local cluster's primary is killed.

Each writer inserts keys of its own (``insert(i, n)`` builds the statement of writer
``i``'s ``n``-th insert, whose key it returns) and reconnects after any error; a key
counts as acknowledged only when its insert returned. :func:`kill_primary_under_writers`
lets them write, kill -9s the shard's primary, waits for another at a new epoch, and
stops them once they were acknowledged again: what a failover test then checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from tests.support.localcluster import LocalCluster


async def kill_primary_under_writers(
    c: LocalCluster,
    dsn: str,
    insert: Callable[[int, int], tuple[str, int]],
    writers: int,
    after: int,
) -> tuple[list[int], str, int]:
    """``writers`` writers on ``dsn`` (the proxy); 30 keys acknowledged, then shard 0's
    primary of ``c`` is killed; once another is promoted, ``after`` more. Returns the
    acknowledged keys, the killed primary's name and how many were acknowledged at
    the promotion."""
    acked: list[int] = []
    stop = asyncio.Event()

    async def writer(i: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                w = await asyncpg.connect(dsn, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                await asyncio.sleep(0.2)
                continue
            try:
                while not stop.is_set():
                    n += 1
                    sql, key = insert(i, n)
                    await w.execute(sql)
                    acked.append(key)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(0.2)
            finally:
                w.terminate()

    tasks = [asyncio.ensure_future(writer(i)) for i in range(writers)]
    try:
        async with asyncio.timeout(60):  # the writers are under way before the kill
            while len(acked) < 30:  # noqa: ASYNC110 - the writers append
                await asyncio.sleep(0.1)
        old = (await asyncio.to_thread(c.shard, 0))["primary"]["name"]
        c.kill(0, old)
        async with asyncio.timeout(90):
            while True:
                shard = await asyncio.to_thread(c.shard, 0)
                if shard["epoch"] >= 2 and shard["primary"]["name"] != old:
                    break
                await asyncio.sleep(0.3)
        before = len(acked)
        async with asyncio.timeout(60):
            while len(acked) < before + after:  # noqa: ASYNC110 - the writers append
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return acked, old, before
