"""Pure pieces of the local platform and instance agent: lease rules, views, config checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgshard_operator.instance import config, lease, supervise
from pgshard_operator.instance.credentials import Credentials
from pgshard_operator.local import layout, view
from pgshard_proxy.contract import topology

CREDS = Credentials("su", "replicator", "rp", "app", "secret", "app")


@pytest.mark.parametrize(
    ("held", "now", "expected"),
    [
        (lease.FREE, 0.0, lease.LeaseView.FREE),
        (lease.Lease("a", 10.0), 5.0, lease.LeaseView.MINE),
        (lease.Lease("a", 10.0), 10.0, lease.LeaseView.MINE_EXPIRED),
        (lease.Lease("b", 10.0), 9.9, lease.LeaseView.OTHERS),
        (lease.Lease("b", 10.0), 10.1, lease.LeaseView.OTHERS_EXPIRED),
    ],
)
def test_lease_classification(held: lease.Lease, now: float, expected: lease.LeaseView) -> None:
    assert lease.classify(held, "a", now) is expected
    assert lease.may_take(expected) is (expected is not lease.LeaseView.OTHERS)


def test_fence_before_the_lease_runs_out() -> None:
    assert not lease.must_fence(valid_until=10.0, now=8.9, margin=1.0)
    assert lease.must_fence(valid_until=10.0, now=9.0, margin=1.0)


def test_file_lease_compare_and_set(tmp_path: Path) -> None:
    store = lease.FileLeaseStore(tmp_path / "shard-0.json")
    assert store.take("a", ttl=3, now=100.0) is not None
    assert store.take("b", ttl=3, now=101.0) is None, "b must not take a valid lease of a"
    assert store.renew("b", ttl=3, now=101.0) is None
    renewed = store.renew("a", ttl=3, now=102.0)
    assert renewed is not None and renewed.expires_at == 105.0
    taken = store.take("b", ttl=3, now=105.5, epoch=2)
    assert taken is not None and (taken.holder, taken.epoch) == ("b", 2)
    assert store.renew("a", ttl=3, now=105.6) is None, "the old holder cannot renew any more"
    assert not store.release("a")
    assert store.release("b")
    assert store.read().holder is None


def test_restart_backoff_doubles_and_resets() -> None:
    assert supervise.next_backoff(0.0, ran_for=1) == supervise.MIN_BACKOFF
    assert supervise.next_backoff(2.0, ran_for=1) == 4.0
    assert supervise.next_backoff(8.0, ran_for=1) == supervise.MAX_BACKOFF
    assert supervise.next_backoff(8.0, ran_for=60) == supervise.MIN_BACKOFF


def test_server_settings_render_delay_and_overrides() -> None:
    text = config.render(config.ServerSettings("s0m1", "127.0.0.5", 5000, 250, ("fsync=off",)))
    assert "recovery_min_apply_delay = '250ms'" in text
    assert "listen_addresses = '127.0.0.5'" in text
    assert "fsync = off" in text
    assert config.quote("it's") == "'it''s'"


def _cfg(**kw: object) -> layout.ClusterConfig:
    base: dict[str, object] = dict(
        shards=2, replicas=2, mode=layout.ReplicationMode.ASYNC, quorum=1,
        host="127.0.0.1", base_port=20000,
    )  # fmt: skip
    base.update(kw)
    return layout.ClusterConfig(**base)  # type: ignore[arg-type]


def test_member_ports_and_delays() -> None:
    cfg = _cfg(follower_delays_ms=(0, 500))
    ms = cfg.members()
    assert [m.name for m in ms] == ["s0m0", "s0m1", "s0m2", "s1m0", "s1m1", "s1m2"]
    assert [m.port for m in ms[:2]] == [20000, 20002]
    assert ms[1].status_port == 20003
    assert [m.apply_delay_ms for m in ms[:3]] == [0, 0, 500]
    assert cfg.control_port == 20012
    assert len(set(cfg.ports())) == len(cfg.ports())


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"shards": 0}, "--shards"),
        ({"mode": layout.ReplicationMode.SYNC, "replicas": 0}, "needs --replicas"),
        ({"mode": layout.ReplicationMode.QUORUM, "quorum": 3}, "--quorum"),
        ({"follower_delays_ms": (1, 2, 3)}, "one per follower"),
        ({"host": "10.0.0.1"}, "loopback"),
        ({"base_port": 80}, "--base-port"),
    ],
)
def test_invalid_configs_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(layout.LayoutError, match=message):
        layout.validate(_cfg(**kw))


def test_bad_delay_list_is_explained() -> None:
    with pytest.raises(layout.LayoutError, match="integers"):
        layout.parse_delays("10,abc")
    assert layout.parse_delays("0,200") == (0, 200)


def test_view_builds_followers_with_states_and_lag() -> None:
    cfg = _cfg(shards=1, replicas=3)
    record = topology.Shard(
        index=0, epoch=3, primary=topology.Member("s0m0", "127.0.0.1:20000", "")
    )
    statuses = {
        "s0m0": {"role": "primary", "inRecovery": False, "currentLsn": "0/3000000"},
        "s0m1": {
            "role": "follower", "pgRunning": True, "healthy": True, "walReceiver": "streaming",
            "receivedLsn": "0/3000000", "replayedLsn": "0/2FFFF00",
        },
        "s0m2": {"role": "bootstrapping"},
        "s0m3": None,
    }  # fmt: skip
    shard = view.build_shard(record, cfg.members(0), statuses, CREDS)
    assert shard.epoch == 3
    assert shard.primary is not None and shard.primary.dsn.startswith("postgresql://app:secret@")
    assert [(f.name, f.state, f.lag_bytes) for f in shard.followers] == [
        ("s0m1", "streaming", 0x100),
        ("s0m2", "bootstrapping", None),
        ("s0m3", "down", None),
    ]
    assert not view.shard_ready(shard, statuses["s0m0"])


def test_far_behind_follower_is_catching_up() -> None:
    doc = {
        "role": "follower", "pgRunning": True, "healthy": True, "walReceiver": "streaming",
        "receivedLsn": "0/1000000",
    }  # fmt: skip
    assert view.follower_state(doc, primary_lsn=0x1000000 + view.CATCH_UP_BYTES + 1) == (
        "catching-up"
    )
    assert view.follower_state(doc, primary_lsn=0x1000000) == "streaming"
