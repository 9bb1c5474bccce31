"""Pure pieces of the local platform and instance agent: lease rules, views, config checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pgshard_operator import cli
from pgshard_operator.instance import config, lease, supervise
from pgshard_operator.instance.credentials import Credentials
from pgshard_operator.local import commands, layout, proxyproc, topofile, view
from pgshard_operator.model import spec as specs
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
        ({"pg_options": ("PORT=1",)}, "PORT may not be set: pgshard manages it"),
        ({"pg_options": ("synchronous_commit=off",)}, "synchronous_commit may not be set"),
        ({"pg_options": ("work_mem='1MB'\narchive_command='x'",)}, "must be one line"),
        ({"timings": layout.Timings(lease_ttl=float("nan"))}, "--lease-ttl nan"),
        ({"timings": layout.Timings(lease_ttl=0.5)}, "at least 1 s"),
        ({"timings": layout.Timings(cooldown=-1)}, "--cooldown-seconds -1"),
        ({"timings": layout.Timings(max_clock_skew=-1)}, "--max-clock-skew-seconds -1"),
    ],
)
def test_invalid_configs_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(layout.LayoutError, match=message):
        layout.validate(_cfg(**kw))


def test_statement_sync_and_quorum_are_accepted_and_published_as_statement_acks() -> None:
    """Statement sync/quorum: the proxy's wait count (``statementAcks``); 0 otherwise."""
    statement = specs.ReplicationMethod.STATEMENT
    for mode, quorum, acks in [
        (layout.ReplicationMode.ASYNC, 1, 0),
        (layout.ReplicationMode.SYNC, 1, 1),
        (layout.ReplicationMode.QUORUM, 2, 2),
    ]:
        cfg = _cfg(method=statement, mode=mode, quorum=quorum)
        layout.validate(cfg)
        assert topofile.initial(cfg).statement_acks == acks
    assert topofile.initial(_cfg(mode=layout.ReplicationMode.SYNC)).statement_acks == 0


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


def test_distributed_tables_are_added_on_resume_and_keep_their_key() -> None:
    orders = topology.DistributedTable("orders", "customer_id")
    items = topology.DistributedTable("shop.items", "order_id")
    assert layout.parse_distributed_table("Shop.Items:Order_ID") == items
    assert layout.merge_distributed_tables((), ["orders:customer_id"]) == (orders,)
    assert layout.merge_distributed_tables((orders,), ["shop.items:order_id"]) == (orders, items)
    assert layout.merge_distributed_tables((orders,), ["orders:customer_id"]) == (orders,)
    with pytest.raises(layout.LayoutError, match="cannot change its key"):
        layout.merge_distributed_tables((orders,), ["orders:id"])
    with pytest.raises(layout.LayoutError, match="twice"):
        layout.merge_distributed_tables((), ["t:a", "t:b"])
    for bad in ("orders", "orders:", ":id", "a.b.c:id", "or ders:id", "t:k.x"):
        with pytest.raises(layout.LayoutError, match="NAME:KEY"):
            layout.parse_distributed_table(bad)


def test_distributed_tables_are_stored_in_cluster_json(tmp_path: Path) -> None:
    cfg = _cfg(distributed_tables=(topology.DistributedTable("orders", "customer_id"),))
    doc = cfg.to_dict()
    assert doc["distributedTables"] == [{"name": "orders", "key": "customer_id"}]
    assert (
        layout.ClusterConfig.from_dict(doc, tmp_path).distributed_tables == cfg.distributed_tables
    )


def test_follower_zones_are_stored_published_and_passed_to_the_proxy(tmp_path: Path) -> None:
    cfg = _cfg(shards=1, follower_zones=("a", "b"), proxy_zone="a", port_slots=3)
    layout.validate(cfg)
    assert [m.zone for m in cfg.members()] == [None, "a", "b"]  # the first primary: none
    assert layout.ClusterConfig.from_dict(cfg.to_dict(), tmp_path) == cfg
    assert cfg.with_replicas(1).follower_zones == ("a",)
    assert cfg.with_replicas(3).members()[3].zone is None  # added by `local scale`
    record = topology.Shard(index=0, epoch=1, primary=topology.Member("s0m1", "h:1", ""))
    shard = view.build_shard(record, cfg.members(0), {}, CREDS)
    assert shard.primary is not None and shard.primary.zone == "a"
    assert [(f.name, f.zone) for f in shard.followers] == [("s0m0", None), ("s0m2", "b")]
    # A zone changed on resume rewrites topology.json.
    moved = view.build_shard(
        record, dataclasses.replace(cfg, follower_zones=("a", "c")).members(0), {}, CREDS
    )
    assert view.shape(moved) != view.shape(shard)
    argv = proxyproc.ProxyProcess(layout.ClusterDir(tmp_path), cfg, CREDS).argv()
    assert "--zone=a" in argv
    assert not any(a.startswith("--zone") for a in proxyproc.ProxyProcess(
        layout.ClusterDir(tmp_path), _cfg(), CREDS).argv())  # fmt: skip


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"follower_zones": ("a",)}, r"--follower-zones takes one zone per follower \(2\), got 1"),
        ({"follower_zones": ("a", "")}, "--follower-zones '': a zone is 1-63 letters"),
        ({"follower_zones": ("a", "b c")}, "--follower-zones 'b c'"),
        ({"proxy_zone": "-a"}, "--proxy-zone '-a'"),
    ],
)
def test_bad_zones_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(layout.LayoutError, match=message):
        layout.validate(_cfg(**kw))


