"""Shard pods: the agent's flags from the pod's environment; role labels from the agents."""

from __future__ import annotations

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
    "PGSHARD_APP_USER": "app",
    "PGSHARD_APP_PASSWORD": "a",
    "PGSHARD_APP_DATABASE": "app",
    "PGSHARD_SUPERUSER_PASSWORD": "s",
    "PGSHARD_REPLICATION_PASSWORD": "r",
}


def test_agent_flags_for_a_follower_pod() -> None:
    p = instance.pod_env(ENV)
    assert (p.ordinal, p.member) == (2, "demo_shard_1_2")
    argv = instance.agent_argv(p, "10.1.2.9:5432", "# x\nwork_mem = '8MB'\n")
    flags = dict(zip(argv[::2], argv[1::2], strict=False))
    assert flags["--host"] == "10.1.2.3"
    assert flags["--datadir"] == "/var/lib/pgshard/data"
    assert flags["--credentials"] == "/var/lib/pgshard/credentials.json"
    assert flags["--upstream"] == "10.1.2.9:5432"
    assert flags["--pg-option"] == "work_mem='8MB'"
    assert "--bootstrap-primary" not in argv
    first = instance.agent_argv(p, None, "")
    assert first[-1] == "--bootstrap-primary"
    assert instance.credentials_doc(p)["superuser_password"] == "s"


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
