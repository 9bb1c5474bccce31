"""A pool retired by a new epoch stops its connects under way (pure pool logic, a real
loopback socket that accepts and never answers, as a primary whose pod vanished)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from pgshard_proxy.pool.backend import BackendError, Credentials
from pgshard_proxy.pool.pool import Pool, PoolKey
from tests.support import net


@contextlib.asynccontextmanager
async def connecting_to_a_silent_member() -> AsyncIterator[tuple[Pool, asyncio.Future[object]]]:
    """A pool with one ``acquire()`` under way, its connection accepted and never answered."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    host = net.random_loopback()
    server = await asyncio.start_server(silent, host, 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool(
        PoolKey("p", f"{host}:{port}", "app", 3),
        Credentials("app", "secret"),
        max_size=2,
        connect_timeout=60,
    )
    connecting: asyncio.Future[object] = asyncio.ensure_future(pool.acquire())
    try:
        for _ in range(100):  # until the connect reached the server
            if accepted:
                break
            await asyncio.sleep(0.05)
        assert accepted and not connecting.done()
        yield pool, connecting
    finally:
        connecting.cancel()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
        await pool.close()


async def test_retire_stops_a_connect_to_a_silent_member() -> None:
    async with connecting_to_a_silent_member() as (pool, connecting):
        pool.retire()
        with pytest.raises(BackendError, match="left its role while the proxy was connecting"):
            await asyncio.wait_for(connecting, 10)  # far below the 60 s connect timeout
        assert pool.size == 0
        with pytest.raises(BackendError, match="no longer in this role"):
            await pool.acquire()


async def test_a_caller_cancelled_while_connecting_stays_cancelled() -> None:
    async with connecting_to_a_silent_member() as (pool, connecting):
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        assert pool.size == 0 and not pool.retired
