"""The published shard record: follower states, positions, lag, structural equality."""

from __future__ import annotations

import dataclasses

from pgshard_operator.shard import record, state
from pgshard_proxy.contract import topology
from tests.unit.shard_fixtures import by_name, down, follower_obs, primary_obs, snapshot


def test_states_positions_and_lag() -> None:
    snap = snapshot(names=("p", "a", "b", "c", "d"), gone=("d",))
    snap = dataclasses.replace(
        snap,
        members=tuple(
            dataclasses.replace(m, bootstrapping=True) if m.name == "c" else m for m in snap.members
        ),
    )
    obs = by_name(
        primary_obs(lsn=1000, streaming=("a",)),
        follower_obs("a", 990, 980),
        follower_obs("b", 500),
        down("d", state.ProcessState.GONE),
    )
    shard = record.shard_record(
        snap, obs, primary="p", epoch=3, last_failover=None, sync_standbys=None
    )
    assert shard.epoch == 3 and shard.primary is not None and shard.primary.position == 1000
    got = {f.name: (f.state, f.position, f.lag_bytes) for f in shard.followers}
    assert got == {
        "a": ("streaming", 980, 20),
        "b": ("catching-up", 500, 500),
        "c": ("bootstrapping", None, None),
        "d": ("down", None, None),
    }


def test_same_structure_ignores_positions_only() -> None:
    snap = snapshot()
    one = record.shard_record(
        snap,
        by_name(primary_obs(lsn=10), follower_obs("a", 10), follower_obs("b", 10)),
        primary="p",
        epoch=1,
        last_failover=None,
        sync_standbys=None,
    )
    two = record.shard_record(
        snap,
        by_name(primary_obs(lsn=99), follower_obs("a", 50), follower_obs("b", 60)),
        primary="p",
        epoch=1,
        last_failover=None,
        sync_standbys=None,
    )
    assert record.same_structure(one, two)
    assert not record.same_structure(one, dataclasses.replace(two, epoch=2))
    b_down = record.shard_record(
        snap,
        by_name(primary_obs(lsn=99, streaming=("a",)), follower_obs("a"), down("b")),
        primary="p",
        epoch=1,
        last_failover=None,
        sync_standbys=None,
    )
    assert not record.same_structure(one, b_down)


def test_last_failover_round_trips_through_the_record() -> None:
    last = state.LastFailover(
        state.FailoverKind.FAILOVER,
        12.5,
        "p",
        "a",
        2,
        "why",
        rejoin=state.RejoinMethod.REWIND,
        fork_lsn=state.positions.Position(0x3000000),
        discarded_bytes=8192,
    )
    d = last.to_dict()
    assert d["forkLsn"] == "0/3000000" and d["discardedBytes"] == 8192 and d["rejoin"] == "rewind"
    assert state.LastFailover.from_dict(d) == last


def test_members_zones_are_published_and_a_new_zone_is_a_structure_change() -> None:
    snap = snapshot()
    zoned = dataclasses.replace(
        snap,
        members=tuple(dataclasses.replace(m, zone=f"z-{m.name}") for m in snap.members),
    )
    obs = by_name(primary_obs(lsn=10), follower_obs("a", 10), follower_obs("b", 10))

    def build(s: state.ShardSnapshot) -> topology.Shard:
        return record.shard_record(
            s, obs, primary="p", epoch=1, last_failover=None, sync_standbys=None
        )

    shard = build(zoned)
    assert shard.primary is not None and shard.primary.zone == "z-p"
    assert {f.name: f.zone for f in shard.followers} == {"a": "z-a", "b": "z-b"}
    # A member that learns its zone (pod scheduled, label read) is published at once.
    assert not record.same_structure(build(snap), shard)
