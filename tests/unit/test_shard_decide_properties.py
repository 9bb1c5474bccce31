"""Safety properties of decide() over many generated shard situations (hypothesis).

Whatever the observations, the lease and the clock:
- no promotion while a live primary's lease may still be valid;
- only a promotable follower (answering, in recovery) is promoted, at a new epoch;
- in sync/quorum mode, no automatic promotion unless every acknowledged commit is
  certainly on the answering followers, and only of a follower in the sync set;
- the sync-set protocol, run by decide() itself against a model of a primary, its
  followers' flush positions and its acknowledgements, never lets a failover that the
  rule allows lose an acknowledged commit (the model may fail the primary between any
  two actions);
- a writable primary is never failed over.
"""

from __future__ import annotations

import dataclasses

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
    sync_set = draw(st.one_of(st.none(), st.sets(st.sampled_from(FOLLOWERS))))
    return (
        sync_set,
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
    (sync, pol, primary_state, lease_left, down_for, ago, followers, positions, last_pos, force) = (
        situation
    )
    sync_set = tuple(sorted(sync)) if isinstance(sync, set) else None
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
    snap = dataclasses.replace(snap, shard=dataclasses.replace(snap.shard, sync_standbys=sync_set))
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
    answering = [n for n in FOLLOWERS if order.promotable(observations[n])]
    safety = replication.failover_keeps_acks(pol.replication, sync_set, FOLLOWERS, answering)
    # Forcing overrides the rule only when it refuses; otherwise its candidates stand.
    pool = sorted(safety.candidates) if safety.safe else answering
    if not force:
        assert safety.safe
        if last is not None:
            assert NOW - last.at >= pol.failover.cooldown_seconds
    if primary_state != "gone":
        assert isinstance(down_for, float) and down_for >= pol.failover.detection_seconds
    best = order.best_candidate([observations[n] for n in pool], pol.failover)
    assert best is not None and best.name == promote.member


# -- the sync set over a whole epoch ---------------------------------------------------------

MODEL_FOLLOWERS = ("a", "b", "c")


@settings(max_examples=300, deadline=None)
@given(
    k=st.integers(1, 3),
    inherited=st.integers(0, 20),
    start=st.fixed_dictionaries({n: st.integers(0, 20) for n in MODEL_FOLLOWERS}),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["write", "stream", "disconnect", "reconnect", "cycle"]),
            st.sampled_from(MODEL_FOLLOWERS),
            st.integers(1, 5),
        ),
        max_size=40,
    ),
    answering=st.sets(st.sampled_from(MODEL_FOLLOWERS)),
)
def test_the_sync_set_protocol_never_loses_an_acknowledged_commit(
    k: int,
    inherited: int,
    start: dict[str, int],
    steps: list[tuple[str, str, int]],
    answering: set[str],
) -> None:
    """A primary just promoted at epoch 2 holding WAL up to ``inherited`` (every commit up
    to there counts as acknowledged); followers start at ``start`` and the sync set as
    decide() seeds it. Each step writes, streams, (dis)connects a follower, or runs one
    manager cycle whose actions are applied one per later step. Then the primary dies:
    whenever the rule allows a failover, the best candidate holds every acknowledged
    commit."""
    mode = policy.ReplicationMode.SYNC if k == 1 else policy.ReplicationMode.QUORUM
    pol = policy.ShardPolicy(replication=policy.ReplicationSettings(mode, quorum=k))
    names = ("p", *MODEL_FOLLOWERS)
    flush = {n: min(start[n], inherited) for n in MODEL_FOLLOWERS}
    wal = inherited
    sync_set = tuple(n for n in MODEL_FOLLOWERS if flush[n] >= inherited)
    listed = set(sync_set)  # the promotion sets it before promoting
    acked = inherited
    connected = set(MODEL_FOLLOWERS)
    memory = decide.Memory()
    queue: list[actions.Action] = []

    def ack() -> int:
        held = sorted((flush[n] for n in listed), reverse=True)
        return max(acked, held[k - 1]) if len(held) >= k else acked

    for op, name, n in steps:
        if queue:  # the manager's previous actions land one at a time
            match queue.pop(0):
                case actions.PublishTopology(shard):
                    assert shard.sync_standbys is not None
                    sync_set = shard.sync_standbys
                case actions.SetSyncStandbys(_, value):
                    named = replication.listed(value)
                    assert named is not None
                    listed = set(named)
        if op == "write":
            wal += n
        elif op == "stream" and name in connected:
            flush[name] = min(wal, flush[name] + n)
        elif op == "disconnect":
            connected.discard(name)
        elif op == "reconnect":
            connected.add(name)
        elif op == "cycle" and not queue:
            primary = state.MemberObservation(
                name="p",
                process=state.ProcessState.ALIVE,
                reachable=True,
                in_recovery=False,
                timeline=2,
                current_lsn=state.positions.Position(wal),
                sync_standby_names=replication.standby_names(pol.replication, listed),
                replicas=tuple(
                    state.ReplicaStat(
                        f, "streaming", state.positions.Position(flush[f]), None, "quorum"
                    )
                    for f in sorted(connected)
                ),
            )
            observations = {"p": primary} | {
                f: follower_obs(f, flush[f]) if f in connected else down(f) for f in MODEL_FOLLOWERS
            }
            snap = snapshot(names=names, epoch=2)
            snap = dataclasses.replace(
                snap, shard=dataclasses.replace(snap.shard, sync_standbys=sync_set)
            )
            memory = decide.remember(memory, snap, observations, 0.0)
            d = decide.decide(snap, observations, 0.0, pol, memory)
            queue = [
                a
                for a in d.actions
                if isinstance(a, actions.PublishTopology | actions.SetSyncStandbys)
            ]
        acked = ack()
        assert listed <= set(sync_set), "a follower may acknowledge before it is published"
    safety = replication.failover_keeps_acks(pol.replication, sync_set, MODEL_FOLLOWERS, answering)
    if safety.safe:
        best = max(flush[n] for n in safety.candidates)
        assert best >= acked, f"promoting a follower at {best} loses commits up to {acked}"
