"""decide(): every transition of the failover state machine, with an injected clock."""

from __future__ import annotations

import dataclasses

import pytest

from pgshard_operator.shard import actions, decide, policy, record, state
from tests.unit.shard_fixtures import by_name, down, follower_obs, primary_obs, snapshot

K = decide.DecisionKind
NOW = 10_000.0
ASYNC = policy.ShardPolicy()
SYNC = policy.ShardPolicy(replication=policy.ReplicationSettings(policy.ReplicationMode.SYNC))


def quorum(k: int) -> policy.ShardPolicy:
    return policy.ShardPolicy(
        replication=policy.ReplicationSettings(policy.ReplicationMode.QUORUM, quorum=k)
    )


def run(
    snap: state.ShardSnapshot,
    obs: dict[str, state.MemberObservation],
    *,
    pol: policy.ShardPolicy = ASYNC,
    down_since: float | None = None,
    last_position: int | None = None,
    force: bool = False,
    now: float = NOW,
    epoch_start: int | None = None,
    rejoin_failed: frozenset[str] = frozenset(),
) -> decide.Decision:
    memory = decide.Memory(
        epoch=snap.epoch,
        primary_unreachable_since=down_since,
        last_primary_position=state.positions.Position(last_position)
        if last_position is not None
        else None,
        epoch_start_position=state.positions.Position(epoch_start)
        if epoch_start is not None
        else None,
        rejoin_failed=rejoin_failed,
    )
    return decide.decide(snap, obs, now, pol, memory, force=force)


def with_sync(snap: state.ShardSnapshot, *names: str) -> state.ShardSnapshot:
    """``snap`` whose record publishes the sync set ``names``."""
    return dataclasses.replace(
        snap, shard=dataclasses.replace(snap.shard, sync_standbys=tuple(names))
    )


def of_type(decision: decide.Decision, kind: type) -> list[object]:
    return [a for a in decision.actions if isinstance(a, kind)]


def lease(holder: str = "p", expires_at: float = NOW + 5, epoch: int = 1) -> state.Lease:
    return state.Lease(holder=holder, epoch=epoch, expires_at=expires_at)


HEALTHY_OBS = by_name(primary_obs(), follower_obs("a"), follower_obs("b"))


def published(
    snap: state.ShardSnapshot, obs: dict[str, state.MemberObservation]
) -> state.ShardSnapshot:
    """The same snapshot with the record already matching what the manager would publish."""
    shard = record.shard_record(
        snap,
        obs,
        primary=snap.primary,
        epoch=snap.epoch,
        last_failover=snap.last_failover,
        sync_standbys=snap.shard.sync_standbys,
    )
    return state.ShardSnapshot(snap.members, shard, snap.version, snap.lease)


# -- healthy ---------------------------------------------------------------------------


def test_no_primary_in_record() -> None:
    assert run(snapshot(primary=None), {}).kind is K.NO_PRIMARY


def test_primary_that_is_not_a_member_blocks_with_a_reason() -> None:
    d = run(snapshot(primary="q"), HEALTHY_OBS)
    assert d.kind is K.BLOCKED
    assert "primary q is not a member of the shard (members: a, b, p)" in d.reason


def test_healthy_and_published_needs_nothing() -> None:
    snap = published(snapshot(lease=lease()), HEALTHY_OBS)
    d = run(snap, HEALTHY_OBS)
    assert d.kind is K.HEALTHY
    assert d.actions == ()
    assert "primary p is writable at epoch 1" in d.reason


def test_healthy_publishes_a_changed_structure() -> None:
    d = run(snapshot(lease=lease()), HEALTHY_OBS)
    assert d.kind is K.HEALTHY
    (pub,) = of_type(d, actions.PublishTopology)
    assert isinstance(pub, actions.PublishTopology)
    assert [f.state for f in pub.shard.followers] == ["streaming", "streaming"]
    assert pub.shard.primary is not None and pub.shard.primary.position == 1000


def test_follower_streaming_from_elsewhere_is_repointed() -> None:
    obs = by_name(primary_obs(), follower_obs("a", upstream="old.test:5432"), follower_obs("b"))
    d = run(published(snapshot(), obs), obs)
    assert d.kind is K.HEALTHY
    assert d.actions == (actions.Repoint("a", "p"),)


