"""The position monitor against a real PostgreSQL (consistency/monitor.py).

The ``pg_module_server`` fixture is one primary; listing it also as a "follower"
exercises the follower path (a member not in recovery reports its insert
position, as a freshly promoted follower would). Real followers with lag are
covered by the end-to-end consistency test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from pgshard_proxy.consistency.monitor import (
    Connect,
    MonitorSettings,
    PositionMonitor,
    PositionUnavailable,
)
from pgshard_proxy.contract import positions, statement_log
from pgshard_proxy.contract.topology import Member, Shard, Topology
from tests.support import net
from tests.support.pgserver import PgServer

FAST = MonitorSettings(
    poll_interval=0.02, connect_timeout=2, query_timeout=2, reconnect_delay=0.05, capture_timeout=5
)


def topology_of(server: PgServer, *extra_followers: Member) -> Topology:
    address = f"{server.host}:{server.port}"
    primary = Member("p", address, server.dsn)
    follower = Member("f", address, server.dsn)
    return Topology(shards=(Shard(0, 1, primary, (follower, *extra_followers)),))


@contextlib.asynccontextmanager
async def watching(
    topology: Topology, connect: Connect | None = None, settings: MonitorSettings = FAST
) -> AsyncIterator[PositionMonitor]:
    """A started monitor of ``topology`` (connecting with ``connect`` if given), closed on exit."""
    monitor = (
        PositionMonitor(settings) if connect is None else PositionMonitor(settings, connect=connect)
    )
    await monitor.start(topology)
    try:
        yield monitor
    finally:
        await monitor.close()


async def until(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class CountingConnection:
    """A real asyncpg connection that counts position queries and can hold their answers."""

    def __init__(self, conn: Any, hold: asyncio.Event | None) -> None:
        self._conn = conn
        self.queries = 0
        self.hold = hold

    async def fetchval(self, sql: str, timeout: float) -> Any:
        value = await self._conn.fetchval(sql, timeout=timeout)
        # Counted once the server has answered, so a test that waits for the count
        # knows the position was read before anything it does next.
        self.queries += 1
        if self.hold is not None:
            await self.hold.wait()
        return value

    def is_closed(self) -> bool:
        return bool(self._conn.is_closed())

    def terminate(self) -> None:
        self._conn.terminate()


@pytest.fixture
async def writer(pg_module_server: PgServer) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_module_server.dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS t (id serial PRIMARY KEY, v text)")
    try:
        yield conn
    finally:
        await conn.close()


async def test_positions_follow_writes(
    pg_module_server: PgServer, writer: asyncpg.Connection
) -> None:
    async with watching(topology_of(pg_module_server)) as monitor:
        await until(lambda: monitor.replayed("f") is not None, "the follower's position")
        before = await monitor.primary_position(0)
        await writer.execute("INSERT INTO t (v) SELECT 'x' FROM generate_series(1, 100)")
        committed = positions.parse_lsn(await writer.fetchval("SELECT pg_current_wal_lsn()::text"))
        after = await monitor.primary_position(0)
        assert before < committed <= after
        assert await monitor.wait_for("f", after, timeout=10)
        assert monitor.replayed_map["f"] >= after
        # far in the future: bounded wait, then False
        assert not await monitor.wait_for("f", positions.Position(after + 10**12), timeout=0.2)
        assert not await monitor.wait_for("p", after, timeout=0.2)  # not watched as a follower
        assert monitor.replayed("p") is None
    assert monitor.replayed_map == {}


async def test_a_waiting_reader_wakes_when_the_position_arrives(
    pg_module_server: PgServer, writer: asyncpg.Connection
) -> None:
    async with watching(topology_of(pg_module_server)) as monitor:
        target = positions.Position(await monitor.primary_position(0) + 1)
        waiting = asyncio.ensure_future(monitor.wait_for("f", target, timeout=20))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await writer.execute("INSERT INTO t (v) VALUES ('wake')")
        assert await waiting


async def test_primary_position_starts_after_the_call_and_batches(
    pg_module_server: PgServer, writer: asyncpg.Connection
) -> None:
    hold = asyncio.Event()
    conns: list[CountingConnection] = []

    async def connect(dsn: str, timeout: float) -> CountingConnection:
        c = CountingConnection(await asyncpg.connect(dsn, timeout=timeout), hold)
        conns.append(c)
        return c

    async with watching(
        Topology(shards=(Shard(0, 1, topology_of(pg_module_server).shards[0].primary),)), connect
    ) as monitor:
        early = [asyncio.ensure_future(monitor.primary_position(0)) for _ in range(10)]
        await until(lambda: bool(conns) and conns[0].queries == 1, "the first query")
        # A query is running (held): a caller arriving now must not join it.
        await writer.execute("INSERT INTO t (v) VALUES ('after')")
        late = [asyncio.ensure_future(monitor.primary_position(0)) for _ in range(10)]
        await asyncio.sleep(0.05)
        hold.set()
        early_pos = {await f for f in early}
        late_pos = {await f for f in late}
        assert len(early_pos) == 1 and len(late_pos) == 1
        assert early_pos.pop() < late_pos.pop()
        assert conns[0].queries == 2


async def test_a_reading_started_after_a_ticket_answers_for_it(
    pg_module_server: PgServer, writer: asyncpg.Connection
) -> None:
    """``since=``: a reading whose query started after the ticket bounds every commit made
    before the ticket, so it answers at once; a ticket taken after it needs a new one."""
    async with watching(topology_of(pg_module_server)) as monitor:
        await writer.execute("INSERT INTO t (v) VALUES ('before the ticket')")
        committed = positions.parse_lsn(await writer.fetchval("SELECT pg_current_wal_lsn()::text"))
        ticket = monitor.ticket()
        reading = await monitor.primary_position(0)  # started after the ticket
        assert reading >= committed
        await writer.execute("INSERT INTO t (v) VALUES ('after the reading')")
        assert await monitor.primary_position(0, since=ticket) == reading  # no new query
        later = monitor.ticket()
        assert await monitor.primary_position(0, since=later) > reading  # a new query


async def test_reconnects_after_its_connections_are_killed(
    pg_module_server: PgServer, writer: asyncpg.Connection
) -> None:
    async with watching(topology_of(pg_module_server)) as monitor:
        await until(lambda: monitor.replayed("f") is not None, "the follower's position")
        await monitor.primary_position(0)
        killed = await writer.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        assert killed >= 2
        await writer.execute("INSERT INTO t (v) VALUES ('again')")
        after = await monitor.primary_position(0)  # retried on a new connection
        assert await monitor.wait_for("f", after, timeout=10)


async def test_unreachable_members_are_unknown_and_leave_cleanly(
    pg_module_server: PgServer,
) -> None:
    host = net.random_loopback()
    ghost = Member("ghost", f"{host}:{net.free_port(host)}", f"postgresql://x@{host}:1/db")
    async with watching(topology_of(pg_module_server, ghost)) as monitor:
        await until(lambda: monitor.replayed("f") is not None, "the follower's position")
        assert monitor.replayed("ghost") is None
        assert not await monitor.wait_for("ghost", positions.Position(1), timeout=0.2)
        await monitor.update(topology_of(pg_module_server))  # ghost leaves the topology
        assert not await monitor.wait_for("ghost", positions.Position(1), timeout=0.2)
        await monitor.update(Topology(shards=(Shard(0, 2, None),)))
        with pytest.raises(PositionUnavailable, match="shard 0 has no primary"):
            await monitor.primary_position(0)


async def test_a_follower_that_stops_answering_drops_out_until_it_answers_again(
    pg_module_server: PgServer,
) -> None:
    """A frozen follower keeps its socket open: its probe must end by the monitor's own
    bound (the held answer below ignores the driver's timeout), and waiters give up."""
    answering = asyncio.Event()
    answering.set()
    conns: list[CountingConnection] = []

    async def connect(dsn: str, timeout: float) -> CountingConnection:
        await answering.wait()  # a frozen server does not finish the login either
        c = CountingConnection(await asyncpg.connect(dsn, timeout=timeout), answering)
        conns.append(c)
        return c

    settings = MonitorSettings(
        poll_interval=0.02, connect_timeout=0.5, query_timeout=0.5, reconnect_delay=0.05
    )
    async with watching(topology_of(pg_module_server), connect, settings) as monitor:
        await until(lambda: monitor.replayed("f") is not None, "the follower's position")
        far = positions.Position(monitor.replayed_map["f"] + 10**12)
        waiter = asyncio.ensure_future(monitor.wait_for("f", far, timeout=3600))
        answering.clear()  # the follower freezes
        await until(lambda: monitor.replayed("f") is None, "the silent follower to drop out")
        assert not await asyncio.wait_for(waiter, 60), "a waiter stayed on a silent follower"
        answering.set()  # it wakes up
        await until(lambda: monitor.replayed("f") is not None, "the follower to come back")
        assert len(conns) >= 2  # a fresh connection after the silent one


async def test_statement_mode_positions_are_log_sequence_numbers(pg_server: PgServer) -> None:
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        await conn.execute(statement_log.SCHEMA_SQL)
        topo = dataclasses.replace(topology_of(pg_server), method="statement")
        async with watching(topo) as monitor:
            await until(lambda: monitor.replayed("f") == 0, "position 0 of an empty log")
            for _ in range(3):
                await conn.fetchval(statement_log.APPEND_SQL, "[]", "{}")
            await until(lambda: monitor.replayed("f") == 3, "position 3")
            assert await monitor.primary_position(0) == 3
    finally:
        await conn.close()
