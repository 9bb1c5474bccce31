"""Replication positions: followers' replayed positions continuously, the primary's on demand.

One :class:`PositionMonitor` per proxy. The proxy's topology loop calls
:meth:`~PositionMonitor.update` with every topology; client sessions read
:attr:`~PositionMonitor.replayed_map` (the router's input), wait for a lagging
follower with :meth:`~PositionMonitor.wait_for`, and capture their write
position with :meth:`~PositionMonitor.primary_position` right after a write
transaction's ReadyForQuery went to the client.

Each member gets one small asyncpg connection and one task (:class:`_Watch`).
A follower's task polls ``pg_last_wal_replay_lsn()`` every ``poll_interval``
(faster while a session waits on it); a member it cannot reach, or whose probe
is not answered within ``query_timeout`` (a frozen server keeps its sockets open
and never answers), is dropped from the map at once, so the router stops
choosing it and sessions waiting for it give up; it is back in the map with its
first answer after a reconnect. A primary's task runs one
``pg_current_wal_insert_lsn()`` per batch of requests (the *insert* position:
with ``synchronous_commit = off`` the write position may still be behind a
commit record that is already visible). Every wait is bounded by a setting.

A session's *floor* (cross-session causality) is a primary position read by a query
that started after the session connected: :meth:`~PositionMonitor.ticket` marks the
session's start, and :meth:`~PositionMonitor.primary_position` with ``since=`` that
ticket answers from the latest reading if its query started later, else waits for a
new one. Tickets and query starts draw from one counter, so "later" needs no clock.

Positions are WAL LSNs (``wal`` replication), or in ``statement`` mode the highest
sequence number in the member's statement log (a follower's applier copies each entry
it applies into its own log, so that is its applied position).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import types
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg

from pgshard_proxy.contract import pgtls, positions, statement_log
from pgshard_proxy.contract.positions import Position
from pgshard_proxy.contract.topology import Member, Topology

log = logging.getLogger(__name__)

POSITION_SQL = (
    "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_insert_lsn() END)::text"
)
"""A follower's replayed position; a member that is (now) a primary has everything it wrote."""

Connect = Callable[[str, float], Awaitable[Any]]
"""``connect(dsn, timeout)`` -> an asyncpg-like connection (a seam for tests)."""


async def _asyncpg_connect(dsn: str, timeout: float) -> Any:
    return await asyncpg.connect(**pgtls.asyncpg_args(dsn), timeout=timeout)


@dataclasses.dataclass(frozen=True)
class MonitorSettings:
    poll_interval: float = 0.05
    """Seconds between two reads of a follower's replayed position."""
    wait_poll_interval: float = 0.005
    """Seconds between two reads while a session waits for that follower."""
    connect_timeout: float = 2.0
    """Bound on connecting to a member."""
    query_timeout: float = 1.0
    """Bound on one position query: a follower that does not answer within it stops
    being a read target until it answers again."""
    reconnect_delay: float = 0.5
    """Pause before reconnecting to a member that failed."""
    capture_timeout: float = 3.0
    """Bound on :meth:`PositionMonitor.primary_position` (including a reconnect)."""


class PositionUnavailable(RuntimeError):
    """The primary's position could not be read in time; the caller must assume the worst."""


@dataclasses.dataclass(frozen=True)
class _Target:
    member: Member
    shard: int
    primary: bool
    method: str = "wal"
    """``statement``: positions are the statement log's sequence numbers."""


