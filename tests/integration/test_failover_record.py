"""What each change of primary cost, in the shard's record (issue 14): a real local
cluster through a switchover, a kill -9 and a SIGSTOP of its primary.

Each change leaves ``lastFailover`` with its timings (detection, decision,
promotion, publication), the write-unavailability window and, once the old primary
rejoined, the discarded bytes; ``failoverHistory`` keeps them in order; ``local
status`` shows the last one in one line. Values are printed and checked for
plausibility (order, bounds), not for speed; during the switchover four writers go
through the proxy, whose held and failed requests the record counts.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.support import localcluster, switch_load

FAST = ("--lease-ttl=2.5", "--detection-seconds=1", "--cooldown-seconds=2")


async def _settled(
    c: localcluster.LocalCluster, epoch: int, timeout: float = 120
) -> dict[str, Any]:
    """Shard 0 at ``epoch`` with every follower streaming and the old primary's rejoin
    recorded."""
    deadline = time.monotonic() + timeout
    while True:
        shard = await asyncio.to_thread(c.shard, 0)
        last = shard.get("lastFailover") or {}
        if (
            shard["epoch"] == epoch
            and last.get("discardedBytes") is not None
            and all(f["state"] == "streaming" for f in shard["followers"])
        ):
            return shard
        if time.monotonic() > deadline:
            raise TimeoutError(f"shard 0 not settled at epoch {epoch}: {shard}")
        await asyncio.sleep(0.3)


def _plausible(last: dict[str, Any], kind: str) -> None:
    print(kind, {k: last.get(k) for k in sorted(last)})
    assert last["kind"] == kind
    detected, decided = last["detectedAt"], last["at"]
    promoted, published = last["promotedAt"], last["publishedAt"]
    assert detected <= decided <= promoted <= published <= time.time()
    window = last["writeUnavailableSeconds"]
    assert abs(window - (published - detected)) < 0.01
    assert 0 < window < 60
    assert last["discardedBytes"] >= 0
    assert last["requestsFailed"] >= 0 and last["requestsBuffered"] >= 0


async def test_switchover_kill9_and_sigstop_are_recorded(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, *FAST, replicas=2) as c:
        shard = await _settled_first(c)
        dsn = c.status()["proxy"]["dsn"]
        await switch_load.create_table(dsn)
        async with switch_load.running(dsn) as load:
            await load.wait_acked(20)
            await asyncio.to_thread(c.cli, "switchover", f"--dir={c.dir}", "--shard=0", "--to=s0m1")
            shard = await _settled(c, 2)
        last = shard["lastFailover"]
        _plausible(last, "switchover")
        # The writers' requests were held by the proxy, none failed.
        assert last["requestsFailed"] == 0 and last["requestsBuffered"] > 0

        await asyncio.to_thread(c.kill, 0, shard["primary"]["name"], "KILL")
        shard = await _settled(c, 3)
        _plausible(shard["lastFailover"], "failover")

        await _cooldown_over(c)
        frozen = shard["primary"]["name"]
        await asyncio.to_thread(c.kill, 0, frozen, "STOP")
        deadline = time.monotonic() + 120
        while (await asyncio.to_thread(c.shard, 0))["epoch"] < 4:
            assert time.monotonic() < deadline, "no failover away from the frozen primary"
            await asyncio.sleep(0.3)
        await asyncio.to_thread(c.kill, 0, frozen, "CONT")
        shard = await _settled(c, 4)
        last = shard["lastFailover"]
        _plausible(last, "failover")
        # A frozen primary is replaced only after its lease (2.5 s) ran out.
        assert last["writeUnavailableSeconds"] >= 1.0

        assert [h["epoch"] for h in shard["failoverHistory"]] == [2, 3, 4]
        assert shard["failoverHistory"][-1] == last
        text = (await asyncio.to_thread(c.cli, "local", "status", f"--dir={c.dir}")).stdout
        line = next(x for x in text.splitlines() if x.startswith("shard 0: last "))
        print(line)
        assert "failover" in line and "writes unavailable" in line and "discarded" in line


async def _cooldown_over(c: localcluster.LocalCluster, timeout: float = 60) -> None:
    """Until shard 0's manager would fail over again (its cooldown has passed)."""
    deadline = time.monotonic() + timeout
    while True:
        managers = (await asyncio.to_thread(c.status)).get("managers", [])
        mine = [m for m in managers if m.get("index") == 0]
        if mine and not mine[0].get("cooldownRemainingSeconds"):
            return
        assert time.monotonic() < deadline, f"cooldown not over: {mine}"
        await asyncio.sleep(0.2)


async def _settled_first(c: localcluster.LocalCluster) -> dict[str, Any]:
    shard = await asyncio.to_thread(c.shard, 0)
    assert shard["epoch"] == 1 and not shard.get("failoverHistory")
    return shard
