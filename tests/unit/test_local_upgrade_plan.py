"""``pgshard local upgrade``'s pure plan and the binaries recorded per member
(local/upgrade.py, local/layout.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pgshard_operator.cli import CommandError
from pgshard_operator.instance.credentials import Credentials
from pgshard_operator.local import commands, layout, upgrade
from pgshard_operator.model import spec as specs

OLD, NEW = "/pg15/bin", "/pg18/bin"
CFG = layout.ClusterConfig(
    shards=2,
    replicas=2,
    mode=layout.ReplicationMode.ASYNC,
    quorum=1,
    host="127.0.0.1",
    base_port=20000,
    method=specs.ReplicationMethod.STATEMENT,
)


def _names(p: upgrade.ShardPlan) -> tuple[list[str], str | None]:
    return [m.name for m in p.followers], p.primary.name if p.primary else None


def test_followers_first_then_the_primary_and_members_on_the_new_binaries_left_alone() -> None:
    cfg = CFG.with_bindir("s1m0", NEW)  # s1m0: already upgraded (a resumed upgrade)
    plans = upgrade.plan(cfg, NEW, OLD, {0: "s0m1", 1: "s1m1"})
    assert [_names(p) for p in plans] == [(["s0m0", "s0m2"], "s0m1"), (["s1m2"], "s1m1")]
    done = cfg
    for name in ("s0m0", "s0m1", "s0m2", "s1m1", "s1m2"):
        done = done.with_bindir(name, NEW)
    assert [_names(p) for p in upgrade.plan(done, NEW, OLD, {0: "s0m1", 1: "s1m1"})] == [
        ([], None),
        ([], None),
    ]


def test_followers_at_creation_run_follower_bindir() -> None:
    cfg = layout.ClusterConfig(**{**CFG.__dict__, "follower_bindir": NEW})
    assert {m.name: m.bindir for m in cfg.members(0)} == {"s0m0": None, "s0m1": NEW, "s0m2": NEW}
    assert [_names(p) for p in upgrade.plan(cfg, NEW, OLD, {0: "s0m0", 1: "s1m0"})] == [
        ([], "s0m0"),
        ([], "s1m0"),
    ]


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (layout.ClusterConfig(**{**CFG.__dict__, "method": specs.ReplicationMethod.WAL}),
         "cannot cross PostgreSQL major versions"),
        (layout.ClusterConfig(**{**CFG.__dict__, "replicas": 0}), "scale --replicas 1"),
    ],
)  # fmt: skip
def test_refused(cfg: layout.ClusterConfig, message: str) -> None:
    with pytest.raises(upgrade.UpgradeRefused, match=message):
        upgrade.plan(cfg, NEW, OLD, {0: "s0m0", 1: "s1m0"})


def test_bindirs_survive_cluster_json_and_scaling_down_forgets_removed_members() -> None:
    cfg = layout.ClusterConfig(**{**CFG.__dict__, "follower_bindir": NEW}).with_bindir("s0m0", NEW)
    again = layout.ClusterConfig.from_dict(cfg.to_dict(), Path("cluster.json"))
    assert (again.follower_bindir, again.member_bindirs) == (NEW, (("s0m0", NEW),))
    cfg = cfg.with_bindir("s0m2", OLD)
    assert cfg.member("s0m2").bindir == OLD
    assert cfg.with_replicas(1).with_replicas(2).member("s0m2").bindir == NEW


def test_wal_clusters_refuse_other_binaries() -> None:
    cfg = layout.ClusterConfig(
        **{**CFG.__dict__, "method": specs.ReplicationMethod.WAL, "follower_bindir": NEW}
    )
    with pytest.raises(layout.LayoutError, match="needs --replication-method statement"):
        layout.validate(cfg)


def test_the_command_refuses_a_wal_cluster_and_binaries_that_are_not_postgresql(
    tmp_path: Path,
) -> None:
    wal = layout.ClusterConfig(**{**CFG.__dict__, "method": specs.ReplicationMethod.WAL})
    layout.ClusterDir(tmp_path / "wal").create(wal, Credentials.generate())
    layout.ClusterDir(tmp_path / "st").create(CFG, Credentials.generate())
    for name, bindir, message in (
        ("wal", "/usr/lib/postgresql/15/bin", "this cluster streams WAL"),
        ("st", str(tmp_path), "is not a PostgreSQL bin directory"),
    ):
        args = argparse.Namespace(dir=tmp_path / name, bindir=Path(bindir), timeout=10.0)
        with pytest.raises(CommandError, match=message):
            commands.cmd_upgrade(args)