class _Watch:
    """One member: its connection, its task, its waiters and pending primary requests."""

    def __init__(
        self,
        target: _Target,
        settings: MonitorSettings,
        connect: Connect,
        replayed: dict[str, Position],
        stamps: Callable[[], int],
    ) -> None:
        self.target = target
        self._stamps = stamps
        self.latest: tuple[int, Position] | None = None
        """Primary: (stamp of the query's start, its answer) of the latest reading."""
        self._settings = settings
        self._connect = connect
        self._replayed = replayed
        self._waiters: list[tuple[Position, asyncio.Future[bool]]] = []
        self._request: asyncio.Future[Position] | None = None
        self._wake = asyncio.Event()
        self._problem: str | None = None
        self.task = asyncio.create_task(self._run(), name=f"position-monitor:{self.name}")

    @property
    def name(self) -> str:
        return self.target.member.name

    # --- called by sessions -------------------------------------------------------------

    async def wait_for(self, pos: Position, timeout: float) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (pos, fut)
        self._waiters.append(entry)
        self._wake.set()  # poll now, and faster while someone waits
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    async def position_after_now(self) -> Position:
        # Join a queued request (its query has not started, so it starts after
        # this call); never one already running.
        if self._request is None:
            self._request = asyncio.get_running_loop().create_future()
            self._wake.set()
        # shield: one caller timing out must not cancel the others' request
        return await asyncio.shield(self._request)

    # --- the task -----------------------------------------------------------------------

    async def _run(self) -> None:
        conn: Any = None
        try:
            while True:
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncio.wait_for(
                            self._connect(self.target.member.dsn, self._settings.connect_timeout),
                            self._settings.connect_timeout,
                        )
                        self._recovered()
                    if self.target.primary:
                        await self._serve_requests(conn)
                    else:
                        self._publish(await self._query(conn))
                        await self._pause()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # asyncpg/OS/timeout errors: drop, retry later
                    self._failed(e)
                    if conn is not None:
                        conn.terminate()
                        conn = None
                    await asyncio.sleep(self._settings.reconnect_delay)
        finally:
            if conn is not None:
                conn.terminate()
            self._replayed.pop(self.name, None)
            for _, fut in self._waiters:
                if not fut.done():
                    fut.set_result(False)
            if self._request is not None and not self._request.done():
                self._request.set_exception(PositionUnavailable(f"{self.name} left the topology"))
                self._request.exception()  # retrieved: callers may all have timed out

    async def _query(self, conn: Any) -> Position | None:
        # Our own bound as well as the driver's: the probe must end even if the
        # driver's timeout handling waits on the (frozen) server.
        async with asyncio.timeout(self._settings.query_timeout):
            if self.target.method == "statement":
                seq = await conn.fetchval(
                    statement_log.POSITION_SQL, timeout=self._settings.query_timeout
                )
                return None if seq is None else Position(int(seq))
            text = await conn.fetchval(POSITION_SQL, timeout=self._settings.query_timeout)
        return None if text is None else positions.parse_lsn(text)

    async def _serve_requests(self, conn: Any) -> None:
        while True:
            if self._request is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            fut, self._request = self._request, None
            stamp = self._stamps()
            try:
                pos = await self._query(conn)
            except BaseException:
                self._requeue(fut)
                raise
            if pos is None:
                self._requeue(fut)
                raise PositionUnavailable(f"{self.name} returned no position")
            self.latest = (stamp, pos)
            if not fut.done():
                fut.set_result(pos)

    def _requeue(self, fut: asyncio.Future[Position]) -> None:
        """A failed query's callers get the next query's answer (it starts after them too)."""
        if self._request is None:
            self._request = fut
        else:
            later = self._request

            def copy(done: asyncio.Future[Position]) -> None:
                if fut.done():
                    return
                if done.cancelled() or done.exception() is not None:
                    fut.set_exception(PositionUnavailable(f"{self.name}: position unavailable"))
                    fut.exception()
                else:
                    fut.set_result(done.result())

            later.add_done_callback(copy)

    async def _pause(self) -> None:
        interval = (
            self._settings.wait_poll_interval if self._waiters else self._settings.poll_interval
        )
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), interval)

    def _publish(self, pos: Position | None) -> None:
        if pos is None:
            self._replayed.pop(self.name, None)
            return
        self._replayed[self.name] = pos
        for wanted, fut in self._waiters:
            if wanted <= pos and not fut.done():
                fut.set_result(True)

    def _failed(self, e: Exception) -> None:
        self._replayed.pop(self.name, None)
        # Sessions waiting for this follower go elsewhere now rather than at their timeout.
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_result(False)
        problem = f"{type(e).__name__}: {e}"
        if problem != self._problem:
            log.warning(
                "position monitor: %s at %s unreachable: %s",
                self.name,
                self.target.member.address,
                problem,
            )
            self._problem = problem

    def _recovered(self) -> None:
        if self._problem is not None:
            log.info("position monitor: %s reachable again", self.name)
            self._problem = None


