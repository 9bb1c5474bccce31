"""The proxy holds requests while the topology shows a shard ``switching`` (issue 14).

A real PostgreSQL server behind the real proxy, whose topology file the test
writes by hand, playing the control plane: announce a switchover, then publish
the "new" primary (a new epoch; the same server), or never finish. Held requests
run once the new primary is published; a transaction already open is not held;
beyond ``--buffer-max-requests`` requests fail at once, and at
``--buffer-window-ms`` held ones fail with a clear error; none of them ran.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from pgshard_proxy.contract import topology
from tests.support import pgserver, replicated
from tests.support import proxy as proxy_support

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""


def _topology(server: pgserver.PgServer, epoch: int, until: float | None) -> str:
    member = topology.Member("s0m0", f"{server.host}:{server.port}", server.dsn)
    switching = topology.Switching(target="s0m1", since=time.time(), until=until) if until else None
    shard = topology.Shard(index=0, epoch=epoch, primary=member, switching=switching)
    return topology.to_json(topology.Topology(shards=(shard,), version=epoch))


async def _setup(server: pgserver.PgServer) -> None:
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        await conn.execute("GRANT ALL ON t TO PUBLIC")
    finally:
        await conn.close()


async def _rows(server: pgserver.PgServer) -> list[int]:
    conn = await asyncpg.connect(server.dsn)
    try:
        return [r[0] for r in await conn.fetch("SELECT id FROM t ORDER BY id")]
    finally:
        await conn.close()


async def _announce(
    proxy: proxy_support.ProxyProc,
    path: Path,
    server: pgserver.PgServer,
    epoch: int,
    until: float | None,
) -> None:
    """Write the topology (switching until ``until``, or not) and return once the proxy
    has read it (its log says so; it polls the file every 0.2 s)."""
    switching = "shard 0 is switching to s0m1"
    seen = proxy.log.read_text(errors="replace").count(switching)
    await asyncio.to_thread(path.write_text, _topology(server, epoch, until))
    if until is not None:
        await _until_logged(proxy, switching, seen + 1)
    else:
        await _until_logged(proxy, f"topology version {epoch}:")


async def test_held_until_the_new_primary_is_published(
    pg_tmp: Path, pg_server: pgserver.PgServer
) -> None:
    await _setup(pg_server)
    path = pg_tmp / "topology.json"
    path.write_text(_topology(pg_server, 1, None))
    proxy = proxy_support.start_proxy(pg_tmp, None, "--buffer-window-ms=20000", topology_file=path)
    sessions = [await asyncpg.connect(proxy.dsn) for _ in range(4)]
    try:
        for i, s in enumerate(sessions):
            await s.execute("INSERT INTO t VALUES ($1)", 100 + i)
        open_tx = sessions[3]
        await open_tx.execute("BEGIN")
        await open_tx.execute("INSERT INTO t VALUES (1)")
        await _announce(proxy, path, pg_server, 1, time.time() + 60)
        held = [
            asyncio.ensure_future(sessions[0].execute("INSERT INTO t VALUES ($1)", 2)),
            asyncio.ensure_future(sessions[1].execute("INSERT INTO t VALUES (3)")),
            asyncio.ensure_future(sessions[2].execute("BEGIN; INSERT INTO t VALUES (4); COMMIT")),
        ]
        # The open transaction is not held: it finishes on the old primary.
        await asyncio.wait_for(open_tx.execute("INSERT INTO t VALUES (5)"), 5)
        await asyncio.wait_for(open_tx.execute("COMMIT"), 5)
        await asyncio.sleep(1.0)
        assert not any(h.done() for h in held), "requests ran during the switchover"
        assert await _rows(pg_server) == [1, 5, 100, 101, 102, 103]
        started = time.monotonic()
        await _announce(proxy, path, pg_server, 2, None)
        await asyncio.wait_for(asyncio.gather(*held), 10)
        print(f"held requests ran {time.monotonic() - started:.2f}s after the new primary")
        assert await _rows(pg_server) == [1, 2, 3, 4, 5, 100, 101, 102, 103]
        # A new session during a switchover waits too, then works.
        await _announce(proxy, path, pg_server, 2, time.time() + 60)
        connecting = asyncio.ensure_future(asyncpg.connect(proxy.dsn))
        await asyncio.sleep(1.0)
        assert not connecting.done()
        await _announce(proxy, path, pg_server, 3, None)
        late = await asyncio.wait_for(connecting, 10)
        assert await late.fetchval("SELECT 1") == 1
        await late.close()
    finally:
        for s in sessions:
            s.terminate()
        proxy.stop()


async def test_buffer_limit_and_a_switchover_that_never_completes(
    pg_tmp: Path, pg_server: pgserver.PgServer
) -> None:
    await _setup(pg_server)
    path = pg_tmp / "topology.json"
    path.write_text(_topology(pg_server, 1, None))
    proxy = proxy_support.start_proxy(
        pg_tmp, None, "--buffer-window-ms=1500", "--buffer-max-requests=2", topology_file=path
    )
    sessions = [await asyncpg.connect(proxy.dsn) for _ in range(4)]
    try:
        await _announce(proxy, path, pg_server, 1, time.time() + 600)

        async def insert(i: int) -> tuple[float, str]:
            started = time.monotonic()
            with pytest.raises(asyncpg.PostgresError) as e:
                await sessions[i].execute("INSERT INTO t VALUES ($1)", i)
            assert e.value.sqlstate == "57P03"
            return time.monotonic() - started, str(e.value)

        first = [asyncio.ensure_future(insert(i)) for i in (0, 1)]
        await asyncio.sleep(0.3)
        for i in (2, 3):
            took, message = await asyncio.wait_for(insert(i), 5)
            assert took < 0.5, f"a request beyond the limit waited {took:.2f}s"
            assert "bufferMaxRequests" in message and "not run" in message
        for took, message in await asyncio.gather(*first):
            assert 1.4 <= took < 5, f"released after {took:.2f}s, window 1.5 s"
            assert "bufferWindowMs 1500" in message and "retry it" in message
        assert await _rows(pg_server) == []
        # The sessions stay usable; once the switchover is over, their writes run.
        await _announce(proxy, path, pg_server, 2, None)
        for i, s in enumerate(sessions):
            await s.execute("INSERT INTO t VALUES ($1)", i)
        assert await _rows(pg_server) == [0, 1, 2, 3]
    finally:
        for s in sessions:
            s.terminate()
        proxy.stop()


async def test_reads_that_may_go_to_a_follower_are_not_held(pg_tmp: Path) -> None:
    primary = pgserver.make_server(pg_tmp, "primary")
    follower = None
    proxy = None
    try:
        follower = pgserver.make_follower(primary, pg_tmp, "f1")
        await _setup(primary)
        path = pg_tmp / "topology.json"

        def publish(epoch: int, until: float | None) -> str:
            shard = topology.Shard(
                index=0,
                epoch=epoch,
                primary=topology.Member("s0m0", f"{primary.host}:{primary.port}", primary.dsn),
                followers=(
                    topology.Member("s0m1", f"{follower.host}:{follower.port}", follower.dsn),
                ),
                switching=topology.Switching("s0m1", time.time(), until) if until else None,
            )
            return topology.to_json(topology.Topology(shards=(shard,), version=epoch))

        path.write_text(publish(1, None))
        proxy = proxy_support.start_proxy(
            pg_tmp, None, "--buffer-window-ms=20000", topology_file=path
        )
        replicated.wait_for_follower_reads(proxy)
        writer, reader = await asyncpg.connect(proxy.dsn), await asyncpg.connect(proxy.dsn)
        try:
            await asyncio.to_thread(path.write_text, publish(1, time.time() + 60))
            await _until_logged(proxy, "shard 0 is switching to s0m1")
            held = asyncio.ensure_future(writer.execute("INSERT INTO t VALUES (1)"))
            for _ in range(5):  # reads keep flowing, from the follower
                assert await asyncio.wait_for(reader.fetchval(replicated.ON_FOLLOWER), 10)
            assert not held.done(), "a write ran during the switchover"
            await asyncio.to_thread(path.write_text, publish(2, None))
            await asyncio.wait_for(held, 10)
            assert await _rows(primary) == [1]
        finally:
            writer.terminate()
            reader.terminate()
    finally:
        if proxy is not None:
            proxy.stop()
        if follower is not None:
            follower.stop()
        primary.stop()


async def _until_logged(
    proxy: proxy_support.ProxyProc, line: str, times: int = 1, timeout: float = 10
) -> None:
    """Until the proxy's log has ``line`` ``times`` times (bounded)."""
    deadline = time.monotonic() + timeout
    while proxy.log.read_text(errors="replace").count(line) < times:
        assert time.monotonic() < deadline, f"the proxy did not log {line!r} in {timeout}s"
        await asyncio.sleep(0.05)
