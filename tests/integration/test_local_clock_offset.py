"""Agents whose wall clock is behind the shard manager's still leave one primary.

A lease's expiry is written with the holder's wall clock and read by the manager with
its own; the holder fences on its monotonic clock, a margin before the lease ends. With
the agents' clocks ``maxClockSkew`` behind (``PGSHARD_TEST_AGENT_CLOCK_OFFSET``, a
test-only hook, and ``--max-clock-skew-seconds``), the store's expiry is that much early;
the manager must still promote only once the old primary acknowledges nothing.

The primary is made unobservable to the manager while it still serves existing clients:
its postmaster is frozen (no new connection: the manager's probes fail) and so is the
backend of its agent's probe (the agent sees an unhealthy server and stops renewing),
while the backends of connected clients go on committing. Only the agent's fence (at
its deadline, by its monotonic clock) stops them. Writers on the old primary, on each
follower (refused until promoted: their first acknowledgement is when the new primary
began to accept writes) and through the topology record every acknowledgement; none
may come from the old primary after another server acknowledged one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg

from pgshard_operator.instance import postgres, wallclock
from tests.support import localcluster, writer

TTL = 6.0
SKEW = 2.0
"""Long enough past the 1 s detection that the lease, not detection, decides when the
manager may promote: with ``--max-clock-skew-seconds=0`` this test fails (the old
primary acknowledged writes for about SKEW seconds after the new one took its first)."""
FAST = (f"--lease-ttl={TTL:g}", "--detection-seconds=1", "--cooldown-seconds=2")


async def _agent_backends(c: localcluster.LocalCluster, address: str) -> list[int]:
    """The pids of the backends serving the member's own instance agent."""
    secrets = json.loads((c.files / "secrets.json").read_text())
    dsn = f"postgresql://postgres:{secrets['superuser_password']}@{address}/postgres"
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgshard-instance'"
            " AND backend_type = 'client backend'"
        )
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


async def _primary_other_than(c: localcluster.LocalCluster, old: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        shard = await asyncio.to_thread(c.shard, 0)
        if shard["primary"] is not None and shard["primary"]["name"] != old:
            return shard
        assert time.monotonic() < deadline, f"no failover within {timeout} s: {shard}"
        await asyncio.sleep(0.25)


async def test_agents_behind_by_the_allowed_skew_leave_one_primary(pg_tmp: Path) -> None:
    cluster = localcluster.new(pg_tmp, 1, 2)
    with localcluster.cleaned_up(cluster) as c:
        c.cli(
            "local", "up", f"--dir={c.dir}", *c.create_args(1, 2), "--replication-mode=async",
            *FAST, f"--max-clock-skew-seconds={SKEW:g}",
            **{wallclock.OFFSET_ENV: f"{-SKEW:g}"},
        )  # fmt: skip
        shard = await asyncio.to_thread(c.shard, 0)
        old = shard["primary"]
        follow = writer.Writer(c.dir / "topology.json", timeout=3, connect_timeout=3, first_id=1)
        direct = writer.Writer(old["dsn"], timeout=30, connect_timeout=3, first_id=1_000_000)
        candidates = [
            writer.Writer(f["dsn"], timeout=3, connect_timeout=3, first_id=(i + 2) * 1_000_000)
            for i, f in enumerate(shard["followers"])
        ]
        frozen: list[int] = []
        async with contextlib.AsyncExitStack() as writers:
            await writers.enter_async_context(writer.running_writer(follow))
            await writers.enter_async_context(writer.running_writer(direct))
            for w in candidates:
                await writers.enter_async_context(writer.running_on_follower(w))
            await direct.wait_acked(20)
            datadir = c.files / "members" / old["name"] / "data"
            postmaster = postgres.postmaster_pid(datadir)
            assert postmaster is not None
            try:
                agent = await _agent_backends(c, old["address"])
                assert agent, "the agent's probe connection was not found"
                for pid in [postmaster, *agent]:
                    os.kill(pid, signal.SIGSTOP)
                    frozen.append(pid)
                await direct.wait_acked(5)  # the old primary still commits for its clients
                new = await _primary_other_than(c, old["name"], 60)
                await follow.wait_acked(20)
            finally:
                for pid in frozen:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
        acks = follow.acks + direct.acks + [a for w in candidates for a in w.acks]
        first_new = min((a.at for w in candidates for a in w.acks), default=None)
        last_old = max(a.at for a in direct.acks)
        print(
            f"primary {old['name']} -> {new['primary']['name']}; old primary's last ack "
            f"{'before' if first_new is None or last_old < first_new else 'AFTER'} the new "
            f"one's first by {abs(last_old - (first_new or last_old)):.3f} s; "
            f"{len(acks)} acks"
        )
        assert first_new is not None, "the promoted follower never acknowledged a write"
        assert writer.interleaved(acks) == 0, (
            f"the old primary acknowledged writes {last_old - first_new:.3f} s after the new "
            "one accepted its first"
        )
