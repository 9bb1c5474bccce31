"""Borrowing servers for a session, and waiting out a failover.

Used by ``session.client.Session`` when a request needs a server it does not
hold: :func:`borrow` takes a connection from the member's pool (pools are keyed
by member, database and epoch, so a new primary's connections never mix with
the old one's); :class:`TopologyWait` bounds how long a session waits for a
new topology while the servers it needs cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ...consistency.session import SessionConsistency
from ...consistency.tracker import Mode
from ...pool.backend import BackendConnection, BackendError
from ...pool.pool import FOLLOWER_EPOCH, Pool
from ...routing import router
from ...routing.classify import classify
from ...routing.router import Role, Route
from ..context import ServerContext

log = logging.getLogger(__name__)

STARTUP_ATTEMPTS = 3
"""Connects to the primary a new session makes while topologies keep changing under it."""


async def borrow(
    ctx: ServerContext, database: str, route: Route, gone: Callable[[], bool], shard_index: int = 0
) -> tuple[BackendConnection, Pool]:
    """A connection to ``route.member`` (of shard ``shard_index``) from its pool, its
    ``epoch`` set; raises ``BackendError`` when it cannot be had or the client went
    away (``gone()``) meanwhile."""
    pool, epoch = _pool(ctx, database, route, shard_index)
    b = await pool.acquire()
    if gone():
        pool.release(b)
        raise BackendError("client went away")
    b.epoch = epoch
    return b, pool


def borrow_idle(
    ctx: ServerContext, database: str, route: Route, shard_index: int = 0
) -> tuple[BackendConnection, Pool] | None:
    """Like :func:`borrow`, without waiting: an idle pooled connection, or None
    (transaction pooling borrows once per transaction; this spares it a task)."""
    pool, epoch = _pool(ctx, database, route, shard_index)
    b = pool.lend_idle()
    if b is None:
        return None
    b.epoch = epoch
    return b, pool


def _pool(ctx: ServerContext, database: str, route: Route, shard_index: int) -> tuple[Pool, int]:
    shard = ctx.shard(shard_index)
    epoch = shard.epoch if route.role is Role.PRIMARY else FOLLOWER_EPOCH
    key, credentials = ctx.pool_key(route.member, database, epoch)
    return ctx.pools.get(key, credentials), epoch


def primary_route(
    ctx: ServerContext, consistency: SessionConsistency, shard_index: int = 0
) -> Route:
    """Where a new session connects first (shard 0), or a scatter or DDL goes: the primary."""
    return router.route(
        classify("BEGIN"), mode=Mode.STRONG, in_transaction=None, pinned=True,
        shard=ctx.shard(shard_index), tokens=consistency.tokens, replayed={}, max_wait_ms=0,
    )  # fmt: skip


class TopologyWait:
    """How long a session still waits for the servers a request needs (one per session)."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._until: float | None = None

    def reset(self) -> None:
        """The servers were reached: the next failure starts a new wait."""
        self._until = None

    async def wait(self, problem: str) -> bool:
        """A failover may be in progress: wait for a new topology (or a second).

        True: route the request again. False: ``failover_wait`` seconds have passed;
        answer the request with 57P03 (the session itself stays usable).
        """
        loop = asyncio.get_running_loop()
        wait = self._ctx.settings.failover_wait
        if self._until is None:
            self._until = loop.time() + wait
            log.info("%s; waiting up to %.0fs for the topology to change", problem, wait)
        remaining = self._until - loop.time()
        if remaining <= 0:
            self._until = None
            return False
        with contextlib.suppress(TimeoutError):
            # Also retry now and then: the same member may simply come back.
            await asyncio.wait_for(self._ctx.topology_changed(), min(remaining, 1.0))
        return True
