"""A shard's primary killed while a scatter read runs: a clear error, never fewer rows.

A real local cluster (two shards, one follower each, synchronous replication, fast
failover settings) behind the supervisor's proxy. A scatter read of every row on the
primaries (``strong``) is running when one shard's primary gets SIGKILL at a seeded
random moment; the client must get an error or every row — never a shorter answer
reported as complete. Rounds alternate the shard; the worst case is printed.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import asyncpg

from tests.integration.test_local_failover import eventually
from tests.support import localcluster

ROWS = 400_000
ROUNDS = int(os.environ.get("PGSHARD_SCATTER_FAILOVER_ROUNDS", "4"))


def test_a_scatter_read_during_a_failover_fails_clearly_or_is_complete(pg_tmp: Path) -> None:
    with localcluster.running(
        pg_tmp,
        "--distributed-table=t:k",
        "--replication-mode=sync",
        *localcluster.FAST,
        shards=2,
        replicas=1,
    ) as c:
        asyncio.run(_rounds(c))


async def _rounds(c: localcluster.LocalCluster) -> None:
    dsn = c.status()["proxy"]["dsn"]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE t (k bigint NOT NULL, v text)")
        await conn.copy_records_to_table(
            "t", records=[(k, f"v{k}") for k in range(ROWS)], columns=["k", "v"]
        )
    finally:
        await conn.close()
    rng = random.Random(int(os.environ.get("PGSHARD_FAULT_SEED", "10")))
    outcomes = []
    for round_ in range(ROUNDS):
        shard = round_ % 2
        old = c.shard(shard)["primary"]["name"]
        reader = await asyncpg.connect(dsn)
        await reader.execute("SET pgshard.consistency = 'strong'")
        read = asyncio.ensure_future(reader.fetch("SELECT k, v FROM t"))
        await asyncio.sleep(rng.uniform(0.0, 0.2))
        await asyncio.to_thread(c.kill, shard, old, "KILL")
        try:
            rows = await asyncio.wait_for(read, 120)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as e:
            outcomes.append(f"round {round_}: error {type(e).__name__}: {str(e)[:120]}")
        else:
            assert len(rows) == ROWS, f"round {round_}: {len(rows)} rows reported complete"
            outcomes.append(f"round {round_}: complete ({len(rows)} rows)")
        finally:
            reader.terminate()

        def promoted(shard: int = shard, old: str = old) -> bool | None:
            s = c.shard(shard)
            return True if s["primary"] and s["primary"]["name"] != old else None

        await eventually(promoted, 90, what=f"a new primary on shard {shard}")
        check = await asyncpg.connect(dsn)
        try:  # the cluster answers again with every row
            for _ in range(60):
                try:
                    count = await check.fetchval("SELECT count(*) FROM t")
                    break
                except (asyncpg.PostgresError, OSError):
                    await asyncio.sleep(1)
            assert count == ROWS
        finally:
            await check.close()
    print("\n".join(outcomes))
