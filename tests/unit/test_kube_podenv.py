"""The node agent's pure pod-spec logic: $(VAR) expansion, downward API, Service env, hosts."""

from __future__ import annotations

import pytest

from tests.kube.agent import podenv

POD = {
    "metadata": {
        "name": "db-0",
        "namespace": "shop",
        "uid": "u-1",
        "labels": {"app": "db"},
        "annotations": {"note": "x"},
    },
    "spec": {"nodeName": "n1", "hostname": "db-0", "subdomain": "db", "serviceAccountName": "sa"},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-$(B)", "1-$(B)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("a$(A", "a$(A"),
        ("cost $5", "cost $5"),
        ("end$", "end$"),
        ("$(A)$(A)", "11"),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert podenv.expand(text, {"A": "1"}) == expected


def test_field_refs() -> None:
    def ref(path: str) -> str:
        return podenv.field_ref(POD, path, "198.18.0.5", "198.18.0.1")

    assert ref("metadata.name") == "db-0"
    assert ref("metadata.namespace") == "shop"
    assert ref("status.podIP") == "198.18.0.5"
    assert ref("status.hostIP") == "198.18.0.1"
    assert ref("spec.nodeName") == "n1"
    assert ref("metadata.labels['app']") == "db"
    assert ref("metadata.labels") == 'app="db"'
    with pytest.raises(podenv.PodSpecError, match="unsupported downward-API fieldPath"):
        ref("status.phase")


def test_argv_expands_and_refuses_missing_command() -> None:
    container = {"name": "c", "command": ["echo", "$(X)"], "args": ["$(Y)"]}
    assert podenv.argv(container, {"X": "x"}) == ["echo", "x", "$(Y)"]
    with pytest.raises(podenv.PodSpecError, match="set command"):
        podenv.argv({"name": "c", "image": "nginx"}, {})


def test_container_port_by_name_or_number() -> None:
    container = {"name": "c", "ports": [{"name": "pg", "containerPort": 5432}]}
    assert podenv.container_port(container, "pg") == 5432
    assert podenv.container_port(container, 80) == 80
    with pytest.raises(podenv.PodSpecError, match="no port named 'web'"):
        podenv.container_port(container, "web")


SERVICES = [
    {
        "metadata": {"name": "db-rw", "namespace": "shop"},
        "spec": {"clusterIP": "198.19.0.7", "ports": [{"name": "pg", "port": 5432}]},
    },
    {"metadata": {"name": "db", "namespace": "shop"}, "spec": {"clusterIP": "None", "ports": []}},
    {
        "metadata": {"name": "other", "namespace": "elsewhere"},
        "spec": {"clusterIP": "198.19.0.9", "ports": [{"port": 80}]},
    },
]


def test_service_env_only_for_own_namespace() -> None:
    env = podenv.service_env(SERVICES, "shop", "198.19.0.1")
    assert env["DB_RW_SERVICE_HOST"] == "198.19.0.7"
    assert env["DB_RW_SERVICE_PORT_PG"] == "5432"
    assert env["KUBERNETES_SERVICE_HOST"] == "198.19.0.1"
    assert "OTHER_SERVICE_HOST" not in env


def test_hosts_file_names_pod_services_and_headless_members() -> None:
    slices = [
        {
            "metadata": {"namespace": "shop", "labels": {"kubernetes.io/service-name": "db"}},
            "endpoints": [
                {"addresses": ["198.18.0.5"], "hostname": "db-0", "conditions": {"ready": True}},
                {"addresses": ["198.18.0.6"], "hostname": "db-1", "conditions": {"ready": False}},
            ],
        }
    ]
    hosts = podenv.hosts_file(POD, "198.18.0.5", SERVICES, slices)
    lines = hosts.splitlines()
    assert "198.18.0.5\tdb-0.db.shop.svc.cluster.local db-0" in lines
    assert "198.19.0.7\tdb-rw.shop.svc.cluster.local db-rw.shop.svc db-rw" in lines
    assert "198.19.0.9\tother.elsewhere.svc.cluster.local other.elsewhere.svc" in lines
    assert any(line.startswith("198.18.0.5\tdb-0.db.shop.svc.cluster.local") for line in lines[3:])
    assert "198.18.0.6" not in hosts