@pytest.mark.parametrize(
    ("pol", "have", "want"),
    [
        (SYNC, "", 'ANY 1 ("a", "b")'),
        (quorum(2), 'ANY 1 ("a", "b")', 'ANY 2 ("a", "b")'),
        (ASYNC, 'ANY 1 ("a", "b")', ""),
    ],
)
def test_sync_standby_names_are_kept_right(pol: policy.ShardPolicy, have: str, want: str) -> None:
    obs = by_name(primary_obs(sync=have), follower_obs("a"), follower_obs("b"))
    snap = snapshot() if pol is ASYNC else with_sync(snapshot(), "a", "b")
    d = run(published(snap, obs), obs, pol=pol)
    assert d.actions == (actions.SetSyncStandbys("p", want),)


def test_correct_sync_standby_names_are_left_alone() -> None:
    obs = by_name(primary_obs(sync='ANY 1 ("a", "b")'), follower_obs("a"), follower_obs("b"))
    snap = with_sync(snapshot(), "a", "b")
    assert run(published(snap, obs), obs, pol=SYNC).actions == ()


def test_a_caught_up_follower_is_published_before_it_is_listed() -> None:
    obs = by_name(primary_obs(sync='ANY 1 ("a")'), follower_obs("a"), follower_obs("b"))
    snap = published(with_sync(snapshot(), "a"), obs)
    d = run(snap, obs, pol=SYNC, epoch_start=1000)
    pub, setting = d.actions
    assert isinstance(pub, actions.PublishTopology) and pub.shard.sync_standbys == ("a", "b")
    assert setting == actions.SetSyncStandbys("p", 'ANY 1 ("a", "b")')
    assert "b caught up" in d.reason


def test_a_follower_behind_the_epoch_start_is_not_listed_yet() -> None:
    obs = by_name(primary_obs(sync='ANY 1 ("a")'), follower_obs("a"), follower_obs("b"))
    snap = published(with_sync(snapshot(), "a"), obs)
    # pg_stat_replication shows both streaming at 1000; the epoch started at 1001.
    assert run(snap, obs, pol=SYNC, epoch_start=1001).actions == ()


def test_an_older_record_takes_the_primarys_setting_as_its_sync_set() -> None:
    obs = by_name(primary_obs(sync='ANY 1 ("a", "b")', streaming=()), down("a"), down("b"))
    d = run(published(snapshot(), obs), obs, pol=SYNC, epoch_start=1000)
    (pub,) = of_type(d, actions.PublishTopology)
    assert isinstance(pub, actions.PublishTopology) and pub.shard.sync_standbys == ("a", "b")
    assert of_type(d, actions.SetSyncStandbys) == []


def test_with_nobody_caught_up_commits_wait_for_a_follower() -> None:
    obs = by_name(primary_obs(sync="", streaming=()), follower_obs("a"), follower_obs("b"))
    d = run(published(with_sync(snapshot()), obs), obs, pol=SYNC, epoch_start=1000)
    assert d.actions == (actions.SetSyncStandbys("p", 'ANY 1 ("pgshard_no_follower")'),)


def test_a_second_writable_member_is_fenced_and_rejoined() -> None:
    obs = by_name(primary_obs(), primary_obs("a"), follower_obs("b"))
    d = run(published(snapshot(), obs), obs)
    assert d.kind is K.HEALTHY
    assert d.actions[:2] == (actions.Fence("a"), actions.Rejoin("a", "p"))
    assert "a is writable but not the primary" in d.reason


def test_old_primary_rejoins_after_a_failover() -> None:
    last = state.LastFailover(state.FailoverKind.FAILOVER, NOW - 5, "x", "p", 2, "test")
    obs = by_name(primary_obs(), follower_obs("a"), follower_obs("b"), down("x"))
    snap = published(snapshot(names=("p", "a", "b", "x"), epoch=2, last_failover=last), obs)
    d = run(snap, obs)
    assert of_type(d, actions.Rejoin) == [actions.Rejoin("x", "p")]


