"""``pgshard local scale``'s pure plan and the ports of added members (local/scale.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgshard_operator.local import layout, scale

SYNC = layout.ClusterConfig(
    shards=2,
    replicas=1,
    mode=layout.ReplicationMode.SYNC,
    quorum=1,
    host="127.0.0.1",
    base_port=20000,
    follower_delays_ms=(0,),
)
PRIMARIES = {0: "s0m0", 1: "s1m0"}


def _ports(cfg: layout.ClusterConfig) -> dict[str, tuple[int, int]]:
    return {m.name: (m.port, m.status_port) for m in cfg.members()}


def test_adding_moves_no_existing_port_and_takes_ports_after_the_control_port() -> None:
    p = scale.plan(SYNC, 3, PRIMARIES)
    assert [m.name for m in p.added] == ["s0m2", "s0m3", "s1m2", "s1m3"]
    assert p.removed == ()
    assert p.cfg.control_port == SYNC.control_port
    before, after = _ports(SYNC), _ports(p.cfg)
    assert {n: after[n] for n in before} == before
    used = [port for pair in after.values() for port in pair] + [p.cfg.control_port]
    assert len(set(used)) == len(used)
    assert min(after["s0m2"]) > SYNC.control_port


def test_the_shape_survives_cluster_json() -> None:
    cfg = scale.plan(SYNC, 3, PRIMARIES).cfg
    again = layout.ClusterConfig.from_dict(cfg.to_dict(), Path("cluster.json"))
    assert _ports(again) == _ports(cfg)
    back = scale.plan(again, 1, PRIMARIES)
    assert [m.name for m in back.removed] == ["s0m2", "s0m3", "s1m2", "s1m3"]
    assert _ports(back.cfg) == _ports(SYNC)


def test_the_highest_numbered_followers_are_removed() -> None:
    cfg = scale.plan(SYNC, 2, PRIMARIES).cfg
    p = scale.plan(cfg, 1, {0: "s0m1", 1: "s1m0"})
    assert [m.name for m in p.removed] == ["s0m2", "s1m2"]


def test_removing_a_primary_is_refused() -> None:
    cfg = scale.plan(SYNC, 2, PRIMARIES).cfg
    with pytest.raises(scale.ScaleRefused, match=r"s0m2 is the primary of shard 0.*switch"):
        scale.plan(cfg, 1, {0: "s0m2", 1: "s1m0"})


@pytest.mark.parametrize(
    ("mode", "quorum", "replicas", "message"),
    [
        (layout.ReplicationMode.SYNC, 1, 0, "needs at least 1 follower"),
        (layout.ReplicationMode.QUORUM, 2, 1, "--quorum 2 needs at least 2 followers"),
        (layout.ReplicationMode.ASYNC, 1, -1, "--replicas must be 0 or more"),
        (layout.ReplicationMode.ASYNC, 1, 40, "at most 32 followers can be added"),
    ],
)
def test_unsafe_or_impossible_shapes_are_refused(
    mode: layout.ReplicationMode, quorum: int, replicas: int, message: str
) -> None:
    cfg = layout.ClusterConfig(
        shards=1, replicas=2, mode=mode, quorum=quorum, host="127.0.0.1", base_port=20000
    )
    with pytest.raises(scale.ScaleRefused, match=message):
        scale.plan(cfg, replicas, {0: "s0m0"})


def test_async_mode_may_drop_every_follower() -> None:
    cfg = layout.ClusterConfig(
        shards=1, replicas=1, mode=layout.ReplicationMode.ASYNC, quorum=1,
        host="127.0.0.1", base_port=20000, follower_delays_ms=(0,),
    )  # fmt: skip
    assert [m.name for m in scale.plan(cfg, 0, {0: "s0m0"}).removed] == ["s0m1"]


def test_per_follower_delays_follow_the_count() -> None:
    cfg = layout.ClusterConfig(
        shards=1, replicas=2, mode=layout.ReplicationMode.ASYNC, quorum=1,
        host="127.0.0.1", base_port=20000, follower_delays_ms=(5, 7),
    )  # fmt: skip
    assert scale.plan(cfg, 3, {0: "s0m0"}).cfg.follower_delays_ms == (5, 7, 0)
    assert scale.plan(cfg, 1, {0: "s0m0"}).cfg.follower_delays_ms == (5,)
