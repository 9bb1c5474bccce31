"""What each change of primary cost, in the shard's record (issue 14): a real local
cluster through a switchover, a kill -9 and a SIGSTOP of its primary.

Each change leaves ``lastFailover`` with its timings (detection, decision,
promotion, publication), the write-unavailability window and, once the old primary
rejoined, the discarded bytes; ``failoverHistory`` keeps them in order; ``local
status`` shows the last one in one line. Values are printed and checked for
plausibility (order, bounds), not for speed; during the switchover four writers go
through the proxy, whose held and failed requests the record counts. During the
switchover and the kill -9 the record's first write through the proxy
(``firstWriteAt``) comes after the promotion and no later than the test's own first
write acknowledged once it saw the new primary published.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support import localcluster, switch_load


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


async def _acked_write(dsn: str, probe: int, timeout: float = 60) -> float:
    """Insert ``probe`` through the proxy until acknowledged; when the ack came (Unix)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                await conn.execute(
                    f"INSERT INTO {switch_load.TABLE} (id) VALUES ($1) ON CONFLICT DO NOTHING",
                    probe,
                )
                return time.time()
            finally:
                conn.terminate()
        except (asyncpg.PostgresError, OSError, TimeoutError) as e:
            assert time.monotonic() < deadline, f"no write acknowledged in {timeout}s: {e}"
            await asyncio.sleep(0.1)


async def _acked_at_epoch(c: localcluster.LocalCluster, dsn: str, epoch: int) -> float:
    """Once shard 0 is published at ``epoch``: when the test's first write was acknowledged
    (on the new primary: the old one is dead or fenced)."""
    deadline = time.monotonic() + 120
    while (await asyncio.to_thread(c.shard, 0))["epoch"] < epoch:
        assert time.monotonic() < deadline, f"shard 0 not published at epoch {epoch}"
        await asyncio.sleep(0.1)
    return await _acked_write(dsn, -epoch)


def _first_write(last: dict[str, Any], acked_at: float) -> None:
    """The proxy's first write on the new primary: after the promotion (it cannot come
    sooner), and no later than a write the test saw acknowledged there (0.5 s slack)."""
    first = last["firstWriteAt"]
    assert first is not None, f"no first write through the proxy in {last}"
    print(
        f"first write {first - last['publishedAt']:+.3f}s after publication, "
        f"test's own ack {acked_at - first:.3f}s after it"
    )
    assert last["promotedAt"] <= first <= acked_at + 0.5
    assert last["firstWriteSeconds"] == pytest.approx(first - last["detectedAt"], abs=0.002)


async def test_switchover_kill9_and_sigstop_are_recorded(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, *localcluster.FAST, replicas=2) as c:
        shard = await _settled_first(c)
        dsn = c.status()["proxy"]["dsn"]
        await switch_load.create_table(dsn)
        async with switch_load.running(dsn) as load:
            await load.wait_acked(20)
            await asyncio.to_thread(c.cli, "switchover", f"--dir={c.dir}", "--shard=0", "--to=s0m1")
            acked_at = await _acked_at_epoch(c, dsn, 2)
            shard = await localcluster.rejoined(c, 2)
        last = shard["lastFailover"]
        _plausible(last, "switchover")
        # The writers' requests were held by the proxy, none failed.
        assert last["requestsFailed"] == 0 and last["requestsBuffered"] > 0
        _first_write(last, acked_at)

        async with switch_load.running(dsn, base=5_000_000) as load:
            await load.wait_acked(5)
            await asyncio.to_thread(c.kill, 0, shard["primary"]["name"], "KILL")
            acked_at = await _acked_at_epoch(c, dsn, 3)
            shard = await localcluster.rejoined(c, 3)
        _plausible(shard["lastFailover"], "failover")
        _first_write(shard["lastFailover"], acked_at)

        await _cooldown_over(c)
        frozen = shard["primary"]["name"]
        await asyncio.to_thread(c.kill, 0, frozen, "STOP")
        deadline = time.monotonic() + 120
        while (await asyncio.to_thread(c.shard, 0))["epoch"] < 4:
            assert time.monotonic() < deadline, "no failover away from the frozen primary"
            await asyncio.sleep(0.3)
        await asyncio.to_thread(c.kill, 0, frozen, "CONT")
        shard = await localcluster.rejoined(c, 4)
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