def test_rejoined_old_primary_is_not_rejoined_again() -> None:
    last = state.LastFailover(
        state.FailoverKind.FAILOVER,
        NOW - 5,
        "x",
        "p",
        2,
        "test",
        rejoin=state.RejoinMethod.REWIND,
        discarded_bytes=0,
    )
    obs = by_name(
        primary_obs(streaming=("a", "b", "x")),
        follower_obs("a"),
        follower_obs("b"),
        follower_obs("x"),
    )
    snap = published(snapshot(names=("p", "a", "b", "x"), epoch=2, last_failover=last), obs)
    assert run(snap, obs).actions == ()


def test_a_gone_follower_is_restarted_as_follower() -> None:
    obs = by_name(
        primary_obs(streaming=("a",)), follower_obs("a"), down("b", state.ProcessState.GONE)
    )
    snap = published(snapshot(gone=("b",)), obs)
    assert run(snap, obs).actions == (actions.Rejoin("b", "p"),)


# -- primary down --------------------------------------------------------------------------


DOWN_OBS = by_name(down("p"), follower_obs("a", 900), follower_obs("b", 950))


def test_gone_primary_fails_over_at_once_despite_its_lease() -> None:
    obs = by_name(
        down("p", state.ProcessState.GONE), follower_obs("a", 900), follower_obs("b", 950)
    )
    snap = snapshot(lease=lease(expires_at=NOW + 9), gone=("p",))
    d = run(snap, obs, down_since=NOW)
    assert d.kind is K.FAILING_OVER
    assert "process is gone" in d.reason
    promote, pub, repoint = d.actions
    assert promote == actions.Promote("b", 2, snap.lease)
    assert isinstance(pub, actions.PublishTopology)
    assert pub.shard.epoch == 2 and pub.shard.primary is not None
    assert pub.shard.primary.name == "b"
    assert pub.shard.last_failover is not None
    assert pub.shard.last_failover["from"] == "p" and pub.shard.last_failover["to"] == "b"
    assert repoint == actions.Repoint("a", "b")


def test_unreachable_primary_is_only_suspect_within_detection() -> None:
    d = run(snapshot(), DOWN_OBS, down_since=NOW - 3)
    assert d.kind is K.PRIMARY_SUSPECT
    assert d.actions == ()
    assert "for 3.0s; failing over after 10s" in d.reason


def test_a_primary_being_stopped_skips_the_detection_wait_but_not_its_lease() -> None:
    snap = snapshot()
    stopping = dataclasses.replace(snap.members[0], process=state.ProcessState.STOPPING)
    snap = dataclasses.replace(snap, members=(stopping, *snap.members[1:]))
    d = run(snap, DOWN_OBS, down_since=NOW)
    assert d.kind is K.FAILING_OVER
    assert "is being stopped" in d.reason and "no lease held" in d.reason
    held = dataclasses.replace(snap, lease=lease(expires_at=NOW + 4.5))
    assert run(held, DOWN_OBS, down_since=NOW).kind is K.WAITING_LEASE


def test_a_replaced_primary_pod_skips_the_detection_wait_but_not_its_lease() -> None:
    # Its pod object was deleted (and maybe created again): a force-deleted pod or one on
    # a lost node can still run, so nothing proves its PostgreSQL stopped.
    snap = snapshot(lease=lease(expires_at=NOW + 4.5))
    replaced = dataclasses.replace(snap.members[0], process=state.ProcessState.REPLACED)
    snap = dataclasses.replace(snap, members=(replaced, *snap.members[1:]))
    d = run(snap, DOWN_OBS, down_since=NOW)
    assert d.kind is K.WAITING_LEASE
    assert "primary p was replaced by a new pod" in d.reason
    expired = dataclasses.replace(snap, lease=lease(expires_at=NOW - 2))
    assert run(expired, DOWN_OBS, down_since=NOW).kind is K.FAILING_OVER


def test_a_gone_primary_whose_exit_is_proven_is_failed_over_despite_its_lease() -> None:
    snap = snapshot(lease=lease(expires_at=NOW + 4.5))
    gone = dataclasses.replace(snap.members[0], process=state.ProcessState.GONE)
    snap = dataclasses.replace(snap, members=(gone, *snap.members[1:]))
    assert run(snap, DOWN_OBS, down_since=NOW).kind is K.FAILING_OVER