class PositionMonitor:
    """Positions of every member of the current topology (see the module docstring)."""

    def __init__(
        self, settings: MonitorSettings | None = None, *, connect: Connect = _asyncpg_connect
    ) -> None:
        self.settings = settings or MonitorSettings()
        self._connect = connect
        self._replayed: dict[str, Position] = {}
        self.replayed_map: Mapping[str, Position] = types.MappingProxyType(self._replayed)
        """Follower name -> latest replayed position; live, read-only (pass to the router)."""
        self._watches: dict[str, _Watch] = {}
        self._primaries: dict[int, str] = {}
        self._capture_problem: str | None = None
        self._stamps = itertools.count(1).__next__

    def ticket(self) -> int:
        """A mark of now: a primary reading taken later bounds every commit acknowledged
        before this call (pass it as ``primary_position(since=…)``)."""
        return self._stamps()

    def capture_result(self, problem: str | None) -> None:
        """A session's position capture failed (``problem``) or worked (None): logged once
        per change, not for every write of every session."""
        if problem == self._capture_problem:
            return
        if problem is None:
            log.info("position captures work again")
        else:
            log.warning("session position capture failed, reading from the primary: %s", problem)
        self._capture_problem = problem

    async def start(self, topology: Topology) -> None:
        await self.update(topology)

    async def update(self, topology: Topology) -> None:
        """Follow a new topology: watch new members, drop gone ones, restart changed ones."""
        wanted: dict[str, _Target] = {}
        primaries: dict[int, str] = {}
        for shard in topology.shards:
            if shard.primary is not None:
                wanted[shard.primary.name] = _Target(
                    shard.primary, shard.index, True, topology.method
                )
                primaries[shard.index] = shard.primary.name
            for f in shard.followers:
                wanted[f.name] = _Target(f, shard.index, False, topology.method)
        stale = [self._watches.pop(n) for n, w in list(self._watches.items())
                 if wanted.get(n) != w.target]  # fmt: skip
        for name, target in wanted.items():
            if name not in self._watches:
                self._watches[name] = _Watch(
                    target, self.settings, self._connect, self._replayed, self._stamps
                )
        self._primaries = primaries
        await self._stop(stale)

    async def close(self) -> None:
        watches = list(self._watches.values())
        self._watches.clear()
        self._primaries.clear()
        await self._stop(watches)

    def replayed(self, member_name: str) -> Position | None:
        """Latest known replayed position of a follower; None if unknown or unreachable."""
        return self._replayed.get(member_name)

    async def wait_for(self, member_name: str, pos: Position, timeout: float) -> bool:
        """True as soon as the follower has replayed ``pos``; False after ``timeout`` seconds
        (or at once if the monitor does not watch it as a follower)."""
        current = self._replayed.get(member_name)
        if current is not None and current >= pos:
            return True
        watch = self._watches.get(member_name)
        if watch is None or watch.target.primary:
            return False
        return await watch.wait_for(pos, timeout)

    async def primary_position(self, shard: int, *, since: int | None = None) -> Position:
        """The shard primary's WAL insert position, read by a query that *starts* after this
        call, so it is at or after every commit the caller has seen acknowledged. Concurrent
        callers share queries. Raises :class:`PositionUnavailable` after ``capture_timeout``.

        ``since``: a :meth:`ticket`; a query that started after it will do (the latest
        reading answers at once if it did), so the position is at or after every commit
        acknowledged before the ticket was taken."""
        name = self._primaries.get(shard)
        watch = self._watches.get(name) if name is not None else None
        if watch is None:
            raise PositionUnavailable(f"shard {shard} has no primary in the topology")
        if since is not None and watch.latest is not None and watch.latest[0] > since:
            return watch.latest[1]
        try:
            return await asyncio.wait_for(watch.position_after_now(), self.settings.capture_timeout)
        except TimeoutError:
            raise PositionUnavailable(
                f"primary {name} of shard {shard} did not report its position within "
                f"{self.settings.capture_timeout}s"
            ) from None

    @staticmethod
    async def _stop(watches: list[_Watch], attempts: int = 5, wait: float = 0.5) -> None:
        """Cancel the watches' tasks and wait (bounded) for them to end. The proxy's
        topology loop awaits this: a task that shrugs off a cancellation (Python 3.11's
        ``asyncio.wait_for`` can) is cancelled again, and at worst left behind."""
        tasks = {w.task for w in watches}
        for _ in range(attempts):
            if not tasks:
                return
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=wait)
        names = ", ".join(sorted(t.get_name() for t in tasks))
        log.error("position monitor: %s did not stop when cancelled; left behind", names)
