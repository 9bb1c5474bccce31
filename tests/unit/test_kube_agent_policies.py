"""The test node's NetworkPolicy egress subset (tests/kube/agent/policies.py): which
addresses a pod may reach; and what it makes of ``pgshard verify --kube``'s partition
policies (the primary reaches only its cluster's pods, the operator all but it)."""

from __future__ import annotations

from typing import Any

from pgshard_operator import naming
from pgshard_operator.k8s.network import OPERATOR_POD_LABELS
from pgshard_operator.verify.kube_faults import POD_NAME_LABEL, partition_policies
from tests.kube.agent.policies import OPEN, routes_for


def pod(name: str, ip: str, ns: str = "db", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "uid": name, "labels": labels},
        "status": {"podIP": ip},
    }


def policy(ns: str, selector: dict[str, str], egress: list[Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Egress"],
            "egress": egress,
        },
    }


PRIMARY = pod("c-0", "198.18.0.2", app="c", m="0")
FOLLOWER = pod("c-1", "198.18.0.3", app="c", m="1")
OPERATOR = pod("op", "198.18.0.9", ns="ops", component="operator")
OTHER = pod("x", "198.18.0.7", app="x")
PODS = [PRIMARY, FOLLOWER, OPERATOR, OTHER]


def test_pods_no_egress_policy_selects_are_open() -> None:
    ingress_only = policy("db", {"m": "0"}, [])
    ingress_only["spec"]["policyTypes"] = ["Ingress"]
    assert routes_for(PRIMARY, [ingress_only], PODS) == OPEN
    assert routes_for(FOLLOWER, [policy("db", {"m": "0"}, [])], PODS) == OPEN
    assert routes_for(PRIMARY, [policy("ops", {"m": "0"}, [])], PODS) == OPEN


def test_pod_peers_alone_are_reachable() -> None:
    rule = {"to": [{"podSelector": {"matchLabels": {"app": "c"}}}]}
    only, blocked = routes_for(PRIMARY, [policy("db", {"m": "0"}, [rule])], PODS)
    assert only == ("198.18.0.2", "198.18.0.3") and blocked == ()
    assert routes_for(PRIMARY, [policy("db", {"m": "0"}, [])], PODS) == ((), ())  # deny all


def test_everything_but_an_except_block() -> None:
    rule = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["198.18.0.2/32"]}}]}
    assert routes_for(OPERATOR, [policy("ops", {"component": "operator"}, [rule])], PODS) == (
        None,
        ("198.18.0.2/32",),
    )


def test_a_rule_without_to_or_a_peer_not_enforced_opens_everything() -> None:
    pods_rule = {"to": [{"podSelector": {"matchLabels": {"app": "c"}}}]}
    for extra in (
        {"ports": [{"port": 53, "protocol": "UDP"}]},
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]},
        {"to": [{"namespaceSelector": {"matchLabels": {"a": "b"}}}]},
    ):
        assert routes_for(PRIMARY, [policy("db", {"m": "0"}, [pods_rule, extra])], PODS) == OPEN


def test_verify_partition_policies_cut_the_primary_off_the_api_server_and_operator() -> None:
    member = naming.cluster_selector("c")
    primary = pod("c-shard-0-0", "198.18.0.2", **member, **{POD_NAME_LABEL: "c-shard-0-0"})
    follower = pod("c-shard-0-1", "198.18.0.3", **member, **{POD_NAME_LABEL: "c-shard-0-1"})
    proxy = pod("c-proxy-1", "198.18.0.4", **member)
    operator = pod("op", "198.18.0.9", ns="ops", **OPERATOR_POD_LABELS)
    pods = [primary, follower, proxy, operator, OTHER]
    policies = partition_policies("db", "c", "c-shard-0-0", "198.18.0.2", ["ops"])
    assert routes_for(primary, policies, pods) == (("198.18.0.2", "198.18.0.3", "198.18.0.4"), ())
    assert routes_for(operator, policies, pods) == (None, ("198.18.0.2/32",))
    assert routes_for(follower, policies, pods) == OPEN
    assert routes_for(proxy, policies, pods) == OPEN
