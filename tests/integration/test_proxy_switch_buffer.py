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
from tests.support import pgserver
from tests.support import proxy as proxy_support


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


async def _announce(path: Path, server: pgserver.PgServer, epoch: int, until: float | None) -> None:
    await asyncio.to_thread(path.write_text, _topology(server, epoch, until))
    await asyncio.sleep(0.6)  # the proxy polls its file every 0.2 s


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
        await _announce(path, pg_server, 1, time.time() + 60)
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
        await _announce(path, pg_server, 2, None)
        await asyncio.wait_for(asyncio.gather(*held), 10)
        print(f"held requests ran {time.monotonic() - started:.2f}s after the new primary")
        assert await _rows(pg_server) == [1, 2, 3, 4, 5, 100, 101, 102, 103]
        # A new session during a switchover waits too, then works.
        await _announce(path, pg_server, 2, time.time() + 60)
        connecting = asyncio.ensure_future(asyncpg.connect(proxy.dsn))
        await asyncio.sleep(1.0)
        assert not connecting.done()
        await _announce(path, pg_server, 3, None)
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
        await _announce(path, pg_server, 1, time.time() + 600)

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
        await _announce(path, pg_server, 2, None)
        for i, s in enumerate(sessions):
            await s.execute("INSERT INTO t VALUES ($1)", i)
        assert await _rows(pg_server) == [0, 1, 2, 3]
    finally:
        for s in sessions:
            s.terminate()
        proxy.stop()
