"""The ShardManager loop with an in-memory platform and fake time (looptime)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from pgshard_operator.platform import base
from pgshard_operator.shard import decide, manager, policy, switchover
from tests.unit.fake_platform import FakePlatform
from tests.unit.shard_fixtures import follower_obs

K = decide.DecisionKind


def make(platform: FakePlatform, **failover: object) -> manager.ShardManager:
    pol = policy.ShardPolicy(failover=policy.FailoverSettings(**failover))  # type: ignore[arg-type]
    return manager.ShardManager(platform, pol, clock=FakePlatform.now, observer=platform.observe)


@contextlib.asynccontextmanager
async def running(m: manager.ShardManager) -> AsyncIterator[None]:
    task = asyncio.create_task(m.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.looptime
async def test_hung_primary_fails_over_when_its_lease_expires() -> None:
    world = FakePlatform(ttl=7.5)
    m = make(world, detection_seconds=3)
    await m.run_cycle()  # t=0: healthy, lease renewed until 7.5
    assert m.status().kind is K.HEALTHY
    world.hang("p")
    async with running(m):
        await asyncio.sleep(4.5)
        assert m.status().kind is K.WAITING_LEASE
        assert "3.5s left" in m.status().reason  # last cycle at t=4, lease until 7.5
        await asyncio.sleep(10)
    # Cycles at 0,1,2,...: the first with now >= 7.5 is t=8.
    assert world.when("promote", "b") == [8.0]
    assert world.shard.epoch == 2 and world.shard.primary is not None
    assert world.shard.primary.name == "b"
    assert world.when("repoint", "a") == [8.0]
    assert world.when("rejoin", "p") == [9.0]  # upkeep of the next cycle
    assert m.status().kind is K.HEALTHY


@pytest.mark.looptime
async def test_killed_primary_fails_over_at_once() -> None:
    world = FakePlatform(ttl=10)
    m = make(world)
    await m.run_cycle()
    world.kill("p")
    async with running(m):
        await asyncio.sleep(0.5)
    assert world.when("promote", "b") == [0.0]
    assert (base.EventReason.PROMOTED, "promote b at epoch 2") in world.events


@pytest.mark.looptime
async def test_rejoin_outcome_is_recorded_in_last_failover() -> None:
    world = FakePlatform()
    m = make(world)
    world.kill("p")
    async with running(m):
        await asyncio.sleep(6)
    last = world.shard.last_failover
    assert last is not None
    assert last["from"] == "p" and last["to"] == "b"
    assert last["rejoin"] == "rewind" and last["discardedBytes"] == 4096
    assert last["forkLsn"] == "0/5DC"
    assert world.when("rejoin", "p") == [1.0]  # once, although cycles ran while it took 3s
    follower_states = {f.name: f.state for f in world.shard.followers}
    assert follower_states["p"] == "streaming"


@pytest.mark.looptime
async def test_cooldown_blocks_a_second_failover_until_it_ends() -> None:
    world = FakePlatform()
    m = make(world, cooldown_seconds=60)
    world.kill("p")
    async with running(m):
        await asyncio.sleep(10)
        assert world.when("promote", "b") == [0.0]
        world.kill("b")
        await asyncio.sleep(5)
        status = m.status()
        assert status.kind is K.COOLDOWN
        assert status.cooldown_remaining == pytest.approx(45, abs=1)
        assert status.to_dict()["state"] == "cooldown"
        await asyncio.sleep(50)
    # b died at t=10; cooldown since the promotion at t=0 ends at t=60.
    promoted = [(t, n) for t, w, n in world.calls if w == "promote"]
    assert promoted == [(0.0, "b"), (60.0, "p")]  # p rejoined ahead of a
    assert world.shard.epoch == 3


@pytest.mark.looptime
async def test_the_loop_survives_failing_cycles() -> None:
    world = FakePlatform()
    m = make(world)
    world.fail_snapshots = 3
    async with running(m):
        await asyncio.sleep(5)
    assert m.status().kind is K.HEALTHY


@pytest.mark.looptime
async def test_switchover_waits_for_catch_up_then_promotes() -> None:
    world = FakePlatform()
    m = make(world)
    await m.run_cycle()
    # a has not replayed past the fence position (1000) yet; it will at t=2.
    world.obs["a"] = follower_obs("a", 1000, 900)

    async def catch_up() -> None:
        await asyncio.sleep(2)
        world.obs["a"] = follower_obs("a", 1001)

    helper = asyncio.create_task(catch_up())
    last = await m.request_switchover("a")
    await helper
    assert last.kind.value == "switchover" and last.new_primary == "a" and last.epoch == 2
    assert world.when("fence", "p") == [0.0]
    assert world.when("promote", "a") == [pytest.approx(2.0, abs=0.1)]
    assert world.shard.primary is not None and world.shard.primary.name == "a"
    await m.close()


@pytest.mark.looptime
async def test_switchover_refused_without_touching_anything() -> None:
    world = FakePlatform()
    m = make(world)
    with pytest.raises(switchover.SwitchoverRefused, match="no member 'zz'"):
        await m.request_switchover("zz")
    assert world.calls == []


@pytest.mark.looptime
async def test_switchover_gives_up_when_target_never_catches_up() -> None:
    world = FakePlatform()
    m = make(world)
    world.obs["a"] = follower_obs("a", 10)
    with pytest.raises(manager.SwitchoverFailed, match="did not replay"):
        await m.request_switchover("a")
    assert world.when("promote", "a") == []


@pytest.mark.looptime
async def test_forced_failover_overrides_max_lag() -> None:
    world = FakePlatform()
    m = make(world, max_lag_bytes=10)
    await m.run_cycle()  # remembers the primary at position 1000
    world.obs["a"] = follower_obs("a", 500)
    world.obs["b"] = follower_obs("b", 400)
    world.kill("p")
    decision = await m.run_cycle()
    assert decision is not None and decision.kind is K.BLOCKED
    m.request_failover()
    decision = await m.run_cycle()
    assert decision is not None and decision.kind is K.FAILING_OVER
    assert world.when("promote", "a")
    await m.close()


@pytest.mark.looptime
async def test_status_is_handed_to_the_sink_every_cycle() -> None:
    world = FakePlatform()
    seen: list[dict[str, object]] = []

    async def sink(status: manager.ManagerStatus) -> None:
        seen.append(status.to_dict())

    m = manager.ShardManager(
        world,
        policy.ShardPolicy(),
        clock=FakePlatform.now,
        observer=world.observe,
        on_status=sink,
    )
    await m.run_cycle()
    world.kill("p")
    await m.run_cycle()
    assert [s["state"] for s in seen] == ["healthy", "failing-over"]
    assert seen[1]["epoch"] == 1 and seen[1]["primary"] == "p"
    await m.close()
