"""The pure switchover steps: choosing/validating the target, catch-up, final actions."""

from __future__ import annotations

import pytest

from pgshard_operator.shard import actions, policy, state, switchover
from tests.unit.shard_fixtures import P, by_name, down, follower_obs, primary_obs, snapshot

POL = policy.ShardPolicy()
OBS = by_name(primary_obs(), follower_obs("a", 900), follower_obs("b", 950))


def test_best_target_when_none_given() -> None:
    assert switchover.plan(snapshot(), OBS, None, POL) == switchover.SwitchoverPlan("p", "b")


def test_chosen_target() -> None:
    assert switchover.plan(snapshot(), OBS, "a", POL).target == "a"


@pytest.mark.parametrize(
    ("obs", "target", "message"),
    [
        (by_name(down("p"), follower_obs("a")), None, "not writable"),
        (OBS, "q", "has no member 'q'"),
        (OBS, "p", "already the primary"),
        (by_name(primary_obs(), down("a"), follower_obs("b")), "a", "a cannot be promoted"),
        (by_name(primary_obs(), down("a"), down("b")), None, "no running follower"),
    ],
)
def test_refusals(
    obs: dict[str, state.MemberObservation], target: str | None, message: str
) -> None:
    with pytest.raises(switchover.SwitchoverRefused, match=message):
        switchover.plan(snapshot(), obs, target, POL)


def test_only_a_follower_streaming_from_the_primary_is_a_target() -> None:
    """Seen in a random-fault run: a target pointed elsewhere never caught up, and the
    abandoned switchover left the shard with its primary fenced."""
    obs = by_name(primary_obs(streaming=("a",)), follower_obs("a", 900), follower_obs("b", 950))
    assert switchover.plan(snapshot(), obs, None, POL).target == "a"  # b is further, idle
    with pytest.raises(switchover.SwitchoverRefused, match="b does not stream from p now"):
        switchover.plan(snapshot(), obs, "b", POL)
    nobody = by_name(primary_obs(streaming=()), follower_obs("a"), follower_obs("b"))
    with pytest.raises(switchover.SwitchoverRefused, match="no running follower streaming"):
        switchover.plan(snapshot(), nobody, None, POL)
    # Statement mode has no WAL connections: any running follower applies the log.
    statement = policy.ShardPolicy(replication=policy.ReplicationSettings(statement=True))
    assert switchover.plan(snapshot(), nobody, "b", statement).target == "b"


def test_target_already_primary_is_told_apart_from_other_refusals() -> None:
    with pytest.raises(switchover.AlreadyPrimary):
        switchover.plan(snapshot(), OBS, "p", POL)
    with pytest.raises(switchover.SwitchoverRefused) as refused:
        switchover.plan(snapshot(), OBS, "q", POL)
    assert not isinstance(refused.value, switchover.AlreadyPrimary)


def test_quorum_switchover_refused_when_too_few_would_confirm() -> None:
    pol = policy.ShardPolicy(
        replication=policy.ReplicationSettings(policy.ReplicationMode.QUORUM, quorum=2)
    )
    obs = by_name(primary_obs(streaming=("a",)), follower_obs("a"), down("b"))
    with pytest.raises(switchover.SwitchoverRefused, match="needs 2"):
        switchover.plan(snapshot(), obs, "a", pol)
    ok = by_name(primary_obs(streaming=("a", "b")), follower_obs("a"), follower_obs("b"))
    assert switchover.plan(snapshot(), ok, "a", pol).target == "a"


def test_caught_up_needs_replay_past_the_fence_position() -> None:
    assert switchover.caught_up(follower_obs("a", 1001), P(1000))
    assert not switchover.caught_up(follower_obs("a", 1000), P(1000))
    assert not switchover.caught_up(follower_obs("a", 5000), None)
    assert not switchover.caught_up(down("a"), P(1))


def test_finish_promotes_at_next_epoch_and_rejoins_old_primary() -> None:
    lease = state.Lease("p", 1, 0.0)
    snap = snapshot(lease=None)
    after_fence = by_name(down("p"), follower_obs("a", 1001), follower_obs("b", 1001))
    steps = switchover.finish_actions(
        snap, after_fence, POL, switchover.SwitchoverPlan("p", "a"), now=50.0
    )
    promote, publish, repoint, rejoin = steps
    assert promote == actions.Promote("a", 2, None)
    assert isinstance(publish, actions.PublishTopology)
    assert publish.shard.last_failover is not None
    assert publish.shard.last_failover["kind"] == "switchover"
    assert repoint == actions.Repoint("b", "a")
    assert rejoin == actions.Rejoin("p", "a")
    assert lease.holder == "p"


def test_caught_up_in_statement_mode_means_the_last_entry_applied() -> None:
    target = state.MemberObservation(
        name="t", process=state.ProcessState.ALIVE, reachable=True, in_recovery=True,
        replayed_lsn=state.positions.Position(33),
    )  # fmt: skip
    assert switchover.caught_up(target, state.positions.Position(33), statement=True)
    assert not switchover.caught_up(target, state.positions.Position(34), statement=True)
    assert not switchover.caught_up(target, state.positions.Position(33))  # WAL: strictly past it
