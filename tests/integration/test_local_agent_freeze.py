"""A frozen instance agent (SIGSTOP of the agent only; its PostgreSQL keeps running).

The agent of the primary is what renews the lease and fences PostgreSQL before the
lease runs out; frozen, it does neither, while its server still takes writes from
clients connected to it. Rounds of random freezes (seeded; ``PGSHARD_FAULT_SEED``
repeats a run, ``PGSHARD_AGENT_FREEZE_ROUNDS`` sizes it) with two writers: one
following the topology (as the proxy does) and one connected to the primary of the
round directly. After each round, every acknowledged row must be on the shard's
primary, and acknowledgements must never come from two servers interleaved in time
(two writable primaries). The worst round is printed.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import localcluster, writer

TTL = 2.5
ROUNDS = int(os.environ.get("PGSHARD_AGENT_FREEZE_ROUNDS", "2"))


def test_interleaving_is_what_two_writable_primaries_look_like() -> None:
    def ack(at: float, port: int) -> writer.Ack:
        return writer.Ack(id=int(at * 10), at=at, dsn="", port=port)

    assert writer.interleaved([ack(0.1, 1), ack(0.2, 1), ack(0.3, 2), ack(0.4, 2)]) == 0
    acks = [ack(0.1, 1), ack(0.3, 2), ack(0.2, 1), ack(0.4, 1), ack(0.5, 2)]
    assert writer.interleaved(acks) == 1


async def settled(c: localcluster.LocalCluster, followers: int, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        shard = await asyncio.to_thread(c.shard, 0)
        up = sum(f["state"] == "streaming" for f in shard["followers"])
        if shard["primary"] is not None and up == followers:
            return shard
        assert time.monotonic() < deadline, f"shard not settled after a freeze: {shard}"
        await asyncio.sleep(0.5)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_frozen_agent_never_leaves_two_primaries(pg_tmp: Path, mode: str) -> None:
    seed = int(os.environ.get("PGSHARD_FAULT_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    report: list[str] = []
    with localcluster.running(
        pg_tmp, f"--replication-mode={mode}", *localcluster.FAST, replicas=2
    ) as c:
        follow = writer.Writer(c.dir / "topology.json", timeout=3, connect_timeout=3, first_id=1)
        async with writer.running_writer(follow):
            for r in range(1, ROUNDS + 1):
                old = (await settled(c, 2))["primary"]
                direct = writer.Writer(
                    old["dsn"], timeout=3, connect_timeout=3, first_id=r * 1_000_000
                )
                start = len(follow.acks)
                async with writer.running_writer(direct):
                    await follow.wait_acked(20)
                    pid = int((c.files / "members" / old["name"] / "agent.pid").read_text())
                    freeze = rng.uniform(0.5, 3.0) * TTL
                    frozen_at = time.monotonic()
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        await asyncio.sleep(freeze)
                    finally:
                        os.kill(pid, signal.SIGCONT)
                    shard = await settled(c, 2)
                    await follow.wait_acked(20)
                acks = follow.acks[start:] + direct.acks
                on_primary = await writer.ids_on(shard["primary"]["dsn"])
                lost = sorted({a.id for a in acks} - on_primary)
                late = [a.at - frozen_at for a in direct.acks if a.at > frozen_at]
                report.append(
                    f"round {r}: froze {old['name']}'s agent {freeze:.1f} s, primary now "
                    f"{shard['primary']['name']} (epoch {shard['epoch']}); {len(acks)} acks, "
                    f"{len(lost)} lost, {writer.interleaved(acks)} interleaved, old primary acked "
                    f"directly until {max(late, default=0):.1f} s into the freeze"
                )
                print(report[-1])
                assert not lost and not writer.interleaved(acks), (
                    f"seed {seed}: {report[-1]}; lost ids {lost[:10]}"
                )
    print(f"seed {seed}, mode {mode}:", *report, sep="\n  ")