def test_the_lease_counts_as_valid_for_max_clock_skew_after_its_expiry() -> None:
    skewed = policy.ShardPolicy(failover=policy.FailoverSettings(max_clock_skew_seconds=1.0))
    snap = snapshot(lease=lease(expires_at=NOW - 0.5))  # expired by the manager's clock
    d = run(snap, DOWN_OBS, down_since=NOW - 10, pol=skewed)
    assert d.kind is K.WAITING_LEASE
    assert "0.5s left" in d.reason and "clock skew" in d.reason
    later = dataclasses.replace(snap, lease=lease(expires_at=NOW - 1.0))
    assert run(later, DOWN_OBS, down_since=NOW - 10, pol=skewed).kind is K.FAILING_OVER


def test_read_only_primary_counts_as_down() -> None:
    obs = by_name(follower_obs("p"), follower_obs("a"), follower_obs("b"))
    d = run(snapshot(), obs, down_since=NOW)
    assert d.kind is K.PRIMARY_SUSPECT
    assert "answers but is read-only" in d.reason


def test_after_detection_wait_for_the_lease() -> None:
    d = run(snapshot(lease=lease(expires_at=NOW + 4.5)), DOWN_OBS, down_since=NOW - 10)
    assert d.kind is K.WAITING_LEASE
    assert "waiting for lease expiry, 5.5s left (held by p; 1s allowed for clock skew)" in d.reason
    assert d.actions == ()


def test_a_lease_held_by_another_member_also_blocks_promotion() -> None:
    obs = by_name(down("p", state.ProcessState.GONE), follower_obs("a"), down("b"))
    d = run(snapshot(lease=lease("b", epoch=2), gone=("p",)), obs, down_since=NOW)
    assert d.kind is K.WAITING_LEASE


def test_expired_lease_fails_over_to_the_most_advanced_follower() -> None:
    # Expiry (plus the default 1 s for clock skew) is exclusive: now == that is expired.
    snap = snapshot(lease=lease(expires_at=NOW - 1))
    d = run(snap, DOWN_OBS, down_since=NOW - 10)
    assert d.kind is K.FAILING_OVER
    assert of_type(d, actions.Promote) == [actions.Promote("b", 2, snap.lease)]
    assert "lease expired" in d.reason


def test_without_any_lease_failover_follows_detection() -> None:
    d = run(snapshot(), DOWN_OBS, down_since=NOW - 10)
    assert d.kind is K.FAILING_OVER
    assert "no lease held" in d.reason


def test_epoch_is_above_both_record_and_lease() -> None:
    snap = snapshot(epoch=3, lease=lease(epoch=5, expires_at=NOW - 1))
    d = run(snap, DOWN_OBS, down_since=NOW - 10)
    (promote,) = of_type(d, actions.Promote)
    assert isinstance(promote, actions.Promote) and promote.epoch == 6


def test_cooldown_blocks_a_second_failover_and_force_overrides() -> None:
    last = state.LastFailover(state.FailoverKind.FAILOVER, NOW - 20, "x", "p", 1, "earlier")
    snap = snapshot(last_failover=last)
    d = run(snap, DOWN_OBS, down_since=NOW - 10)
    assert d.kind is K.COOLDOWN
    assert "last failover was 20s ago" in d.reason and "40s more" in d.reason
    assert run(snap, DOWN_OBS, down_since=NOW - 10, force=True).kind is K.FAILING_OVER
    later = run(snap, DOWN_OBS, down_since=NOW - 10, now=last.at + 60)
    assert later.kind is K.FAILING_OVER


def test_cooldown_is_reported_before_the_lease_wait_and_mentions_it() -> None:
    last = state.LastFailover(state.FailoverKind.FAILOVER, NOW - 20, "x", "p", 1, "earlier")
    snap = snapshot(last_failover=last, lease=lease(expires_at=NOW + 2))
    d = run(snap, DOWN_OBS, down_since=NOW - 10)
    assert d.kind is K.COOLDOWN
    assert "the lease also has 3.0s left" in d.reason  # 2 s + 1 s for clock skew
    # Forcing skips the cooldown but still waits for the lease.
    assert run(snap, DOWN_OBS, down_since=NOW - 10, force=True).kind is K.WAITING_LEASE


