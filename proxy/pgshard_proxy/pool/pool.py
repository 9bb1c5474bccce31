"""Pools of server connections, one per (member, database); owned by the server context.

A session borrows at most one connection per role (primary, follower) for as
long as it needs it and gives it back when it ends or moves away from that
member. A returned connection is reset with ``DISCARD ALL`` (prepared
statements, temporary tables, advisory locks, LISTEN, SETs all go) before
anyone else gets it; one that is mid-transaction or broken is closed instead.

On a topology change the server calls :meth:`Pools.retire` for members that
left their role: their idle connections close at once and borrowed ones close
when returned, so nothing new is ever sent to them from this pool.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging

from .backend import BackendConnection, BackendError, Credentials

log = logging.getLogger(__name__)

RESET_SQL = "DISCARD ALL"


FOLLOWER_EPOCH = -1
"""PoolKey.epoch of follower pools: a follower's connections never write."""


@dataclasses.dataclass(frozen=True)
class PoolKey:
    member_name: str
    address: str
    database: str
    epoch: int
    """The shard's epoch for a primary's pool (a new epoch means a new pool), else -1."""


class PoolExhausted(BackendError):
    """No connection became free within the connect timeout."""


class Pool:
    """Connections to one member for one database, at most ``max_size`` of them."""

    def __init__(
        self, key: PoolKey, credentials: Credentials, *, max_size: int, connect_timeout: float
    ) -> None:
        self.key = key
        self.credentials = credentials
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.retired = False
        self._idle: collections.deque[BackendConnection] = collections.deque()
        self._size = 0
        self._freed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._connecting: set[asyncio.Future[BackendConnection]] = set()
        """Connects under way: a retired pool stops them (its member may never answer)."""

    @property
    def size(self) -> int:
        return self._size

    async def acquire(self) -> BackendConnection:
        if self.retired:
            raise BackendError(f"{self.key.member_name} is no longer in this role")
        async with asyncio.timeout(self.connect_timeout):
            while True:
                while self._idle:
                    conn = self._idle.popleft()
                    if not conn.broken:
                        return conn
                    self._size -= 1
                if self._size < self.max_size:
                    break
                async with self._freed:
                    await self._freed.wait()
        self._size += 1
        connect = asyncio.ensure_future(
            BackendConnection.connect(
                member_name=self.key.member_name,
                address=self.key.address,
                database=self.key.database,
                credentials=self.credentials,
                timeout=self.connect_timeout,
            )
        )
        self._connecting.add(connect)
        try:
            return await connect
        except asyncio.CancelledError:
            self._size -= 1
            self._notify()
            current = asyncio.current_task()
            if self.retired and not (current and current.cancelling()):
                # retire() stopped it: a new epoch named another primary meanwhile.
                raise BackendError(
                    f"{self.key.member_name} left its role while the proxy was connecting"
                ) from None
            raise
        except BaseException:
            self._size -= 1
            self._notify()
            raise
        finally:
            self._connecting.discard(connect)

    def release(self, conn: BackendConnection) -> None:
        """Take a connection back; reset it in the background before reuse."""
        conn.attach(None)
        if conn.broken or self.retired or not conn.idle:
            conn.close()
            self._size -= 1
            self._notify()
            return
        task = asyncio.get_running_loop().create_task(self._reset(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reset(self, conn: BackendConnection) -> None:
        try:
            error = await conn.run_hidden(RESET_SQL, self.connect_timeout)
        except (BackendError, TimeoutError) as e:
            error = str(e)
        if error is not None or conn.broken or self.retired or not conn.idle:
            if error:
                log.info("dropping connection to %s: reset failed: %s", self.key.member_name, error)
            conn.close()
            self._size -= 1
        else:
            conn.statements.clear()
            conn.settings_applied = 0
            self._idle.append(conn)
        self._notify()

    def _notify(self) -> None:
        async def wake() -> None:
            async with self._freed:
                self._freed.notify()

        task = asyncio.get_running_loop().create_task(wake())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def retire(self) -> None:
        """Never lend again; close idle connections now, borrowed ones on return, and
        stop connects under way."""
        self.retired = True
        for connect in self._connecting:
            connect.cancel()
        while self._idle:
            self._idle.popleft().close()
            self._size -= 1

    async def close(self) -> None:
        self.retire()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Pools:
    """Every pool of the proxy, created on first use."""

    def __init__(self, *, max_size: int, connect_timeout: float) -> None:
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self._pools: dict[PoolKey, Pool] = {}

    def get(self, key: PoolKey, credentials: Credentials) -> Pool:
        pool = self._pools.get(key)
        if pool is None or pool.retired:
            pool = Pool(
                key, credentials, max_size=self.max_size, connect_timeout=self.connect_timeout
            )
            self._pools[key] = pool
        return pool

    def retire(self, keep: set[tuple[str, str, int]]) -> None:
        """Retire every pool whose ``(member name, address, epoch)`` is not in ``keep``."""
        for key, pool in list(self._pools.items()):
            if (key.member_name, key.address, key.epoch) not in keep:
                pool.retire()
                del self._pools[key]

    async def close(self) -> None:
        for pool in list(self._pools.values()):
            await pool.close()
        self._pools.clear()
