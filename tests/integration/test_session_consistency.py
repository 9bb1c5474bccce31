"""A session's consistency glue with a real position monitor (consistency/session.py).

The server is listed as primary ``p`` and as "follower" ``f`` (see
test_position_monitor.py); lag and real followers are the end-to-end test's job.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pgshard_proxy.consistency.monitor import MonitorSettings, PositionMonitor
from pgshard_proxy.consistency.session import SessionConsistency
from pgshard_proxy.consistency.tracker import Mode
from pgshard_proxy.contract.topology import Member, Shard, Topology
from pgshard_proxy.routing.classify import classify
from pgshard_proxy.routing.router import Reason, Role, Track
from tests.support import net
from tests.support.pgserver import PgServer

FAST = MonitorSettings(poll_interval=0.02, reconnect_delay=0.05, capture_timeout=1)
READ = classify("SELECT v FROM kv WHERE k = $1")
WRITE = classify("UPDATE kv SET v = v + 1 WHERE k = $1 RETURNING v")


def shard_of(server: PgServer, primary: Member | None = None) -> Shard:
    address = f"{server.host}:{server.port}"
    return Shard(
        0,
        1,
        primary or Member("p", address, server.dsn),
        (Member("f", address, server.dsn),),
    )


async def started(shard: Shard) -> PositionMonitor:
    monitor = PositionMonitor(FAST)
    await monitor.start(Topology(shards=(shard,)))
    for _ in range(1500):
        if monitor.replayed("f") is not None:
            return monitor
        await asyncio.sleep(0.01)
    await monitor.close()
    raise AssertionError("the monitor never saw f")


@pytest.fixture
async def shard(pg_module_server: PgServer) -> AsyncIterator[Shard]:
    yield shard_of(pg_module_server)


async def test_reads_after_a_write_wait_for_the_capture(shard: Shard) -> None:
    monitor = await started(shard)
    s = SessionConsistency(monitor, mode=Mode.SESSION, max_wait_ms=2000)
    try:
        first = s.route_now(READ, shard)
        assert first is not None and first.role is Role.FOLLOWER
        s.after_ready(first, 0, idle=True)
        assert s.tokens.sticky_follower(0) == "f"

        w = s.route_now(WRITE, shard)
        assert w is not None and (w.role, w.track) == (Role.PRIMARY, Track.CAPTURE_PRIMARY)
        s.after_ready(w, 0, idle=True)
        assert s.route_now(READ, shard) is None  # the capture is running: must await
        r = await s.route(READ, shard)
        token = s.tokens.required(0)
        assert token is not None and r.min_position == token
        assert r.role is Role.FOLLOWER and monitor.replayed_map["f"] >= token
        assert s.tokens.sticky_follower(0) is None  # the capture bounds the earlier read
    finally:
        await s.close()
        await monitor.close()


async def test_open_transactions_capture_only_when_they_end(shard: Shard) -> None:
    monitor = await started(shard)
    s = SessionConsistency(monitor, mode=Mode.SESSION, max_wait_ms=100)
    try:
        begin = s.route_now(classify("BEGIN"), shard)
        assert begin is not None and begin.role is Role.PRIMARY
        s.after_ready(begin, 0, idle=False)
        inside = s.route_now(READ, shard, in_transaction=begin)
        assert inside is not None and inside.reason is Reason.IN_TRANSACTION
        s.after_ready(inside, 0, idle=False)
        assert s.tokens.required(0) is None
        commit = s.route_now(classify("COMMIT"), shard, in_transaction=begin)
        assert commit is not None
        s.after_ready(commit, 0, idle=True)
        await s.route(READ, shard)
        assert s.tokens.required(0) is not None
    finally:
        await s.close()
        await monitor.close()


async def test_proxy_settings(shard: Shard) -> None:
    monitor = await started(shard)
    s = SessionConsistency(monitor, mode=Mode.SESSION, max_wait_ms=100)
    try:
        assert s.apply("consistency", "strong") is None and s.show("consistency") == "strong"
        r = s.route_now(READ, shard)
        assert r is not None and r.role is Role.PRIMARY
        refusal = s.apply("consistency", "sometimes")
        assert refusal is not None and refusal.sqlstate == "22023"
        assert "expected one of: session, eventual, strong" in refusal.message
        assert s.mode is Mode.STRONG  # unchanged by the bad value
        assert s.apply("consistency", "default") is None and s.mode is Mode.SESSION
        unknown = s.apply("colour", "red")
        assert unknown is not None and unknown.sqlstate == "42704"
    finally:
        await s.close()
        await monitor.close()


async def test_a_failed_capture_sends_reads_to_the_primary(pg_module_server: PgServer) -> None:
    host = net.random_loopback()
    ghost = Member("p", f"{host}:{net.free_port(host)}", f"postgresql://x@{host}:1/postgres")
    shard = shard_of(pg_module_server, primary=ghost)
    monitor = await started(shard)
    s = SessionConsistency(monitor, mode=Mode.SESSION, max_wait_ms=100)
    try:
        w = s.route_now(WRITE, shard)
        assert w is not None
        s.after_ready(w, 0, idle=True)
        r = await s.route(READ, shard)
        assert (r.role, r.reason) == (Role.PRIMARY, Reason.CAPTURE_FAILED)
    finally:
        await s.close()
        await monitor.close()