def test_disabled_failover_is_blocked() -> None:
    pol = policy.ShardPolicy(failover=policy.FailoverSettings(enabled=False))
    d = run(snapshot(), DOWN_OBS, pol=pol, down_since=NOW - 100)
    assert d.kind is K.BLOCKED and "failover.enabled=false" in d.reason


def test_no_follower_answers() -> None:
    obs = by_name(down("p"), down("a"), down("b"))
    d = run(snapshot(), obs, down_since=NOW - 10)
    assert d.kind is K.BLOCKED and "no follower can be promoted" in d.reason


def test_async_candidate_too_far_behind_is_refused_unless_forced() -> None:
    pol = policy.ShardPolicy(failover=policy.FailoverSettings(max_lag_bytes=40))
    d = run(snapshot(), DOWN_OBS, pol=pol, down_since=NOW - 10, last_position=1000)
    assert d.kind is K.BLOCKED
    assert "b is 50 bytes behind" in d.reason and "maxLagBytes=40" in d.reason
    assert run(snapshot(), DOWN_OBS, pol=pol, down_since=NOW - 10, last_position=990).kind is (
        K.FAILING_OVER
    )
    forced = run(snapshot(), DOWN_OBS, pol=pol, down_since=NOW - 10, last_position=1000, force=True)
    assert forced.kind is K.FAILING_OVER and "forced" in forced.reason


@pytest.mark.parametrize(
    ("pol", "answering", "kind"),
    [
        (SYNC, ("a", "b"), K.FAILING_OVER),  # ANY 1 of 2: need both
        (SYNC, ("a",), K.BLOCKED),
        (quorum(2), ("a",), K.FAILING_OVER),  # ANY 2 of 2: any one holds every ack
        (quorum(2), (), K.BLOCKED),
    ],
)
def test_sync_and_quorum_promote_only_when_every_ack_is_certain(
    pol: policy.ShardPolicy, answering: tuple[str, ...], kind: decide.DecisionKind
) -> None:
    obs = by_name(down("p"), *(follower_obs(n) if n in answering else down(n) for n in ("a", "b")))
    d = run(snapshot(), obs, pol=pol, down_since=NOW - 10)
    assert d.kind is kind
    if kind is K.BLOCKED and answering:
        assert "cannot be sure" in d.reason and "missing: b" in d.reason


def test_sync_failover_sets_the_candidates_standbys_before_promoting() -> None:
    obs = by_name(down("p"), follower_obs("a", 950), follower_obs("b", 950), follower_obs("c", 9))
    snap = with_sync(snapshot(names=("p", "a", "b", "c")), "a", "b")
    d = run(snap, obs, pol=SYNC, down_since=NOW - 10)
    # a and b tie (a wins by name); only b holds as much as a: c (behind) and p (the
    # failed primary) join once they have caught up under a.
    assert d.actions[0] == actions.SetSyncStandbys("a", 'ANY 1 ("b")')
    assert d.actions[1] == actions.Promote("a", 2, None)
    pub = d.actions[2]
    assert isinstance(pub, actions.PublishTopology) and pub.shard.sync_standbys == ("b",)


def test_sync_failover_with_no_follower_level_starts_with_an_empty_sync_set() -> None:
    d = run(with_sync(snapshot(), "a", "b"), DOWN_OBS, pol=SYNC, down_since=NOW - 10)
    assert d.actions[0] == actions.SetSyncStandbys("b", 'ANY 1 ("pgshard_no_follower")')


def test_a_follower_that_never_streamed_at_this_epoch_does_not_block() -> None:
    """Issue 16: the old primary a was still rejoining (never streamed from p) when p's
    pod was replaced; b, the only follower in the sync set, is promoted."""
    obs = by_name(down("p", state.ProcessState.REPLACED), down("a"), follower_obs("b", 950))
    snap = with_sync(snapshot(gone=("p",)), "b")
    d = run(snap, obs, pol=SYNC, down_since=NOW)
    assert d.kind is K.FAILING_OVER, d.reason
    assert of_type(d, actions.Promote)[0] == actions.Promote("b", 2, None)


