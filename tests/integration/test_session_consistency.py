"""A session's consistency glue with a real position monitor (consistency/session.py).

Most tests list one server as primary ``p`` and as "follower" ``f`` (see
test_position_monitor.py); the last one uses a real follower that applies
commits a second late.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from pgshard_proxy.consistency.monitor import MonitorSettings, PositionMonitor
from pgshard_proxy.consistency.session import SessionConsistency
from pgshard_proxy.consistency.tracker import Mode
from pgshard_proxy.contract import positions
from pgshard_proxy.contract.topology import Member, Shard, Topology
from pgshard_proxy.routing.classify import classify
from pgshard_proxy.routing.router import Reason, Role, Track
from tests.support import net, pgserver
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
        assert s.route_now(READ, shard) is None  # the first read awaits the floor
        first = await s.route(READ, shard)
        assert first.role is Role.FOLLOWER
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


async def test_a_new_sessions_first_read_starts_at_the_primarys_position(
    shard: Shard, pg_module_server: PgServer
) -> None:
    """Cross-session causality: what anyone committed before the session started is at or
    below the position its first read needs; eventual sessions take no floor."""
    monitor = await started(shard)
    other = await asyncpg.connect(pg_module_server.dsn)
    try:
        await other.execute(
            "CREATE TABLE IF NOT EXISTS floor_t (i int); INSERT INTO floor_t VALUES (1)"
        )
        committed = await other.fetchval("SELECT pg_current_wal_lsn()::text")
        s = SessionConsistency(monitor, mode=Mode.SESSION, max_wait_ms=2000)
        eventual = SessionConsistency(monitor, mode=Mode.EVENTUAL, max_wait_ms=0)
        try:
            assert s.route_now(READ, shard) is None
            r = await s.route(READ, shard)
            assert r.role is Role.FOLLOWER and r.min_position is not None
            assert r.min_position >= positions.parse_lsn(committed)
            s.after_ready(r, 0, idle=True)
            again = s.route_now(READ, shard)  # the floor is taken once
            assert again is not None and again.role is Role.FOLLOWER
            e = eventual.route_now(READ, shard)
            assert e is not None and e.role is Role.FOLLOWER and eventual.tokens.required(0) is None
        finally:
            await s.close()
            await eventual.close()
    finally:
        await other.close()
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


async def test_a_floor_that_cannot_be_read_sends_the_first_read_to_the_primary(
    pg_module_server: PgServer,
) -> None:
    """No floor, no follower: the primary has everything committed before the session."""
    host = net.random_loopback()
    ghost = Member("p", f"{host}:{net.free_port(host)}", f"postgresql://x@{host}:1/postgres")
    shard = shard_of(pg_module_server, primary=ghost)
    monitor = await started(shard)
    s = SessionConsistency(monitor, mode=Mode.SESSION, max_wait_ms=100)
    try:
        assert s.route_now(READ, shard) is None
        r = await s.route(READ, shard)
        assert (r.role, r.reason) == (Role.PRIMARY, Reason.CAPTURE_FAILED)
    finally:
        await s.close()
        await monitor.close()


@pytest.fixture(scope="module")
def lagging(pg_module_server: PgServer) -> Iterator[PgServer]:
    """A real streaming follower of the module's server that applies commits 1 s late."""
    with tempfile.TemporaryDirectory(prefix="pgshard-test-") as d:
        base = Path(d)
        base.chmod(0o755)
        follower = pgserver.make_follower(pg_module_server, base, "lag", apply_delay_ms=1000)
        try:
            yield follower
        finally:
            follower.stop()


async def test_a_real_lagging_follower(pg_module_server: PgServer, lagging: PgServer) -> None:
    primary = pg_module_server
    shard = Shard(
        0,
        1,
        Member("p", f"{primary.host}:{primary.port}", primary.dsn),
        (Member("lag", f"{lagging.host}:{lagging.port}", lagging.dsn),),
    )
    writer = await asyncpg.connect(primary.dsn)
    follower = await asyncpg.connect(lagging.dsn)
    monitor = PositionMonitor(FAST)
    await monitor.start(Topology(shards=(shard,)))
    impatient = SessionConsistency(monitor, mode=Mode.SESSION, max_wait_ms=50)
    patient = SessionConsistency(monitor, mode=Mode.SESSION, max_wait_ms=10_000)
    eventual = SessionConsistency(monitor, mode=Mode.EVENTUAL, max_wait_ms=0)
    try:
        await writer.execute("DROP TABLE IF EXISTS lagkv; CREATE TABLE lagkv (k int, v int)")
        await writer.execute("INSERT INTO lagkv VALUES (1, 0)")
        assert await monitor.wait_for("lag", await monitor.primary_position(0), timeout=30)

        async def write(s: SessionConsistency, value: int) -> None:
            r = s.route_now(WRITE, shard)
            assert r is not None and r.role is Role.PRIMARY
            await writer.execute("UPDATE lagkv SET v = $1", value)
            s.after_ready(r, 0, idle=True)

        await write(impatient, 1)
        r = await impatient.route(READ, shard)
        assert (r.role, r.reason) == (Role.PRIMARY, Reason.FOLLOWER_TIMEOUT)

        await write(patient, 2)
        r = await patient.route(READ, shard)
        assert (r.role, r.member.name) == (Role.FOLLOWER, "lag")
        assert await follower.fetchval("SELECT v FROM lagkv") == 2  # read-your-writes, for real

        await writer.execute("UPDATE lagkv SET v = 3")
        r = eventual.route_now(READ, shard)
        assert r is not None and (r.role, r.member.name) == (Role.FOLLOWER, "lag")
        assert await follower.fetchval("SELECT v FROM lagkv") == 2  # eventual: stale, as allowed
    finally:
        for s in (impatient, patient, eventual):
            await s.close()
        await monitor.close()
        await writer.close()
        await follower.close()
