"""What each change of primary cost: ``shard.history`` and the manager filling it in."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest

from pgshard_operator.k8s import status
from pgshard_operator.local import proxy_counts
from pgshard_operator.shard import history, manager
from pgshard_proxy import metrics
from tests.unit.fake_platform import FakePlatform
from tests.unit.shard_fixtures import follower_obs
from tests.unit.test_shard_manager import make, running


@pytest.mark.looptime
async def test_a_failover_records_its_timings_and_the_rejoin_in_the_history() -> None:
    world = FakePlatform(ttl=7.5)
    m = make(world, detection_seconds=3)
    await m.run_cycle()
    world.hang("p")
    async with running(m):
        await asyncio.sleep(20)
    last = world.shard.last_failover
    assert last is not None
    # Cycles at 0, 1, …: the first failed probe at t=0, promotion and publication at t=8.
    assert last["detectedAt"] == 0.0 and last["at"] == 8.0
    assert last["promotedAt"] == 8.0 and last["publishedAt"] == 8.0
    assert last["writeUnavailableSeconds"] == 8.0
    assert last["discardedBytes"] == 4096  # the old primary's rejoin, known later
    assert list(world.shard.failover_history) == [last]


@pytest.mark.looptime
async def test_a_switchover_counts_from_its_announcement() -> None:
    world = FakePlatform()
    m = make(world)
    await m.run_cycle()
    world.obs["a"] = follower_obs("a", 1001)  # replays the fenced primary's last WAL
    await m.request_switchover("a")
    last = world.shard.last_failover
    assert last is not None and last["kind"] == "switchover"
    # Announced at t=0, fenced after the 0.5 s drain, the target caught up at once.
    assert last["detectedAt"] == 0.0 and last["publishedAt"] == pytest.approx(0.5, abs=0.1)
    assert last["writeUnavailableSeconds"] == pytest.approx(0.5, abs=0.1)
    assert [h["epoch"] for h in world.shard.failover_history] == [2]
    await m.close()


def test_history_keeps_the_last_ten() -> None:
    h: tuple[dict[str, object], ...] = ()
    for epoch in range(2, 15):
        h = history.appended(h, {"epoch": epoch})  # type: ignore[assignment]
    assert [r["epoch"] for r in h] == list(range(5, 15))
    h = history.replaced(h, {"epoch": 9, "discardedBytes": 0})  # type: ignore[assignment]
    assert h[4] == {"epoch": 9, "discardedBytes": 0}


def test_one_line_summary_and_the_printer_column() -> None:
    last = {
        "kind": "failover", "from": "s0m0", "to": "s0m1", "epoch": 3, "at": 12.0,
        "detectedAt": 10.0, "promotedAt": 12.5, "publishedAt": 12.6,
        "writeUnavailableSeconds": 2.6, "discardedBytes": 0,
    }  # fmt: skip
    line = history.summary(last)
    assert line == (
        "failover s0m0 → s0m1 (epoch 3), writes unavailable 2.60s, "
        "promoted 2.50s after detection, discarded 0 bytes"
    )
    older = {**last, "at": 5.0, "to": "s1m2"}
    shards = [{"index": 0, "lastFailover": older}, {"index": 1, "lastFailover": last}, {}]
    assert status.last_failover_column(shards) == f"shard 1: {line}"
    assert status.last_failover_column([{"index": 0}]) is None
    assert "old primary not rejoined yet" in history.summary({**last, "discardedBytes": None})


async def _failover_counted(
    world: FakePlatform, reads: Iterator[history.RequestCounts]
) -> dict[str, Any]:
    """The record of a failover (kill -9 of ``p``) and the old primary's rejoin, with the
    proxies' counts read from ``reads`` in turn."""

    async def read() -> history.RequestCounts | None:
        return next(reads, None)

    m = manager.ShardManager(
        world, make(world).policy, clock=FakePlatform.now, observer=world.observe,
        proxy_counts=read,
    )  # fmt: skip
    await m.run_cycle()
    world.kill("p")
    async with running(m):
        await asyncio.sleep(6)
    last = world.shard.last_failover
    assert last is not None and last["discardedBytes"] == 4096
    return last


@pytest.mark.looptime
async def test_requests_the_proxy_failed_and_held_are_counted_until_the_rejoin() -> None:
    world = FakePlatform()
    # Read at detection, then at the rejoin: first while the proxy still holds 4 requests
    # (not counted yet), then once it holds none: 2 failed and 5 held in between.
    reads = iter(
        [
            history.RequestCounts(7, 100),
            history.RequestCounts(8, 101, waiting=4),
            history.RequestCounts(9, 105, first_writes={(0, 1): 0.5, (0, 2): 4.25}),
        ]
    )

    last = await _failover_counted(world, reads)
    assert last["requestsFailed"] == 2 and last["requestsBuffered"] == 5
    assert "2 requests failed, 5 held" in history.summary(last)
    # The first write at the new epoch (2), not the old one's.
    assert last["epoch"] == 2 and last["firstWriteAt"] == 4.25
    assert last["firstWriteSeconds"] == round(4.25 - last["detectedAt"], 3)
    assert f"first write {last['firstWriteSeconds']:.2f}s after detection" in history.summary(last)


@pytest.mark.looptime
async def test_counts_of_a_proxy_restarted_in_between_are_not_recorded() -> None:
    world = FakePlatform()
    reads = iter([history.RequestCounts(7, 100), history.RequestCounts(1, 103)])
    last = await _failover_counted(world, reads)
    assert last["requestsFailed"] is None and last["requestsBuffered"] is None


def test_the_local_proxy_counts_are_read_from_its_metrics() -> None:
    text = (
        "# TYPE pgshard_proxy_failover_errors counter\n"
        'pgshard_proxy_failover_errors_total{sqlstate="08007"} 3.0\n'
        'pgshard_proxy_failover_errors_total{sqlstate="57P03"} 2.0\n'
        "# TYPE pgshard_proxy_switchover_requests counter\n"
        'pgshard_proxy_switchover_requests_total{outcome="buffered"} 11.0\n'
        'pgshard_proxy_switchover_requests_total{outcome="failed"} 2.0\n'
        "# TYPE pgshard_proxy_switchover_requests_waiting gauge\n"
        "pgshard_proxy_switchover_requests_waiting 3.0\n"
    )
    assert proxy_counts.parse(text) == history.RequestCounts(failed=5, buffered=11, waiting=3)


def test_the_proxies_first_writes_are_parsed_and_the_earliest_per_epoch_kept() -> None:
    m = metrics.ProxyMetrics()
    m.wrote(0, 3)
    first = m.first_writes[0][1]
    m.wrote(0, 3)  # later writes at the same epoch do not move it
    m.wrote(0, 2)  # nor does a write on an old primary's connection
    m.wrote(1, 5)
    parsed = proxy_counts.parse(generate_latest(m.registry).decode())
    assert parsed.first_writes == {(0, 3): first, (1, 5): m.first_writes[1][1]}
    assert parsed.first_write(0, 3) == first and parsed.first_write(0, 2) is None
    # Two proxy pods: counts add up; per (shard, epoch) the earliest first write.
    other = history.RequestCounts(2, 3, 1, {(0, 3): first - 1.0, (0, 2): 7.0})
    both = history.total([parsed, other])
    assert (both.failed, both.buffered, both.waiting) == (2, 3, 1)
    assert both.first_writes == {(0, 3): first - 1.0, (0, 2): 7.0, (1, 5): m.first_writes[1][1]}
    assert history.total([]) == history.RequestCounts(0, 0)
