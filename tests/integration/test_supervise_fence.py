"""A fenced primary keeps what it acknowledged (``PostgresSupervisor.fence``).

An agent that fences its primary (lease about to run out, or found run out after a
stall) must stop it acknowledging commits *and* let its async followers receive the
commits it already acknowledged: a SIGKILL drops the WAL still in the senders' queues,
and with it acknowledged rows the promoted follower never sees. Here a real primary run
by the supervisor streams to a real follower whose WAL receiver is paused while four
writers go on, then the primary is fenced; every acknowledged row must reach the
follower. The second test shows the fence still ends a server that does not stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import asyncpg

from pgshard_operator.instance import postgres
from pgshard_operator.instance.supervise import PostgresSupervisor
from tests.support import pgserver

WRITERS = 4


def _listen_as_before(server: pgserver.PgServer) -> None:
    """The test server's command-line settings, kept in its config for the supervisor."""
    with open(server.datadir / "postgresql.auto.conf", "a") as f:
        f.write(
            f"listen_addresses = '{server.host}'\nport = {server.port}\n"
            f"unix_socket_directories = '{server.datadir}'\n"
        )


async def _supervised(base: Path) -> tuple[PostgresSupervisor, pgserver.PgServer]:
    """The test server of ``base``, restarted under a ``PostgresSupervisor``."""
    server = pgserver.make_server(base, "primary")
    server.stop()
    _listen_as_before(server)
    bins = postgres.Binaries.detect()
    sup = PostgresSupervisor(bins, server.datadir, base / "primary.log")
    await sup.start()
    await _wait_ready(server.dsn)
    return sup, server


async def _wait_ready(dsn: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await (await asyncpg.connect(dsn, timeout=2)).close()
            return
        except (OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _receiver_pid(follower: pgserver.PgServer, timeout: float = 30) -> int:
    """The follower's WAL receiver, once it streams (it reconnects after the restart)."""
    conn = await asyncpg.connect(follower.dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            pid = await conn.fetchval(
                "SELECT pid FROM pg_stat_wal_receiver WHERE status = 'streaming'"
            )
            if pid:
                return int(pid)
            assert time.monotonic() < deadline, "the follower does not stream"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def _write(dsn: str, writer: int, acked: list[int]) -> None:
    """Insert rows of 8 KB that do not compress until the server goes away."""
    conn = await asyncpg.connect(dsn)
    try:
        for i in range(1_000_000):
            row = writer * 1_000_000 + i
            await conn.execute("INSERT INTO t VALUES ($1, $2)", row, os.urandom(4096).hex())
            acked.append(row)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError):
        return  # the fence ended the connection
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


async def _until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_fenced_primary_ships_every_acknowledged_commit(pg_tmp: Path) -> None:
    sup, primary = await _supervised(pg_tmp)
    follower = pgserver.make_follower(primary, pg_tmp, "follower")
    receiver = None
    try:
        conn = await asyncpg.connect(primary.dsn)
        await conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, pad text)")
        await conn.close()
        receiver = await _receiver_pid(follower)
        acked: list[int] = []
        writers = [asyncio.create_task(_write(primary.dsn, w, acked)) for w in range(WRITERS)]
        await _until(lambda: len(acked) >= 200, 60, "writes are not acknowledged")
        # The follower stops receiving: the primary goes on acknowledging (async).
        os.kill(receiver, signal.SIGSTOP)
        at_pause = len(acked)
        await _until(lambda: len(acked) >= at_pause + 1000, 60, "writes stopped")
        sup.fence(grace=10)
        # The fast shutdown ends every writer's backend at once, while the receiver
        # still sleeps: all that was acknowledged is then waiting to be shipped.
        await asyncio.wait_for(asyncio.gather(*writers), 30)
        os.kill(receiver, signal.SIGCONT)
        receiver = None
        proc = sup.process
        assert proc is not None
        code = await asyncio.wait_for(proc.wait(), 30)
        bins = postgres.Binaries.detect()
        state = postgres.controldata(bins, primary.datadir)["Database cluster state"]
        assert (code, state) == (0, "shut down"), "the fence did not end in a clean shutdown"

        print(f"{len(acked)} rows acknowledged, {len(acked) - at_pause} while not streamed")
        conn = await asyncpg.connect(follower.dsn)
        try:
            deadline = time.monotonic() + 60
            while True:
                have = {r["id"] for r in await conn.fetch("SELECT id FROM t")}
                missing = set(acked) - have
                if not missing or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        finally:
            await conn.close()
        assert not missing, (
            f"{len(missing)} of {len(acked)} acknowledged rows never reached the follower"
        )
    finally:
        if receiver is not None:
            os.kill(receiver, signal.SIGCONT)
        sup.kill()
        if sup.process is not None:
            await sup.process.wait()
        follower.stop()


async def test_a_server_that_does_not_stop_is_killed_after_the_grace(pg_tmp: Path) -> None:
    sup, _ = await _supervised(pg_tmp)
    proc = sup.process
    assert proc is not None
    try:
        os.kill(proc.pid, signal.SIGSTOP)  # a hung postmaster: SIGINT does nothing
        sup.fence(grace=0.5)
        code = await asyncio.wait_for(proc.wait(), 30)
        assert code == -signal.SIGKILL
        assert not sup.wanted and sup.pid is None
    finally:
        sup.kill()
        await proc.wait()
