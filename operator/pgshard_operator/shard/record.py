"""The published shard record (``topology.Shard``) built from what the manager saw.

Pure; used by ``decide`` (publish when the structure changed), ``switchover``
and ``manager`` (periodic refresh of positions). Follower ``state`` values are
those of the contract: ``bootstrapping``, ``catching-up``, ``streaming``,
``down``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pgshard_proxy.contract import topology

from . import state

# pg_stat_replication states that mean "connected, not yet caught up".
_CATCHING_UP = frozenset({"startup", "catchup", "backup"})


def follower_state(
    member: state.MemberInfo,
    obs: state.MemberObservation | None,
    primary_obs: state.MemberObservation | None,
) -> str:
    """Contract state of one follower, judged from its own probe and the primary's."""
    if member.bootstrapping:
        return "bootstrapping"
    if obs is None or not obs.ok or member.process is state.ProcessState.GONE:
        return "down"
    if obs.in_recovery is not True:
        return "down"  # a stale primary is not a follower
    if primary_obs is not None and primary_obs.ok:
        for r in primary_obs.replicas:
            if r.name == member.name:
                return "streaming" if r.state == "streaming" else "catching-up"
        return "catching-up"
    return "catching-up"


def shard_record(
    snapshot: state.ShardSnapshot,
    observations: Mapping[str, state.MemberObservation],
    *,
    primary: str | None,
    epoch: int,
    last_failover: state.LastFailover | None,
    sync_standbys: Iterable[str] | None,
) -> topology.Shard:
    """The record to publish with ``primary`` at ``epoch``; other members are followers.
    ``sync_standbys``: the sync set (``replication`` module; ``None`` in async mode)."""
    primary_obs = observations.get(primary) if primary else None
    primary_pos = (
        primary_obs.current_lsn
        if primary_obs is not None and primary_obs.ok and primary_obs.in_recovery is False
        else None
    )
    primary_member: topology.Member | None = None
    followers: list[topology.Member] = []
    for m in snapshot.members:
        obs = observations.get(m.name)
        if m.name == primary:
            primary_member = topology.Member(
                name=m.name, address=m.address, dsn=m.dsn, position=primary_pos, zone=m.zone
            )
            continue
        replayed = obs.replayed_lsn if obs is not None and obs.ok else None
        lag = (
            max(0, primary_pos - replayed)
            if primary_pos is not None and replayed is not None
            else None
        )
        followers.append(
            topology.Member(
                name=m.name,
                address=m.address,
                dsn=m.dsn,
                position=replayed,
                lag_bytes=lag,
                state=follower_state(m, obs, primary_obs),
                zone=m.zone,
            )
        )
    return topology.Shard(
        index=snapshot.index,
        epoch=epoch,
        primary=primary_member,
        followers=tuple(followers),
        hash_range=snapshot.shard.hash_range,
        last_failover=last_failover.to_dict() if last_failover else None,
        sync_standbys=tuple(sorted(set(sync_standbys))) if sync_standbys is not None else None,
        failover_history=snapshot.shard.failover_history,
    )


def _shape(shard: topology.Shard) -> object:
    def member(m: topology.Member | None, follower: bool) -> object:
        if m is None:
            return None
        return (m.name, m.address, m.dsn, m.zone, m.state if follower else None)

    return (
        shard.index,
        shard.epoch,
        member(shard.primary, False),
        tuple(sorted((member(f, True) for f in shard.followers), key=repr)),
        shard.hash_range,
        dict(shard.last_failover) if shard.last_failover else None,
        shard.sync_standbys,
    )


def same_structure(a: topology.Shard, b: topology.Shard) -> bool:
    """Equal but for positions and lag (which change all the time)."""
    return _shape(a) == _shape(b)