@pytest.mark.parametrize("pol", [SYNC, quorum(1)])
def test_a_missing_follower_that_streamed_at_this_epoch_still_blocks(
    pol: policy.ShardPolicy,
) -> None:
    obs = by_name(down("p", state.ProcessState.REPLACED), down("a"), follower_obs("b", 950))
    d = run(with_sync(snapshot(gone=("p",)), "a", "b"), obs, pol=pol, down_since=NOW)
    assert d.kind is K.BLOCKED
    assert "missing: a" in d.reason and not d.actions


def test_an_empty_sync_set_blocks_a_failover() -> None:
    obs = by_name(down("p", state.ProcessState.REPLACED), follower_obs("a"), follower_obs("b"))
    d = run(with_sync(snapshot(gone=("p",))), obs, pol=SYNC, down_since=NOW)
    assert d.kind is K.BLOCKED and "no follower has caught up" in d.reason


def test_only_members_of_the_sync_set_are_candidates() -> None:
    # a holds more WAL but never caught up at this epoch (e.g. diverged); b is promoted.
    obs = by_name(down("p", state.ProcessState.GONE), follower_obs("a", 5000), follower_obs("b"))
    d = run(with_sync(snapshot(gone=("p",)), "b"), obs, pol=SYNC)
    assert of_type(d, actions.Promote) == [actions.Promote("b", 2, None)]


def test_a_member_whose_rejoin_failed_is_rejoined_under_the_current_primary() -> None:
    """Issue 16: its rejoin failed because the primary it was rejoining went away."""
    obs = by_name(primary_obs(streaming=("a",)), follower_obs("a"), down("b"))
    snap = published(snapshot(), obs)
    assert run(snap, obs).actions == ()
    d = run(snap, obs, rejoin_failed=frozenset({"b"}))
    assert d.actions == (actions.Rejoin("b", "p"),)
    assert "b's last rejoin failed" in d.reason


def test_a_completed_promotion_publishes_what_its_setting_lists() -> None:
    obs = by_name(down("p"), primary_obs("a", sync='ANY 1 ("b")'), follower_obs("b"))
    d = run(snapshot(lease=lease("a", epoch=2)), obs, pol=SYNC, down_since=NOW - 1)
    (pub,) = d.actions
    assert isinstance(pub, actions.PublishTopology) and pub.shard.sync_standbys == ("b",)


def test_unpublished_promotion_is_completed() -> None:
    obs = by_name(down("p"), primary_obs("a"), follower_obs("b"))
    d = run(snapshot(lease=lease("a", epoch=2)), obs, down_since=NOW - 1)
    assert d.kind is K.FAILING_OVER
    (pub,) = d.actions
    assert isinstance(pub, actions.PublishTopology)
    assert pub.shard.epoch == 2 and pub.shard.primary is not None and pub.shard.primary.name == "a"


# -- memory ------------------------------------------------------------------------------


def test_remember_tracks_the_outage_and_the_last_position() -> None:
    snap = snapshot()
    m = decide.remember(decide.Memory(), snap, HEALTHY_OBS, NOW)
    assert m == decide.Memory(
        1,
        None,
        state.positions.Position(1000),
        epoch_start_position=state.positions.Position(1000),
        answered=frozenset({"p", "a", "b"}),
    )
    m = decide.remember(m, snap, DOWN_OBS, NOW + 1)
    assert m.primary_unreachable_since == NOW + 1
    m = decide.remember(m, snap, DOWN_OBS, NOW + 5)
    assert m.primary_unreachable_since == NOW + 1
    assert m.last_primary_position == 1000
    fresh = decide.remember(m, snapshot(epoch=2), DOWN_OBS, NOW + 6)
    assert (fresh.epoch, fresh.primary_unreachable_since, fresh.last_primary_position) == (
        2,
        NOW + 6,
        None,
    )


