"""A follower that holds WAL past the new primary's fork is rewound, not just repointed.

Seen in CI (``test_verify``'s 50 random faults in sync mode): after a failover one
follower stayed ``catching-up`` for the 240 s the run waited. A follower that did not
answer when the failover was decided, but had received more of the old primary's WAL
than the member promoted, was then merely repointed (a new ``primary_conninfo``):
PostgreSQL keeps such a standby running and answering, and its WAL receiver retries
the new primary for ever, which refuses it ("new timeline forked off current database
system timeline before current recovery point"). Built here on a real local cluster:
follower ``a``'s WAL receiver is frozen while the primary writes, follower ``b``
receives everything and is then frozen, the primary is killed, ``a`` is promoted,
``b`` wakes up. Expected: ``b``'s agent refuses the repoint, the shard manager
rejoins ``b`` with pg_rewind, and ``b`` streams from ``a``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support import localcluster

pytestmark = pytest.mark.integration

PAD_SQL = """
CREATE TABLE pgshard_test_pad AS
SELECT repeat(md5(i::text || random()::text), 30) AS pad FROM generate_series(1, 48000) AS i
"""
"""About 48 MB of WAL: more than the socket buffers between the primary and ``a``'s
frozen receiver hold (4 + 32 MB here), so ``a`` ends behind ``b``."""


async def _fetchval(dsn: str, query: str) -> Any:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval(query, timeout=120)
    finally:
        await conn.close()


async def _until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(0.3)
    return result


@pytest.mark.timeout(300)
async def test_a_follower_past_the_fork_of_the_promoted_one_is_rewound(pg_tmp: Path) -> None:
    unsafe = ("--max-lag-bytes=1000000000",)  # async: a, behind b, may be promoted
    with localcluster.running(pg_tmp, *localcluster.FAST, *unsafe, replicas=2) as c:
        shard = await asyncio.to_thread(c.shard, 0)
        p = shard["primary"]
        a, b = sorted(shard["followers"], key=lambda f: f["name"])
        receiver = int(await _fetchval(a["dsn"], "SELECT pid FROM pg_stat_wal_receiver"))
        os.kill(receiver, signal.SIGSTOP)
        try:
            await _fetchval(p["dsn"], PAD_SQL)
            end = await _fetchval(p["dsn"], "SELECT pg_current_wal_lsn()::text")
            caught_up = f"SELECT pg_last_wal_receive_lsn() >= '{end}'::pg_lsn"
            await _until(
                f"{b['name']} received the pad", lambda: _fetchval(b["dsn"], caught_up), 60
            )
            await asyncio.to_thread(c.kill, 0, b["name"], "STOP")
            await asyncio.to_thread(c.kill, 0, p["name"], "KILL")
        finally:
            os.kill(receiver, signal.SIGCONT)

        async def promoted() -> dict[str, Any] | None:
            s = await asyncio.to_thread(c.shard, 0)
            return s if s["epoch"] > shard["epoch"] and s["primary"] else None

        try:
            after = await _until("a promotion", promoted, 60)
        finally:
            await asyncio.to_thread(c.kill, 0, b["name"], "CONT")
        assert after["primary"]["name"] == a["name"], after
        fork = await _fetchval(a["dsn"], f"SELECT pg_current_wal_lsn() < '{end}'::pg_lsn")
        assert fork, f"{a['name']} was promoted with all of {p['name']}'s WAL: nothing to test"

        async def b_streams() -> dict[str, Any] | None:
            s = await asyncio.to_thread(c.shard, 0)
            state = {f["name"]: f["state"] for f in s["followers"]}
            return s if state.get(b["name"]) == "streaming" else None

        await _until(f"{b['name']} streaming from {a['name']}", b_streams, 120)
        # It replays what a writes on its new timeline.
        await _fetchval(a["dsn"], "CREATE TABLE pgshard_test_after AS SELECT 1 AS x")
        replayed = "SELECT to_regclass('pgshard_test_after') IS NOT NULL"
        await _until(f"{b['name']} replayed a's write", lambda: _fetchval(b["dsn"], replayed), 60)
        log = (c.files / "logs" / "supervisor.log").read_text()
        assert f"{b['name']} cannot follow" in log and "rejoining it" in log
        rewound = re.search(
            rf"{b['name']} rejoined as follower of {a['name']} by rewind; discarded (\d+) bytes",
            log,
        )
        assert rewound is not None and int(rewound.group(1)) > 0, "b's WAL past the fork is gone"
