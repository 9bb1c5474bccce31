"""Shard pods: the agent's flags from the pod's environment; role labels from the agents."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgshard_operator import naming
from pgshard_operator.k8s import instance, roles

ENV = {
    "PGSHARD_CLUSTER": "demo",
    "PGSHARD_NAMESPACE": "shop",
    "PGSHARD_SHARD": "1",
    "PGSHARD_POD_NAME": "demo-shard-1-2",
    "PGSHARD_POD_IP": "10.1.2.3",
    "PGSHARD_DATA_DIR": "/var/lib/pgshard/data",
    "PGSHARD_PG_CONFIG": "/etc/pgshard/postgresql.conf",
    "PGSHARD_LEASE_TTL_SECONDS": "10",
    "PGSHARD_LEASE_NAME": "demo-shard-1",
    "PGSHARD_APP_USER": "app",
    "PGSHARD_APP_PASSWORD": "a",
    "PGSHARD_APP_DATABASE": "app",
    "PGSHARD_SUPERUSER_PASSWORD": "s",
    "PGSHARD_REPLICATION_PASSWORD": "r",
    "PGSHARD_CONTROL_TOKEN": "t",
}


def test_agent_flags_for_a_follower_pod() -> None:
    p = instance.pod_env(ENV)
    assert (p.ordinal, p.member) == (2, "demo_shard_1_2")
    argv = instance.agent_argv(p, "10.1.2.9:5432", "# x\nwork_mem = '8MB'\n")
    flags = dict(zip(argv[::2], argv[1::2], strict=False))
    assert flags["--host"] == "10.1.2.3"
    assert flags["--datadir"] == "/var/lib/pgshard/data"
    assert flags["--credentials"] == "/var/lib/pgshard/credentials.json"
    assert flags["--control-token-file"] == "/var/lib/pgshard/control.token"
    assert flags["--upstream"] == "10.1.2.9:5432"
    assert flags["--pg-option"] == "work_mem='8MB'"
    assert flags["--kube-lease"] == "shop/demo-shard-1"
    assert "--bootstrap-primary" not in argv
    first = instance.agent_argv(p, None, "")
    assert first[-1] == "--bootstrap-primary"
    held = instance.agent_argv(p, None, "", hold_primary=True)
    assert held[-1] == "--hold-primary"
    assert "--bootstrap-primary" not in held
    assert instance.credentials_doc(p)["superuser_password"] == "s"
    assert flags["--replication-method"] == "wal"
    statement = instance.pod_env({**ENV, "PGSHARD_REPLICATION_METHOD": "statement"})
    argv = instance.agent_argv(statement, "10.1.2.9:5432", "")
    assert dict(zip(argv[::2], argv[1::2], strict=False))["--replication-method"] == "statement"


def test_start_plan() -> None:
    first = instance.pod_env({**ENV, "PGSHARD_POD_NAME": "demo-shard-1-0"})
    follower = instance.pod_env(ENV)
    # Only ordinal 0 initialises, and only while nobody holds the lease.
    assert instance.start_plan(first, empty=True, lease_holder=None) == instance.StartPlan(
        bootstrap=True, copy_from=None, hold_primary=False
    )
    # After a failover the empty volume of ordinal 0 copies the current primary.
    assert instance.start_plan(first, True, "demo_shard_1_2").copy_from == "demo-shard-1-2"
    assert instance.start_plan(follower, True, None).copy_from == "demo-shard-1-0"
    assert instance.start_plan(follower, True, "demo_shard_1_1").copy_from == "demo-shard-1-1"
    # Data on the volume: never serve as primary without the shard manager.
    for p in (first, follower):
        plan = instance.start_plan(p, empty=False, lease_holder=None)
        assert plan.hold_primary and not plan.bootstrap and plan.copy_from is None


def test_a_volume_of_another_major_version_is_copied_anew_in_statement_mode_only() -> None:
    statement = instance.pod_env({**ENV, "PGSHARD_REPLICATION_METHOD": "statement"})
    plan = instance.version_plan(statement, 15, 18, "demo_shard_1_0")
    assert plan == instance.StartPlan(
        bootstrap=False, copy_from="demo-shard-1-0", hold_primary=False, discard=True
    )
    # Nobody to copy from (or this member is the primary itself): the data stays.
    for holder in (None, statement.member):
        with pytest.raises(instance.VersionMismatch, match="replicasPerShard >= 1"):
            instance.version_plan(statement, 15, 18, holder)
    with pytest.raises(instance.VersionMismatch, match="WAL replication cannot change major"):
        instance.version_plan(instance.pod_env(ENV), 15, 18, "demo_shard_1_0")


def test_volume_major(tmp_path: Path) -> None:
    assert instance.volume_major(tmp_path) is None
    (tmp_path / "PG_VERSION").write_text("15\n")
    assert instance.volume_major(tmp_path) == 15


def test_missing_environment_is_a_clear_error() -> None:
    env = dict(ENV)
    del env["PGSHARD_POD_IP"]
    try:
        instance.pod_env(env)
    except SystemExit as e:
        assert "PGSHARD_POD_IP is not set" in str(e)
    else:
        raise AssertionError("no error")


def test_role_label_patches() -> None:
    pod = {"metadata": {"labels": {naming.ROLE_LABEL: "replica"}}}
    assert roles.label_patch(pod, naming.Role.REPLICA) is None
    assert roles.label_patch(pod, naming.Role.PRIMARY) == {
        "metadata": {"labels": {naming.ROLE_LABEL: "primary"}}
    }
    assert roles.label_patch(pod, None) == {"metadata": {"labels": {naming.ROLE_LABEL: None}}}
    assert roles.label_patch({"metadata": {}}, None) is None


def test_role_labels_follow_the_agents_role() -> None:
    assert roles.role_of({"role": "primary"}) is naming.Role.PRIMARY
    assert roles.role_of({"role": "follower"}) is naming.Role.REPLICA
    for silent in ({"role": "fenced"}, {"role": "bootstrapping"}, {}, None):
        assert roles.role_of(silent) is None


def test_a_statement_follower_s_volume_restarts_with_the_primary_it_applied(
    tmp_path: Path,
) -> None:
    """Without --upstream the agent of a restarted statement follower refuses to start
    (it has no primary_conninfo to fall back on): the pod would crash-loop."""
    assert instance.pinned_upstream(tmp_path) is None  # not a statement follower
    (tmp_path / "pgshard.follower").write_text("x\n")
    (tmp_path / "postgresql.auto.conf").write_text(
        "# Do not edit this file manually!\npgshard.upstream = '10.1.2.9:5432'\n"
    )
    assert instance.pinned_upstream(tmp_path) == "10.1.2.9:5432"
    p = instance.pod_env({**ENV, "PGSHARD_REPLICATION_METHOD": "statement"})
    argv = instance.agent_argv(p, "10.1.2.9:5432", "", hold_primary=True)
    assert argv[-3:] == ["--hold-primary", "--upstream", "10.1.2.9:5432"]