def test_a_follower_that_stops_answering_is_rejoined_after_a_while() -> None:
    """It rejoined under a primary that failed before it was consistent: not open for
    connections, it cannot be repointed."""
    obs = by_name(primary_obs(streaming=("a",)), follower_obs("a"), down("b"))
    snap = published(snapshot(), obs)
    m = decide.remember(decide.Memory(), snap, HEALTHY_OBS, NOW - 100)
    m = decide.remember(m, snapshot(epoch=1), obs, NOW - 29)
    assert decide.decide(snap, obs, NOW, ASYNC, m).actions == ()
    m = decide.remember(m, snapshot(epoch=2), obs, NOW)
    d = decide.decide(published(snapshot(epoch=2), obs), obs, NOW + 1, ASYNC, m)
    assert d.actions == (actions.Rejoin("b", "p"),)
    assert "b has not answered for 30s" in d.reason


def test_a_follower_that_answers_but_never_streams_is_rejoined_after_a_while() -> None:
    """E.g. repointed while it held WAL past the new primary's fork: PostgreSQL keeps it
    running, answering, and retrying the primary, which refuses it."""
    obs = by_name(primary_obs(streaming=("a",)), follower_obs("a"), follower_obs("b"))
    snap = published(snapshot(), obs)
    m = decide.remember(decide.Memory(), snap, obs, NOW - 30)
    m = decide.remember(m, snap, obs, NOW - 1)
    assert m.not_streaming_since == {"b": (NOW - 30, 1000)}
    assert decide.decide(snap, obs, NOW - 1, ASYNC, m).actions == ()
    m = decide.remember(m, snap, obs, NOW)
    d = decide.decide(snap, obs, NOW, ASYNC, m)
    assert d.actions == (actions.Rejoin("b", "p"),)
    assert "b answers but has neither streamed from p nor replayed for 30s" in d.reason
    # Statement mode has no WAL connection to look for.
    statement = policy.ShardPolicy(replication=policy.ReplicationSettings(statement=True))
    assert decide.decide(snap, obs, NOW, statement, m).actions == ()


def test_a_follower_replaying_its_own_wal_before_connecting_is_left_alone() -> None:
    snap = published(snapshot(), HEALTHY_OBS)
    m = decide.Memory()
    for i in range(40):  # replays one more byte each second, never connected
        obs = by_name(primary_obs(streaming=("a",)), follower_obs("a"), follower_obs("b", i))
        m = decide.remember(m, snap, obs, NOW + i)
        assert not of_type(decide.decide(snap, obs, NOW + i, ASYNC, m), actions.Rejoin)
    assert m.not_streaming_since["b"] == (NOW + 39, 39)
    # Connected (listed by the primary), or pointed elsewhere: not tracked at all.
    m = decide.remember(m, snap, HEALTHY_OBS, NOW + 40)
    assert m.not_streaming_since == {}
    copying = dataclasses.replace(
        snap, members=tuple(dataclasses.replace(m, bootstrapping=True) for m in snap.members)
    )
    stuck = by_name(primary_obs(streaming=("a",)), follower_obs("a"), follower_obs("b"))
    assert decide.remember(m, copying, stuck, NOW + 41).not_streaming_since == {}
    elsewhere = by_name(
        primary_obs(streaming=("a",)), follower_obs("a"), follower_obs("b", upstream="x:1")
    )
    assert decide.remember(m, snap, elsewhere, NOW + 41).not_streaming_since == {}


def test_a_member_never_seen_answering_is_left_to_come_up() -> None:
    obs = by_name(primary_obs(streaming=("a",)), follower_obs("a"), down("b"))
    snap = published(snapshot(), obs)
    m = decide.remember(decide.Memory(), snap, obs, NOW - 100)
    assert decide.decide(snap, obs, NOW, ASYNC, decide.remember(m, snap, obs, NOW)).actions == ()


def test_remember_keeps_failed_rejoins_across_epochs() -> None:
    m = decide.Memory(epoch=1, rejoin_failed=frozenset({"b"}))
    m = decide.remember(m, snapshot(epoch=2), HEALTHY_OBS, NOW)
    assert m.epoch == 2 and m.rejoin_failed == {"b"}
