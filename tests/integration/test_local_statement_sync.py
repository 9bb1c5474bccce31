"""Statement replication in sync mode (``--replication-mode sync``): the proxy relays a
COMMIT's ReadyForQuery only once a follower applied its log entry
(``pgshard_proxy.execute.sync_wait``); a client's cancel ends the wait with
PostgreSQL's warning; kill -9 of the primary under writers through the proxy loses no
acknowledged write.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import psycopg

from tests.support import localcluster
from tests.support.proxy_writers import kill_primary_under_writers
from tests.support.statement_writer import table_contents


async def _rows(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


async def _until_on_primary(dsn: str, key: int) -> None:
    """The insert of ``key`` committed on the primary (its answer is held, not lost)."""
    async with asyncio.timeout(30):
        while True:
            if await _rows(dsn, f"SELECT 1 FROM items WHERE k = {key}"):
                return
            await asyncio.sleep(0.1)


async def test_sync_statement_commit_waits_for_a_follower_and_failover_keeps_acks(
    pg_tmp: Path,
) -> None:
    with localcluster.running(
        pg_tmp,
        "--replication-method=statement",
        "--replication-mode=sync",
        "--lease-ttl=2",
        "--detection-seconds=1",
        "--cooldown-seconds=0",
        shards=1,
        replicas=2,
    ) as c:
        doc = c.status()
        dsn, primary = doc["proxy"]["dsn"], doc["shards"][0]["primary"]
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE items (k int PRIMARY KEY)")
            await conn.execute("INSERT INTO items VALUES (0)")
            # Both followers frozen (agent, applier and server): the commit happens on
            # the primary, its answer waits.
            for f in doc["shards"][0]["followers"]:
                c.kill(0, f["name"], "STOP")
            held = asyncio.ensure_future(conn.execute("INSERT INTO items VALUES (1)"))
            await _until_on_primary(primary["dsn"], 1)
            await asyncio.sleep(1.5)
            assert not held.done(), "a commit was acknowledged before any follower applied it"

            # A cancel ends the wait: the commit stands, with PostgreSQL's warning.
            notices: list[str] = []
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as pc:
                pc.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
                await pc.execute("SET statement_timeout = 500")  # does not end the wait
                canceled = asyncio.ensure_future(pc.execute("INSERT INTO items VALUES (2)"))
                await _until_on_primary(primary["dsn"], 2)
                await asyncio.sleep(1.0)
                assert not canceled.done()
                await pc.cancel_safe()
                await asyncio.wait_for(canceled, 30)
            assert notices == ["canceling wait for synchronous replication due to user request"]

            for f in doc["shards"][0]["followers"]:
                c.kill(0, f["name"], "CONT")
            await asyncio.wait_for(held, 60)
            applied = [
                await _rows(f["dsn"], "SELECT k FROM items WHERE k = 1")
                for f in doc["shards"][0]["followers"]
            ]
            assert any(applied), "acknowledged, yet on no follower"
        finally:
            await conn.close()

        # kill -9 of the primary under 2 writers through the proxy: every acknowledged
        # insert is on the new primary.
        acked, _, _ = await kill_primary_under_writers(
            c, dsn, lambda i, n: (f"INSERT INTO items VALUES ({(i + 1) * 100000 + n})",
                                  (i + 1) * 100000 + n), writers=2, after=10,
        )  # fmt: skip
        shard = await asyncio.to_thread(c.shard, 0)
        present = {
            row[0] for row in (await table_contents(shard["primary"]["dsn"], ["items"]))["items"]
        }
        lost = sorted(k for k in acked if k not in present)
        print(f"{len(acked)} acknowledged writes, {len(lost)} lost in the failover (sync)")
        assert not lost, f"acknowledged writes lost in the failover: {lost[:20]}"
        assert {0, 1, 2} <= present
