"""A promotion that outlasts the lease does not fence the member it promotes.

``pg_promote`` waits for the end of replay and for the WAL receiver to exit. CI saw a
follower with a frozen WAL receiver promoted after its primary was killed
(test_verify's frozen-receiver run): the promotion took longer than the lease, the
agent renewed nothing while promoting, fenced the new primary itself, and the shard was
left with no follower to promote ("FailoverBlocked") until the run gave up.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from tests.support import localcluster

pytestmark = pytest.mark.integration

TTL = 2.5
FAST = (f"--lease-ttl={TTL}", "--detection-seconds=1", "--cooldown-seconds=2")


async def _walreceiver_pid(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return int(await conn.fetchval("SELECT pid FROM pg_stat_wal_receiver"))
    finally:
        await conn.close()


async def _until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(0.1)


async def test_a_promotion_stalled_beyond_the_lease_completes(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, *FAST, replicas=1) as c:
        shard = c.shard(0)
        old, follower = shard["primary"]["name"], shard["followers"][0]
        logs = c.dir / "logs"
        server_log = logs / f"{follower['name']}.postgres.log"
        agent_log = logs / f"{follower['name']}.agent.log"
        receiver = await _walreceiver_pid(follower["dsn"])
        os.kill(receiver, signal.SIGSTOP)
        try:
            c.kill(0, old)
            await _until(
                "the follower's promotion", lambda: "promote request" in server_log.read_text(), 60
            )
            # The stall outlasts the lease twice over (or ends once the member fenced).
            stall_end = time.monotonic() + 2 * TTL
            await _until(
                "the stall",
                lambda: time.monotonic() > stall_end or "fencing" in agent_log.read_text(),
                3 * TTL,
            )
        finally:
            os.kill(receiver, signal.SIGCONT)
        settled = await localcluster.rejoined(c, 2, timeout=90)
        assert settled["primary"]["name"] == follower["name"]
        assert "fencing" not in agent_log.read_text()
