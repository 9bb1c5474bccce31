"""Pools of server connections, one per (member, database); owned by the server context.

A session borrows at most one connection per role (primary, follower) for as
long as it needs it and gives it back when it ends or moves away from that
member (:meth:`Pool.release`: reset with ``DISCARD ALL``, so prepared statements,
temporary tables, advisory locks, LISTEN and SETs all go, before anyone else gets
it), or, with transaction pooling, whenever it is idle and not pinned
(:meth:`Pool.give_back`: no reset; the next session brings it to its own state).
One that is mid-transaction, broken or was sent a cancel
(``BackendConnection.cancel``) is closed instead: its backend ends with the
session, as a PostgreSQL backend ends with its client.

At most ``max_size`` connections exist; a session that needs one while all are
lent waits in line (first come, first served) for ``wait_timeout`` seconds, then
gets :class:`PoolExhausted` (SQLSTATE 53300 for the client).

On a topology change the server calls :meth:`Pools.retire` for members that
left their role: their idle connections close at once and borrowed ones close
when returned, so nothing new is ever sent to them from this pool.

A primary's pool lends only connections to a writable server: each one, new or
idle, is checked against the parameters the server reports
(:func:`.backend.not_writable`; no round trip). A standby at the primary's
address (a stale topology: the old primary's pod came back on the same IP as a
follower) is refused with :class:`NotPrimary`, and the pools' ``on_not_primary``
callback lets the proxy read its topology again at once. A new connection to a
primary is also asked, in one hidden round trip, for the epoch its agent recorded
when promoting it (``topology.EPOCH_SETTING``): a member of an older epoch than the
topology's is refused the same way (it is not the primary the topology names, e.g.
an old primary not yet fenced, answering on its successor's address).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Callable

from ..contract import topology
from .backend import BackendConnection, BackendError, Credentials, not_writable

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


def epoch_check_sql(epoch: int) -> str:
    """Fails (SQLSTATE P0001) on a member whose recorded epoch is older than ``epoch``."""
    value = f"current_setting('{topology.EPOCH_SETTING}', true)"
    return (
        f"DO $$BEGIN IF (CASE WHEN {value} <> '' AND translate({value}, '0123456789', '') = '' "
        f"THEN {value}::bigint < {int(epoch)} "
        f"ELSE false END) THEN RAISE EXCEPTION 'it was promoted at epoch %', {value}; "
        "END IF; END$$"
    )


def _handed(waiter: asyncio.Future[BackendConnection | None]) -> bool:
    """A waiter was given a connection or a slot (not cancelled, no error)."""
    return waiter.done() and not waiter.cancelled() and waiter.exception() is None


class PoolExhausted(BackendError):
    """The pool was full and no connection became free within its wait (SQLSTATE 53300)."""


class NotPrimary(BackendError):
    """The member named primary cannot take writes (a standby, or read-only)."""


class Pool:
    """Connections to one member for one database, at most ``max_size`` of them."""

    def __init__(
        self,
        key: PoolKey,
        credentials: Credentials,
        *,
        max_size: int,
        connect_timeout: float,
        wait_timeout: float = 5.0,
        on_not_primary: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.key = key
        self.on_not_primary = on_not_primary
        self.credentials = credentials
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.retired = False
        self._idle: collections.deque[BackendConnection] = collections.deque()
        self._size = 0
        self.wait_timeout = wait_timeout
        """Seconds a session waits for a connection while the pool is full."""
        self._waiters: collections.deque[asyncio.Future[BackendConnection | None]] = (
            collections.deque()
        )
        """Sessions waiting while the pool is full, oldest first."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._connecting: set[asyncio.Future[BackendConnection]] = set()
        """Connects under way: a retired pool stops them (its member may never answer)."""

    @property
    def size(self) -> int:
        return self._size

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def acquire(self) -> BackendConnection:
        if self.retired:
            raise BackendError(f"{self.key.member_name} is no longer in this role")
        conn = await self._lent_or_slot()
        if conn is not None:
            return conn
        connect = asyncio.ensure_future(
            BackendConnection.connect(
                member_name=self.key.member_name,
                address=self.key.address,
                database=self.key.database,
                credentials=self.credentials,
                timeout=self.connect_timeout,
                # A client's session default: SHOW, RESET and DISCARD ALL give '' as in
                # PostgreSQL when the client sent none (issue 17); its own is replayed.
                application_name="",
            )
        )
        self._connecting.add(connect)
        try:
            conn = self._checked(await connect)
            if self.key.epoch != FOLLOWER_EPOCH:
                await self._check_epoch(conn)
            return conn
        except asyncio.CancelledError:
            self._slot_freed()
            current = asyncio.current_task()
            if self.retired and not (current and current.cancelling()):
                # retire() stopped it: a new epoch named another primary meanwhile.
                raise BackendError(
                    f"{self.key.member_name} left its role while the proxy was connecting"
                ) from None
            raise
        except BaseException:
            self._slot_freed()
            raise
        finally:
            self._connecting.discard(connect)

    def lend_idle(self) -> BackendConnection | None:
        """An idle connection at once (no await), if one is free and nobody waits."""
        if self.retired or self._waiters:
            return None
        try:
            return self._pop_idle()
        except NotPrimary:
            return None  # acquire() says why

    def _pop_idle(self) -> BackendConnection | None:
        """An idle connection checked for this pool's role, or None when none is left;
        raises :class:`NotPrimary` (its slot freed) when the member may no longer have it."""
        while self._idle:
            conn = self._idle.popleft()
            if conn.broken:
                self._slot_freed()
                continue
            try:
                return self._checked(conn)
            except NotPrimary:
                self._slot_freed()
                raise
        return None

    async def _lent_or_slot(self) -> BackendConnection | None:
        """An idle connection, or None with a slot counted for a new one; waits (first
        come, first served) up to ``wait_timeout`` while the pool is full."""
        while True:
            if (conn := self._pop_idle()) is not None:
                return conn
            if self._size < self.max_size and not self._waiters:
                self._size += 1
                return None
            waiter: asyncio.Future[BackendConnection | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(self.wait_timeout):
                    handed = await waiter
            except TimeoutError:
                if _handed(waiter):  # just as the wait ended: take it after all
                    handed = waiter.result()
                else:
                    raise self._exhausted() from None
            except BaseException:
                if _handed(waiter):  # given to us as we were cancelled: pass it on
                    got = waiter.result()
                    if got is None:
                        self._slot_freed()  # the slot counted for us
                    else:
                        self._hand_over(got)
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if handed is None:
                return None  # a slot freed for us (counted already)
            if handed.broken:
                self._slot_freed()
                continue
            try:
                return self._checked(handed)
            except NotPrimary:
                self._slot_freed()
                raise

    def _exhausted(self) -> PoolExhausted:
        return PoolExhausted(
            f"all {self.max_size} connections to {self.key.member_name} are in use "
            f"and none became free within {self.wait_timeout * 1000:.0f} ms; "
            "retry later, or raise the proxy's pool size (proxy.poolSize, "
            "--pool-size) or its wait (proxy.poolTimeoutMs, --pool-timeout-ms)"
        )

    def _hand_over(self, conn: BackendConnection | None) -> None:
        """A reset connection (or, None, a free slot) to the longest waiter, else idle."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                if conn is None:
                    self._size += 1
                waiter.set_result(conn)
                return
        if conn is not None:
            self._idle.append(conn)

    def _slot_freed(self) -> None:
        """A connection counted in ``size`` is gone: a waiter may open a new one."""
        self._size -= 1
        if not self.retired:
            self._hand_over(None)

    def _checked(self, conn: BackendConnection) -> BackendConnection:
        """``conn`` if this pool's member may have it for its role; else it is closed and
        :class:`NotPrimary` raised (the caller counts the connection gone)."""
        if self.key.epoch == FOLLOWER_EPOCH:
            return conn
        why = not_writable(conn.params)
        if why is None:
            return conn
        conn.close()
        reason = (
            f"{self.key.member_name} ({self.key.address}) is named primary at epoch "
            f"{self.key.epoch} but {why}"
        )
        self.on_not_primary(reason)
        raise NotPrimary(reason)

    async def _check_epoch(self, conn: BackendConnection) -> None:
        """A new primary connection: the member's own epoch must not be older than the
        topology's (a member keeps its epoch while it runs, so once per connection)."""
        error = await conn.run_hidden(epoch_check_sql(self.key.epoch), self.connect_timeout)
        if error is not None:
            conn.close()
            reason = (
                f"{self.key.member_name} ({self.key.address}) is named primary at epoch "
                f"{self.key.epoch} but {error}"
            )
            self.on_not_primary(reason)
            raise NotPrimary(reason)

    def release(self, conn: BackendConnection) -> None:
        """Take a connection back; reset it in the background before reuse."""
        conn.attach(None)
        if self._drop(conn):
            return
        task = asyncio.get_running_loop().create_task(self._reset(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def give_back(self, conn: BackendConnection) -> None:
        """Transaction pooling: take back an idle connection without resetting it; what it
        still has (prepared statements, SETs) is recorded on it and the next session
        brings it to its own state (``session.replicated``)."""
        conn.attach(None)
        if not self._drop(conn):
            self._hand_over(conn)

    def _drop(self, conn: BackendConnection) -> bool:
        """Close ``conn`` if it may not be lent again (broken, busy, dirty or cancelled)."""
        if conn.broken or self.retired or not conn.idle or conn.cancelled:
            conn.close()
            self._slot_freed()
            return True
        return False

    async def _reset(self, conn: BackendConnection) -> None:
        try:
            error = await conn.run_hidden(RESET_SQL, self.connect_timeout)
        except (BackendError, TimeoutError) as e:
            error = str(e)
        if error is not None or conn.broken or self.retired or not conn.idle:
            if error:
                log.info("dropping connection to %s: reset failed: %s", self.key.member_name, error)
            conn.close()
            self._slot_freed()
        else:
            conn.statements.clear()
            conn.settings = ()
            self._hand_over(conn)

    def retire(self) -> None:
        """Never lend again; close idle connections now, borrowed ones on return, and
        stop connects under way."""
        self.retired = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(
                    BackendError(f"{self.key.member_name} is no longer in this role")
                )
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

    def __init__(
        self,
        *,
        max_size: int,
        connect_timeout: float,
        wait_timeout: float = 5.0,
        on_not_primary: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.wait_timeout = wait_timeout
        self.on_not_primary = on_not_primary
        """Called with the reason when a primary's pool refuses a connection."""
        self._pools: dict[PoolKey, Pool] = {}

    def get(self, key: PoolKey, credentials: Credentials) -> Pool:
        pool = self._pools.get(key)
        if pool is None or pool.retired:
            pool = Pool(
                key,
                credentials,
                max_size=self.max_size,
                connect_timeout=self.connect_timeout,
                wait_timeout=self.wait_timeout,
                on_not_primary=self.on_not_primary,
            )
            self._pools[key] = pool
        return pool

    def counts(self) -> dict[tuple[str, str], int]:
        """Connections by (member, ``idle`` | ``in-use``), for metrics."""
        out: dict[tuple[str, str], int] = {}
        for key, pool in self._pools.items():
            for state, n in (("idle", pool.idle), ("in-use", pool.size - pool.idle)):
                out[(key.member_name, state)] = out.get((key.member_name, state), 0) + n
        return out

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
