"""The Helm chart: one CRD source, documented values, and ``helm lint``/``template``
when the helm binary built by ``scripts/kube-build`` is present."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import pgshard_operator
from tests.support import crd

CHART = crd.ROOT / "charts" / "pgshard"


def test_chart_ships_the_one_crd_file() -> None:
    shipped = sorted((CHART / "crds").iterdir())
    assert [p.name for p in shipped] == [crd.CRD_PATH.name]
    assert shipped[0].samefile(crd.CRD_PATH), "charts/pgshard/crds must link to crds/"


def test_chart_version_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == pgshard_operator.__version__
    assert chart["name"] == "pgshard"


def test_every_top_level_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    values: dict[str, Any] = yaml.safe_load("\n".join(lines))
    for key in values:
        (index,) = [i for i, line in enumerate(lines) if line.startswith(f"{key}:")]
        assert lines[index - 1].startswith("#"), (
            f"values.yaml: document {key} in a comment above it"
        )
    for required in ("image", "resources", "watchNamespaces", "logLevel"):
        assert required in values


def _helm() -> str | None:
    found = shutil.which("helm")
    if found:
        return found
    cached = sorted(Path.home().glob(".cache/pgshard/kube/*/bin/helm"))
    return str(cached[-1]) if cached else None


@pytest.fixture
def helm() -> str:
    path = _helm()
    if path is None:
        pytest.skip("helm not built yet (scripts/kube-build builds it)")
    return path


def test_helm_lint_is_clean(helm: str) -> None:
    out = subprocess.run(
        [helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_helm_template_renders_least_privilege_rbac(helm: str) -> None:
    out = subprocess.run(
        [
            helm,
            "template",
            "rel",
            str(CHART),
            "--namespace",
            "ops",
            "--kube-version",
            "1.33.0",
            "--set",
            "watchNamespaces={a,b}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted((d["kind"], d["metadata"].get("namespace", "")) for d in docs)
    assert ("RoleBinding", "a") in kinds and ("RoleBinding", "b") in kinds
    bindings = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert [b["metadata"]["name"] for b in bindings] == ["rel-pgshard-discovery"]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["PGSHARD_OPERATOR_NAMESPACES"] == "a,b"
    assert env["PGSHARD_OPERATOR_IMAGE"] == "pgshard:0.1.0"


def _render(helm: str, *sets: str) -> list[dict[str, Any]]:
    argv = [helm, "template", "rel", str(CHART), "--namespace", "ops", "--kube-version", "1.33.0"]
    for s in sets:
        argv += ["--set", s]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_operator_pod_is_restricted_and_names_the_pods_user(helm: str) -> None:
    (dep,) = [d for d in _render(helm) if d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 26,
        "runAsGroup": 26,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PGSHARD_OPERATOR_POD_USER"] == "26"
    (dep,) = [d for d in _render(helm, "podUser=root") if d["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["PGSHARD_OPERATOR_POD_USER"] == "root"


def test_monitoring_objects_are_off_by_default_and_render_when_on(helm: str) -> None:
    kinds = {d["kind"] for d in _render(helm)}
    assert not kinds & {"PodMonitor", "PrometheusRule"}
    docs = _render(
        helm,
        "monitoring.enabled=true",
        "monitoring.podMonitor.labels.release=kp",
        "monitoring.prometheusNamespace=mon",
    )
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["PGSHARD_OPERATOR_METRICS_NAMESPACE"] == "mon"
    assert env["PGSHARD_OPERATOR_METRICS_PORT"] == "9188"
    ports = dep["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "metrics", "containerPort": 9188} in ports
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kp"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    ports = [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]]
    assert ports == ["status", "metrics"]
    agents, others = monitor["spec"]["podMetricsEndpoints"]
    assert agents["scheme"] == "https" and agents["tlsConfig"] == {"insecureSkipVerify": True}
    assert "scheme" not in others and "tlsConfig" not in others
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"PgshardPrimaryMissing", "PgshardFollowerLagBytes", "PgshardFailoverHappened",
            "PgshardReplicationBroken", "PgshardProxyRefusingConnections",
            "PgshardLeaseExpiring"} <= alerts  # fmt: skip
    (dashboard,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["pgshard.json"])["uid"] == "pgshard"
    lint = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--set", "monitoring.enabled=true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _node_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        rule
        for d in docs
        if d["kind"] in ("ClusterRole", "Role")
        for rule in d["rules"]
        if "nodes" in rule["resources"]
    ]


def test_node_zones_need_only_get_on_nodes_bound_cluster_wide(helm: str) -> None:
    # Nodes are cluster-scoped: a RoleBinding (watchNamespaces) would not grant them, so
    # the rule lives in the ClusterRole that a ClusterRoleBinding always binds.
    docs = _render(helm, "watchNamespaces={a}")
    assert _node_rules(docs) == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    (holder,) = [d for d in docs if d["kind"] == "ClusterRole" and _node_rules([d])]
    bound = [b["roleRef"]["name"] for b in docs if b["kind"] == "ClusterRoleBinding"]
    assert holder["metadata"]["name"] in bound
    assert _node_rules(_render(helm, "readNodeZones=false")) == []


_WRITE = {"create", "patch", "update", "delete"}


def _cluster_wide_writes(docs: list[dict[str, Any]]) -> set[str]:
    """Resources a ClusterRoleBinding lets the operator write in every namespace."""
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    out: set[str] = set()
    for b in docs:
        if b["kind"] == "ClusterRoleBinding":
            for rule in roles[b["roleRef"]["name"]]["rules"]:
                if _WRITE & set(rule["verbs"]):
                    out.update(rule["resources"])
    return out


def _watched(docs: list[dict[str, Any]]) -> str:
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    return str({e["name"]: e.get("value") for e in env}["PGSHARD_OPERATOR_NAMESPACES"])


def test_the_default_install_writes_only_in_its_own_namespace(helm: str) -> None:
    docs = _render(helm)
    assert _cluster_wide_writes(docs) == set(), "the default install must be namespaced"
    bindings = [(d["metadata"]["namespace"], d["roleRef"]["name"]) for d in docs
                if d["kind"] == "RoleBinding"]  # fmt: skip
    assert bindings == [("ops", "rel-pgshard")]
    assert _watched(docs) == "ops"


def test_a_cluster_wide_install_is_chosen_explicitly(helm: str) -> None:
    docs = _render(helm, "rbac.scope=cluster")
    assert {"secrets", "roles", "rolebindings"} <= _cluster_wide_writes(docs)
    assert not [d for d in docs if d["kind"] == "RoleBinding"]
    assert _watched(docs) == ""
    lint = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--set", "rbac.scope=cluster"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("rbac.scope=everywhere",), "rbac.scope must be namespace or cluster"),
        (("rbac.scope=cluster", "watchNamespaces={a}"), "leave watchNamespaces empty"),
    ],
)
def test_a_contradictory_scope_is_refused_with_what_to_do(
    helm: str, sets: tuple[str, ...], message: str
) -> None:
    argv = [helm, "template", "rel", str(CHART), "--namespace", "ops", "--kube-version", "1.33.0"]
    for s in sets:
        argv += ["--set", s]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert message in out.stderr
