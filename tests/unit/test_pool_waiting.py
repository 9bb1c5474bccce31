"""A full pool's waiting line (pure pool logic; a stand-in for a lent connection):
first come first served, a bounded wait ending in PoolExhausted, and a connection handed
to a waiter that gave up going to the next one, never lost (< 1 s)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from pgshard_proxy.pool.backend import BackendConnection, Credentials
from pgshard_proxy.pool.pool import FOLLOWER_EPOCH, Pool, PoolExhausted, PoolKey


class Lent:
    """What the pool looks at on a connection given back (idle, not broken)."""

    idle = True
    broken = False
    cancelled = False

    def attach(self, sink: object) -> None:
        pass

    def close(self) -> None:
        self.broken = True


def _full_pool(wait_ms: int) -> tuple[Pool, BackendConnection]:
    """A pool of one whose only connection is lent (to the caller)."""
    pool = Pool(
        PoolKey("f1", "127.0.0.1:1", "app", FOLLOWER_EPOCH),
        Credentials("app", "secret"),
        max_size=1,
        connect_timeout=5,
        wait_timeout=wait_ms / 1000,
    )
    pool._size = 1  # the lent connection, made without a server
    return pool, cast(BackendConnection, Lent())


async def test_waiters_are_served_in_order_and_the_last_one_times_out() -> None:
    pool, conn = _full_pool(wait_ms=300)
    got: list[int] = []

    async def wait(i: int) -> None:
        b = await pool.acquire()
        got.append(i)
        await asyncio.sleep(0)
        pool.give_back(b)

    first = asyncio.ensure_future(wait(1))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(wait(2))
    await asyncio.sleep(0)
    pool.give_back(conn)
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert got == [1, 2] and pool.idle == 1 and pool.size == 1
    b = await pool.acquire()
    with pytest.raises(PoolExhausted, match="all 1 connections to f1 are in use"):
        await pool.acquire()
    pool.give_back(b)


async def test_a_waiter_that_gives_up_passes_its_connection_on() -> None:
    pool, conn = _full_pool(wait_ms=5000)
    quitter = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    patient = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    pool.give_back(conn)  # handed to the quitter, which is cancelled before it runs
    quitter.cancel()
    assert await asyncio.wait_for(patient, 5) is conn
    assert pool.size == 1
