"""The test node's NetworkPolicy egress subset (tests/kube/agent/policies.py): which
addresses a pod may reach, as ``pgshard verify --kube``'s partition policies need."""

from __future__ import annotations

from typing import Any

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
    ingress_only = policy("db", {"m": "0"}, []) | {}
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
