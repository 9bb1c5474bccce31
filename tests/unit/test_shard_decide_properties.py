"""Safety properties of decide() over many generated shard situations (hypothesis).

Whatever the observations, the lease and the clock:
- no promotion while a live primary's lease may still be valid;
- only a promotable follower (answering, in recovery) is promoted, at a new epoch;
- in sync/quorum mode, no automatic promotion unless every acknowledged commit is
  certainly on the answering followers;
- a writable primary is never failed over.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pgshard_operator.shard import actions, decide, order, policy, replication, state
from tests.unit.shard_fixtures import by_name, down, follower_obs, primary_obs, snapshot

NOW = 1_000.0
FOLLOWERS = ("a", "b", "c")

follower_states = st.sampled_from(["streaming", "down", "gone", "writable"])


@st.composite
def situations(draw: st.DrawFn) -> tuple[object, ...]:
    mode = draw(st.sampled_from(list(policy.ReplicationMode)))
    k = draw(st.integers(1, 3))
    pol = policy.ShardPolicy(
        replication=policy.ReplicationSettings(mode, quorum=k),
        failover=policy.FailoverSettings(
            detection_seconds=draw(st.sampled_from([1.0, 10.0])),
            cooldown_seconds=draw(st.sampled_from([0.0, 60.0])),
            max_lag_bytes=draw(st.one_of(st.none(), st.integers(0, 500))),
        ),
    )
    primary_state = draw(st.sampled_from(["writable", "down", "gone", "read-only"]))
    lease_left = draw(st.one_of(st.none(), st.floats(-20, 20)))
    down_for = draw(st.one_of(st.none(), st.floats(0, 30)))
    last_failover_ago = draw(st.one_of(st.none(), st.floats(0, 120)))
    followers = {n: draw(follower_states) for n in FOLLOWERS}
    positions = {n: draw(st.integers(0, 2000)) for n in FOLLOWERS}
    last_position = draw(st.one_of(st.none(), st.integers(0, 2000)))
    force = draw(st.booleans())
    return (
        pol,
        primary_state,
        lease_left,
        down_for,
        last_failover_ago,
        followers,
        positions,
        last_position,
        force,
    )


@settings(max_examples=200, deadline=None)
@given(situations())
def test_decide_is_safe(situation: tuple[object, ...]) -> None:
    (pol, primary_state, lease_left, down_for, ago, followers, positions, last_pos, force) = (
        situation
    )
    assert isinstance(pol, policy.ShardPolicy)
    assert isinstance(followers, dict) and isinstance(positions, dict)
    gone = {n for n, s in followers.items() if s == "gone"}
    if primary_state == "gone":
        gone.add("p")
    lease = state.Lease("p", 1, NOW + lease_left) if isinstance(lease_left, float) else None
    last = (
        state.LastFailover(
            state.FailoverKind.FAILOVER,
            NOW - ago,
            "x",
            "p",
            1,
            "earlier",
            rejoin=state.RejoinMethod.REWIND,
        )
        if isinstance(ago, float)
        else None
    )
    snap = snapshot(names=("p", *FOLLOWERS), lease=lease, gone=gone, last_failover=last)
    obs_list = []
    if primary_state == "writable":
        obs_list.append(primary_obs())
    elif primary_state == "read-only":
        obs_list.append(follower_obs("p"))
    else:
        obs_list.append(
            down(
                "p",
                state.ProcessState.GONE if primary_state == "gone" else state.ProcessState.ALIVE,
            )
        )
    for n, s in followers.items():
        if s == "streaming":
            obs_list.append(follower_obs(n, positions[n]))
        elif s == "writable":
            obs_list.append(primary_obs(n))
        else:
            obs_list.append(
                down(n, state.ProcessState.GONE if s == "gone" else state.ProcessState.ALIVE)
            )
    observations = by_name(*obs_list)
    memory = decide.Memory(
        epoch=1,
        primary_unreachable_since=NOW - down_for if isinstance(down_for, float) else None,
        last_primary_position=state.positions.Position(last_pos)
        if isinstance(last_pos, int)
        else None,
    )
    d = decide.decide(snap, observations, NOW, pol, memory, force=bool(force))
    promotions = [a for a in d.actions if isinstance(a, actions.Promote)]
    if not promotions:
        return
    (promote,) = promotions
    assert d.kind is decide.DecisionKind.FAILING_OVER
    assert primary_state != "writable"
    assert promote.member in FOLLOWERS and order.promotable(observations[promote.member])
    assert promote.epoch == 2 and promote.replaces == lease
    if lease is not None and lease.may_be_valid(NOW):
        assert primary_state == "gone", "promoted while a live primary's lease may be valid"
    if not force:
        answering = [n for n in FOLLOWERS if order.promotable(observations[n])]
        assert replication.failover_keeps_acks(pol.replication, FOLLOWERS, answering).safe
        if last is not None:
            assert NOW - last.at >= pol.failover.cooldown_seconds
    if primary_state != "gone":
        assert isinstance(down_for, float) and down_for >= pol.failover.detection_seconds
    best = order.best_candidate([observations[n] for n in FOLLOWERS], pol.failover)
    assert best is not None and best.name == promote.member