def test_zones_change_on_resume_and_an_empty_flag_clears_them(tmp_path: Path) -> None:
    parser = cli.build_parser()

    def up(*flags: str, stored: layout.ClusterConfig | None) -> layout.ClusterConfig:
        args = parser.parse_args(["local", "up", f"--dir={tmp_path}", *flags])
        return commands._config_from_args(args, stored)

    created = up("--follower-zones=a,b", "--proxy-zone=b", stored=None)
    assert (created.follower_zones, created.proxy_zone) == (("a", "b"), "b")
    resumed = up(stored=created)
    assert (resumed.follower_zones, resumed.proxy_zone) == (("a", "b"), "b")
    moved = up("--follower-zones", "b, a", "--proxy-zone=a", stored=created)
    assert (moved.follower_zones, moved.proxy_zone) == (("b", "a"), "a")
    cleared = up("--follower-zones=", "--proxy-zone=", stored=moved)
    assert (cleared.follower_zones, cleared.proxy_zone) == ((), None)
    with pytest.raises(layout.LayoutError, match="one zone per follower"):
        up("--follower-zones=a", stored=created)


def test_buffer_on_failover_is_off_by_default_kept_on_resume_and_stored(tmp_path: Path) -> None:
    parser = cli.build_parser()

    def up(*flags: str, stored: layout.ClusterConfig | None) -> layout.ClusterConfig:
        args = parser.parse_args(["local", "up", f"--dir={tmp_path}", *flags])
        return commands._config_from_args(args, stored)

    created = up(stored=None)
    assert created.proxy_buffer_on_failover is False and created.failover_buffer_seconds == 0
    on = up("--proxy-buffer-on-failover", "--proxy-buffer-window-ms=1500", stored=created)
    assert on.failover_buffer_seconds == 1.5
    assert layout.ClusterConfig.from_dict(on.to_dict(), tmp_path) == on
    assert on.to_dict()["proxy"]["bufferOnFailover"] is True
    resumed = up(stored=on)
    assert resumed.proxy_buffer_on_failover is True
    assert up("--proxy-buffer-on-failover", stored=None).failover_buffer_seconds == 5.0
    assert up("--no-proxy-buffer-on-failover", stored=on).proxy_buffer_on_failover is False
    with pytest.raises(layout.LayoutError, match="--proxy-buffer-on-failover needs holding on"):
        layout.validate(_cfg(proxy_buffer_on_failover=True, proxy_buffer_window_ms=0))


def test_pool_flags_are_stored_kept_on_resume_and_passed_to_the_proxy(tmp_path: Path) -> None:
    parser = cli.build_parser()

    def up(*flags: str, stored: layout.ClusterConfig | None) -> layout.ClusterConfig:
        args = parser.parse_args(["local", "up", f"--dir={tmp_path}", *flags])
        return commands._config_from_args(args, stored)

    created = up("--pool-mode=transaction", "--pool-size=10", stored=None)
    stored = layout.ClusterConfig.from_dict(created.to_dict(), tmp_path)
    assert (stored.proxy_pool_mode, stored.proxy_pool_size) == ("transaction", 10)
    resumed = up("--pool-timeout-ms=250", stored=stored)
    pool = (resumed.proxy_pool_mode, resumed.proxy_pool_size, resumed.proxy_pool_timeout_ms)
    assert pool == ("transaction", 10, 250)
    argv = proxyproc.ProxyProcess(layout.ClusterDir(tmp_path), resumed, CREDS).argv()
    assert {"--pool-mode=transaction", "--pool-size=10", "--pool-timeout-ms=250"} <= set(argv)
    assert not any(a.startswith("--pool") for a in proxyproc.ProxyProcess(
        layout.ClusterDir(tmp_path), _cfg(), CREDS).argv())  # fmt: skip
    with pytest.raises(layout.LayoutError, match="--pool-size must be at least 1"):
        layout.validate(_cfg(proxy_pool_size=0))


def test_tls_is_on_for_a_new_dir_kept_on_resume_and_never_turned_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = cli.build_parser()

    def up(*flags: str, stored: layout.ClusterConfig | None) -> layout.ClusterConfig:
        args = parser.parse_args(["local", "up", f"--dir={tmp_path}", *flags])
        return commands._config_from_args(args, stored)

    assert up(stored=None).tls is True
    assert up("--tls", stored=None).tls is True
    plain = up("--no-tls", stored=None)
    assert plain.tls is False
    # A DIR created without TLS (or before it was the default: no "tls" in cluster.json)
    # keeps running without it, and says so; --tls turns it on.
    old = plain.to_dict()
    del old["tls"]
    for stored in (plain, layout.ClusterConfig.from_dict(old, tmp_path)):
        capsys.readouterr()
        assert up(stored=stored).tls is False
        assert "was created without TLS: it keeps running without TLS" in capsys.readouterr().out
    assert up("--tls", stored=plain).tls is True
    assert up(stored=up(stored=None)).tls is True
    with pytest.raises(layout.LayoutError, match=r"--no-tls contradicts .* cannot be turned off"):
        up("--no-tls", stored=up(stored=None))
