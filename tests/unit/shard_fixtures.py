"""Builders for shard snapshots and observations used by the shard-core unit tests."""

from __future__ import annotations

from collections.abc import Iterable

from pgshard_operator.shard import state
from pgshard_proxy.contract import positions, topology

P = positions.Position


def member(name: str, process: state.ProcessState = state.ProcessState.ALIVE) -> state.MemberInfo:
    return state.MemberInfo(
        name=name,
        address=f"{name}.test:5432",
        dsn=f"postgresql://{name}.test/postgres",
        process=process,
    )


def snapshot(
    primary: str | None = "p",
    names: Iterable[str] = ("p", "a", "b"),
    *,
    epoch: int = 1,
    lease: state.Lease | None = None,
    gone: Iterable[str] = (),
    last_failover: state.LastFailover | None = None,
    published: topology.Shard | None = None,
) -> state.ShardSnapshot:
    gone = set(gone)
    members = tuple(
        member(n, state.ProcessState.GONE if n in gone else state.ProcessState.ALIVE) for n in names
    )
    shard = published or topology.Shard(
        index=0,
        epoch=epoch,
        primary=topology.Member(name=primary, address=f"{primary}.test:5432", dsn="")
        if primary
        else None,
        last_failover=last_failover.to_dict() if last_failover else None,
    )
    return state.ShardSnapshot(members=members, shard=shard, version="v1", lease=lease)


def primary_obs(
    name: str = "p",
    lsn: int = 1000,
    sync: str = "",
    streaming: Iterable[str] = ("a", "b"),
) -> state.MemberObservation:
    return state.MemberObservation(
        name=name,
        process=state.ProcessState.ALIVE,
        reachable=True,
        in_recovery=False,
        timeline=1,
        current_lsn=P(lsn),
        sync_standby_names=sync,
        replicas=tuple(
            state.ReplicaStat(n, "streaming", P(lsn), P(lsn), "async") for n in streaming
        ),
    )


def follower_obs(
    name: str, received: int = 1000, replayed: int | None = None, upstream: str = "p.test:5432"
) -> state.MemberObservation:
    return state.MemberObservation(
        name=name,
        process=state.ProcessState.ALIVE,
        reachable=True,
        in_recovery=True,
        timeline=1,
        received_lsn=P(received),
        replayed_lsn=P(received if replayed is None else replayed),
        upstream=upstream,
    )


def down(
    name: str, process: state.ProcessState = state.ProcessState.ALIVE
) -> state.MemberObservation:
    return state.MemberObservation.unreachable(name, process, "connection refused")


def by_name(*observations: state.MemberObservation) -> dict[str, state.MemberObservation]:
    return {o.name: o for o in observations}
