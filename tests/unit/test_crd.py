"""The ShardedCluster CRD file: structure, defaults, and what it refuses.

Checked without an API server (jsonschema + cel-python, see tests/support/crd.py);
tests/e2e checks the same file against kube-apiserver.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.support import crd


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return crd.load_crd()


def test_identity_and_subresources(doc: dict[str, Any]) -> None:
    assert doc["metadata"]["name"] == "shardedclusters.pgshard.io"
    spec = doc["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == (
        "pgshard.io",
        "Namespaced",
        "ShardedCluster",
    )
    assert spec["names"]["shortNames"] == ["pgsc"], "sc is taken by StorageClass"
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Shards"]["jsonPath"] == ".spec.shards"
    assert columns["Ready"]["jsonPath"] == ".status.ready"
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }


def _nodes(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), Mapping):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural(doc: dict[str, Any]) -> None:
    """kube-apiserver refuses non-structural schemas: every node has a type unless it
    is int-or-string or preserves unknown fields; no properties next to
    additionalProperties; every node documented under spec has a type."""
    for path, node in _nodes(crd.root_schema(doc)):
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            continue
        assert "type" in node, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "default" in node and node["type"] == "object":
            assert node["default"] == {}, path


def test_every_spec_field_is_described(doc: dict[str, Any]) -> None:
    spec = crd.root_schema(doc)["properties"]["spec"]
    undocumented = [
        path
        for path, node in _nodes(spec, "spec")
        if node.get("type") in ("integer", "string", "boolean")
        and "description" not in node
        and "[]" not in path
        and "{" not in path
    ]
    assert undocumented == []


def test_defaults_follow_the_design(doc: dict[str, Any]) -> None:
    defaulted = crd.apply_defaults(crd.root_schema(doc), crd.cluster({}))["spec"]
    assert defaulted == {
        "shards": 2,
        "replicasPerShard": 2,
        "postgres": {"version": 15},
        "storage": {"size": "1Gi"},
        "replication": {"method": "wal", "mode": "async"},
        "failover": {"enabled": True, "detectionSeconds": 10, "cooldownSeconds": 60},
        "proxy": {"replicas": 2, "consistency": "session"},
    }


VALID: list[dict[str, Any]] = [
    {},
    {"shards": 1, "replicasPerShard": 0},
    {
        "shards": 4,
        "replicasPerShard": 3,
        "image": "registry.example/pgshard:0.1.0",
        "postgres": {"version": 15, "parameters": {"max_connections": 200, "work_mem": "8MB"}},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 2}},
        "storage": {"size": "20Gi", "storageClass": "fast"},
        "replication": {"method": "wal", "mode": "quorum", "quorum": 2},
        "sharding": {"tables": [{"name": "orders", "key": "customer_id"}], "referenceTables": []},
        "failover": {
            "enabled": False,
            "detectionSeconds": 5,
            "maxLagBytes": 16777216,
            "leaseTtlSeconds": 4,
            "priorities": {"demo-shard-0-1": 10},
        },
        "proxy": {
            "replicas": 1,
            "consistency": "strong",
            "maxWaitMs": 50,
            "workers": 2,
            "bufferOnFailover": True,
        },
    },
    # Impossible but not invalid: the operator reports it (condition + Event), so a
    # user can first raise the quorum and then the followers, or the other way round.
    {"replicasPerShard": 1, "replication": {"mode": "quorum", "quorum": 3}},
]


@pytest.mark.parametrize("spec", VALID)
def test_valid_specs_are_accepted(spec: dict[str, Any]) -> None:
    assert crd.problems(crd.cluster(spec)) == []


INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"shards": 0}, "spec.shards", "minimum"),
    ({"shards": "two"}, "spec.shards", "not of type 'integer'"),
    ({"replicasPerShard": -1}, "spec.replicasPerShard", "minimum"),
    ({"postgres": {"version": 14}}, "spec.postgres.version", "is not one of [15]"),
    ({"postgres": {"parameters": {"fsync": False}}}, "spec.postgres.parameters.fsync", "not valid"),
    (
        {"postgres": {"parameters": {"port": 5433}}},
        "spec.postgres.parameters",
        "pgshard manages them",
    ),
    (
        {"postgres": {"parameters": {"synchronous_commit": "off"}}},
        "spec.postgres.parameters",
        "pgshard manages them",
    ),
    ({"storage": {"size": "lots"}}, "spec.storage.size", "does not match"),
    ({"replication": {"method": "logical"}}, "spec.replication.method", "is not one of"),
    ({"replication": {"mode": "semi"}}, "spec.replication.mode", "is not one of"),
    ({"replication": {"mode": "quorum"}}, "spec.replication", "required when replication.mode"),
    ({"replication": {"quorum": 1}}, "spec.replication", "only used with replication.mode"),
    ({"replication": {"mode": "quorum", "quorum": 0}}, "spec.replication.quorum", "minimum"),
    ({"sharding": {"tables": [{"name": "orders"}]}}, "spec.sharding.tables.0", "'key'"),
    (
        {"sharding": {"referenceTables": ["countries"]}},
        "spec.sharding",
        "referenceTables is not supported yet",
    ),
    ({"failover": {"detectionSeconds": 0}}, "spec.failover.detectionSeconds", "minimum"),
    ({"failover": {"enabled": "yes"}}, "spec.failover.enabled", "not of type 'boolean'"),
    ({"proxy": {"replicas": 0}}, "spec.proxy.replicas", "minimum"),
    ({"proxy": {"consistency": "linearizable"}}, "spec.proxy.consistency", "is not one of"),
    ({"proxy": {"bufferOnFailover": "yes"}}, "spec.proxy.bufferOnFailover", "'boolean'"),
    ({"resources": {"limits": {"cpu": "two"}}}, "spec.resources.limits.cpu", "does not match"),
]


@pytest.mark.parametrize(("spec", "path", "message"), INVALID)
def test_invalid_specs_are_refused_with_the_field_named(
    spec: dict[str, Any], path: str, message: str
) -> None:
    found = crd.problems(crd.cluster(spec))
    assert any(p.path == path and message in p.message for p in found), found


def test_long_names_are_refused() -> None:
    found = crd.problems(crd.cluster({}, name="a" * 41))
    assert [p.path for p in found] == ["metadata.name"]


def test_shards_and_method_are_fixed_after_creation() -> None:
    old = crd.cluster({"shards": 2})
    assert crd.problems(crd.cluster({"shards": 2, "replicasPerShard": 4}), old=old) == []
    assert [p.path for p in crd.problems(crd.cluster({"shards": 3}), old=old)] == ["spec"]
    changed = crd.cluster({"replication": {"method": "statement"}})
    assert any("method cannot be changed" in p.message for p in crd.problems(changed, old=old))


def test_a_distributed_table_keeps_its_key_and_stays_distributed() -> None:
    old = crd.cluster({"sharding": {"tables": [{"name": "orders", "key": "customer_id"}]}})
    added = {"tables": [{"name": "orders", "key": "customer_id"}, {"name": "items", "key": "id"}]}
    assert crd.problems(crd.cluster({"sharding": added}), old=old) == []
    for new in ({"tables": [{"name": "orders", "key": "id"}]}, {"tables": []}, {}):
        found = crd.problems(crd.cluster({"sharding": new}), old=old)
        assert [p.path for p in found] == ["spec"], new
        assert "keeps its shard key" in found[0].message


def test_storage_is_fixed_after_creation() -> None:
    old = crd.cluster({"storage": {"size": "1Gi"}})
    assert crd.problems(crd.cluster({}), old=old) == []
    found = crd.problems(crd.cluster({"storage": {"size": "2Gi"}}), old=old)
    assert any("spec.storage cannot be changed" in p.message for p in found)


def test_defaults_pass_their_own_rules(doc: dict[str, Any]) -> None:
    """kube-apiserver checks each ``default`` against the rules of its node without
    filling the nested defaults first (this once refused the CRD)."""
    for path, node in _nodes(crd.root_schema(doc)):
        if "default" in node and node.get("x-kubernetes-validations"):
            found = crd.cel_problems(node, node["default"])
            assert found == [], (path, found)
