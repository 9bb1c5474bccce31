"""The ShardManager loop with an in-memory platform and fake time (looptime)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import pytest

from pgshard_operator.platform import base
from pgshard_operator.shard import decide, manager, policy, state, switchover
from pgshard_proxy.contract import topology
from tests.unit.fake_platform import FakePlatform
from tests.unit.shard_fixtures import follower_obs

K = decide.DecisionKind


def make(platform: FakePlatform, **failover: object) -> manager.ShardManager:
    failover.setdefault("max_clock_skew_seconds", 0.0)  # one clock in these tests
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
    # Cycles at 0,1,2,...: the first with now >= 7.5 is t=8; one a fifth of a period
    # after a promotion (the new primary's sync standby is named sooner).
    assert world.when("promote", "b") == [8.0]
    assert world.shard.epoch == 2 and world.shard.primary is not None
    assert world.shard.primary.name == "b"
    assert world.when("repoint", "a") == [8.0]
    assert world.when("rejoin", "p") == [8.2]  # upkeep of the next cycle, a fifth later
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
    assert world.when("rejoin", "p") == [0.2]  # once, although cycles ran while it took 3s
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
    # b died at t=10; cooldown since the promotion at t=0 ends at t=60 (cycles at
    # 0.2 + n after the first promotion's quick next cycle).
    promoted = [(t, n) for t, w, n in world.calls if w == "promote"]
    assert promoted == [(0.0, "b"), (pytest.approx(60.2), "p")]  # p rejoined ahead of a
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
    # Announced first (proxies hold new requests), fenced after the drain, then cleared.
    seen = [(t, sw.target if sw else None) for t, sw in world.switching_seen]
    assert seen[-2:] == [(0.0, "a"), (pytest.approx(2.0, abs=0.1), None)]
    assert world.when("fence", "p") == [0.5]
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
    # The announcement is withdrawn: proxies stop holding requests for it.
    assert [sw.target if sw else None for _, sw in world.switching_seen] == ["a", None]


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


def sync_world() -> tuple[FakePlatform, manager.ShardManager]:
    """p primary, a and b both published in the sync set; a is missing when p dies."""
    world = FakePlatform()
    world.shard = dataclasses.replace(world.shard, sync_standbys=("a", "b"))
    pol = policy.ShardPolicy(
        replication=policy.ReplicationSettings(policy.ReplicationMode.SYNC),
    )
    m = manager.ShardManager(
        world,
        pol,
        clock=FakePlatform.now,
        observer=world.observe,
        force_command="pgshard failover --dir D --shard 0 --accept-loss",
    )
    return world, m


@pytest.mark.looptime
async def test_a_blocked_shard_says_how_to_force_it_every_minute() -> None:
    world, m = sync_world()
    world.hang("a")
    world.kill("p")
    async with running(m):
        await asyncio.sleep(150)
    status = m.status()
    assert status.kind is K.BLOCKED
    assert "missing: a" in status.reason
    assert status.reason.endswith("to force it: pgshard failover --dir D --shard 0 --accept-loss")
    blocked = [e for e in world.events if e[0] is base.EventReason.FAILOVER_BLOCKED]
    assert len(blocked) == 3  # at 0, 60 and 120 s
    assert world.when("promote", "b") == []


@pytest.mark.looptime
async def test_a_forced_failover_of_a_blocked_sync_shard_promotes_the_best_answering() -> None:
    world, m = sync_world()
    world.hang("a")
    world.kill("p")
    assert (await m.run_cycle() or decide.Decision(K.HEALTHY, "")).kind is K.BLOCKED
    m.request_failover()
    d = await m.run_cycle()
    assert d is not None and d.kind is K.FAILING_OVER and "forced" in d.reason
    assert world.when("promote", "b") and world.shard.sync_standbys == ()
    await m.close()


@pytest.mark.looptime
async def test_a_failed_rejoin_is_retried_with_backoff() -> None:
    world = FakePlatform()
    m = make(world)
    failing = True
    rejoin = world.rejoin

    async def flaky(member: str, primary: str) -> state.RejoinResult:
        if failing:
            world.calls.append((FakePlatform.now(), "rejoin-failed", member))
            raise base.PlatformError(f"{primary} went away")
        return await rejoin(member, primary)

    world.rejoin = flaky  # type: ignore[method-assign]
    world.kill("p")
    async with running(m):
        await asyncio.sleep(40)
    # Failover at 0; attempts at 0.2 (the quick cycle after a promotion), then 5, 10,
    # 20 s apart.
    assert world.when("rejoin-failed", "p") == pytest.approx([0.2, 5.2, 15.2, 35.2])
    assert any("retrying in 20s" in e[1] for e in world.events)


@pytest.mark.looptime
async def test_a_member_the_platform_marks_unprobed_is_unreachable_without_a_probe() -> None:
    # Issue 15: a probe of a re-created pod's address hung for its whole timeout,
    # delaying the cycle that lets the new primary acknowledge commits.
    world = FakePlatform()
    world.members["a"] = dataclasses.replace(
        world.members["a"], process=state.ProcessState.REPLACED, unprobed="re-created"
    )
    probed: list[str] = []

    async def observe(
        name: str, dsn: str, timeout: float, process: state.ProcessState
    ) -> state.MemberObservation:
        probed.append(name)
        return await world.observe(name, dsn, timeout, process)

    pol = policy.ShardPolicy(failover=policy.FailoverSettings(max_clock_skew_seconds=0.0))
    m = manager.ShardManager(world, pol, clock=FakePlatform.now, observer=observe)
    await m.run_cycle()
    assert sorted(probed) == ["b", "p"]
    seen = m._observations["a"]
    assert not seen.ok and seen.process is state.ProcessState.REPLACED
    assert "re-created" in (seen.error or "")


@pytest.mark.looptime
async def test_after_a_sync_failover_a_caught_up_follower_is_named_within_a_fifth_of_a_cycle() -> (
    None
):
    """Issue 15: in ``sync`` mode the new primary starts with only the followers that held
    all it did; its commits wait until the manager sees another one caught up and names it.
    The cycles right after a promotion, and while the primary's commits wait for a follower
    to be named, come at a fifth of the period (every delete of the loop paid up to a whole
    cycle here, more on a loaded machine)."""
    world, m = sync_world()
    await m.run_cycle()
    world.kill("p")
    async with running(m):
        await asyncio.sleep(3)
    assert world.when("promote", "b") == [0.0]
    named = [t for t, what, who in world.calls if what == "sync" and who == "b" and t > 0]
    assert named and named[0] <= m.policy.cycle_seconds / 5 + 1e-6, world.calls
    assert '"a"' in (world.obs["b"].sync_standby_names or "")


@pytest.mark.looptime
async def test_a_probe_that_raises_counts_its_member_unreachable_not_the_cycle_failed() -> None:
    """asyncpg raised InternalClientError ("cannot switch to state 11; another operation
    is in progress") probing a primary whose pod was being deleted: the whole cycle
    failed and the failover waited a cycle more (issue 15's delete loop, ~1 s)."""
    world = FakePlatform()
    m = make(world)
    await m.run_cycle()
    world.kill("p")
    observe = world.observe

    async def confused(
        name: str, dsn: str, timeout: float, process: state.ProcessState
    ) -> state.MemberObservation:
        if name == "p":
            raise RuntimeError("cannot switch to state 11; another operation is in progress")
        return await observe(name, dsn, timeout, process)

    m._observer = confused
    d = await m.run_cycle()
    assert d is not None and d.kind is K.FAILING_OVER, d
    assert world.when("promote", "b") == [0.0]
    await m.close()


def make_buffering(platform: FakePlatform, **failover: object) -> manager.ShardManager:
    """A manager with ``proxy.bufferOnFailover`` on and a 5 s window."""
    m = make(platform, **failover)
    m.policy = dataclasses.replace(m.policy, failover_buffer_seconds=5.0)
    return m


@pytest.mark.looptime
async def test_a_decided_failover_is_announced_to_the_proxies_when_asked_for() -> None:
    world = FakePlatform()
    m = make_buffering(world)
    await m.run_cycle()
    world.kill("p")
    before = len(world.switching_seen)
    await m.run_cycle()
    # Announced (until now + the window), then promoted, then the new primary published.
    (_, announced), (_, published) = world.switching_seen[before:]
    assert announced is not None and announced.target == "b"
    assert (announced.since, announced.until) == (0.0, 5.0)
    assert published is None and world.shard.primary is not None
    assert world.shard.primary.name == "b" and world.shard.switching is None
    await m.close()


@pytest.mark.looptime
async def test_a_hung_primary_is_announced_at_the_decision_not_at_the_first_failed_probe() -> None:
    world = FakePlatform(ttl=7.5)
    m = make_buffering(world, detection_seconds=3)
    await m.run_cycle()
    world.hang("p")
    async with running(m):
        await asyncio.sleep(10)
    announced = [(t, sw.target) for t, sw in world.switching_seen if sw is not None]
    assert announced == [(8.0, "b")]
    assert world.when("promote", "b") == [8.0]


@pytest.mark.looptime
async def test_unplanned_failovers_are_not_announced_by_default() -> None:
    world = FakePlatform()
    m = make(world)
    world.kill("p")
    await m.run_cycle()
    assert world.when("promote", "b") == [0.0]
    assert all(sw is None for _, sw in world.switching_seen)
    await m.close()


@pytest.mark.looptime
async def test_an_announced_failover_that_fails_is_withdrawn() -> None:
    world = FakePlatform()
    m = make_buffering(world)
    world.kill("p")

    async def refuse(member: str, epoch: int, replaces: state.Lease | None) -> None:
        raise base.PlatformError(f"{member} did not promote")

    world.promote = refuse  # type: ignore[method-assign]
    decision = await m.run_cycle()
    assert decision is not None and decision.kind is K.FAILING_OVER
    assert [sw.target if sw else None for _, sw in world.switching_seen] == ["b", None]
    assert world.shard.switching is None
    await m.close()


@pytest.mark.looptime
async def test_a_blocked_failover_withdraws_an_announcement_left_behind() -> None:
    world = FakePlatform()
    m = make_buffering(world)
    # Announced by a manager that died before it promoted; now no follower answers.
    left = topology.Switching(target="b", since=0.0, until=5.0)
    world.shard = dataclasses.replace(world.shard, switching=left)
    world.kill("p")
    for name in ("a", "b"):
        world.hang(name)
    decision = await m.run_cycle()
    assert decision is not None and decision.kind is K.BLOCKED
    assert world.switching_seen == [(0.0, None)]
    assert world.shard.switching is None
    await m.close()
