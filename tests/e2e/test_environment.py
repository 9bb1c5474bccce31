"""The local Kubernetes environment works as the operator's tests need it to (issue 4).

Real API server, controller-manager and scheduler; pods are real local processes in their
own network namespaces. Each test uses its own namespace. The heartbeat test runs last
because it makes the node NotReady for a while.
"""

from __future__ import annotations

import json
import pwd
import subprocess
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from pgshard_operator.instance import postgres
from tests.e2e.helpers import get, node_ready, ready_pods, wait_for
from tests.kube.cluster import Cluster
from tests.kube.faults import Faults

# The test node itself is under test here: pods run this machine's interpreter.
pytestmark = [pytest.mark.e2e, pytest.mark.test_node]

CHARTS = Path(__file__).parent / "charts"


@pytest.fixture
def ns(kube: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    wait_for(
        "the namespace's default service account", lambda: get(kube, "sa", "default", "-n", name)
    )
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false")


def apply(kube: Cluster, ns: str, *docs: dict[str, object]) -> str:
    return kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(docs))


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def web_deployment(name: str, replicas: int) -> dict[str, object]:
    """A Deployment whose pods serve HTTP on their pod IP, port 8080 (python's http.server)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "web",
                            "image": "python:3.11",
                            "command": ["python3", "-m", "http.server", "8080"],
                            "args": ["--bind", "$(POD_IP)", "--directory", "/srv/pgshard-e2e"],
                            "env": [
                                {
                                    "name": "POD_IP",
                                    "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                },
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                            ],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": "http"},
                                "periodSeconds": 1,
                            },
                            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2},
                            "volumeMounts": [{"name": "site", "mountPath": "/srv/pgshard-e2e"}],
                        }
                    ],
                    "volumes": [{"name": "site", "configMap": {"name": f"{name}-site"}}],
                },
            },
        },
    }


def web_service(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def site(name: str, text: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-site"},
        "data": {"index.html": text},
    }


def test_versions_and_ready_node(kube: Cluster) -> None:
    versions = json.loads(kube.kubectl("version", "-o", "json"))
    assert versions["serverVersion"]["gitVersion"] == "v1.37.2"
    assert versions["clientVersion"]["gitVersion"] == "v1.37.2"
    assert node_ready(kube) == "True"


def test_deployment_pods_serve_on_pod_ips_and_through_service(kube: Cluster, ns: str) -> None:
    apply(kube, ns, site("web", "hello from a pod"), web_deployment("web", 2), web_service("web"))
    pods = wait_for("2 ready web pods", lambda: ready_pods(kube, ns, "app=web", 2), timeout=90)
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2
    for ip in ips:
        assert ip.startswith("198.18.")
        assert http_get(f"http://{ip}:8080/index.html") == "hello from a pod"
    cluster_ip = get(kube, "service", "web", "-n", ns)["spec"]["clusterIP"]
    assert cluster_ip.startswith("198.19.")

    def endpoints_ready() -> bool:
        slices = get(kube, "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=web")[
            "items"
        ]
        addresses = {a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]}
        return addresses == ips

    wait_for("the Service's endpoints", endpoints_ready)
    assert http_get(f"http://{cluster_ip}/index.html") == "hello from a pod"


def test_killed_container_is_restarted(kube: Cluster, ns: str, faults: Faults) -> None:
    apply(kube, ns, site("crash", "again"), web_deployment("crash", 1))
    (pod,) = wait_for("a ready pod", lambda: ready_pods(kube, ns, "app=crash", 1), timeout=90)
    name = pod["metadata"]["name"]
    faults.kill(ns, name, "web")
    # kubectl logs goes through the API server to the agent: the probes' requests are there.
    assert '"GET / HTTP/1.1" 200' in kube.kubectl("logs", "-n", ns, name, "-c", "web", "--tail=5")

    def restarted() -> bool:
        p = get(kube, "pod", name, "-n", ns)
        status = p["status"]["containerStatuses"][0]
        return bool(status["restartCount"] >= 1 and status["ready"])

    wait_for("the killed container to be restarted and ready", restarted, timeout=60)
    last = get(kube, "pod", name, "-n", ns)["status"]["containerStatuses"][0]["lastState"]
    assert last["terminated"]["exitCode"] == 137


def test_frozen_pod_turns_unready_then_liveness_restarts_it(
    kube: Cluster, ns: str, faults: Faults
) -> None:
    deployment = web_deployment("frozen", 1)
    container = deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    container["livenessProbe"] = {
        "httpGet": {"path": "/", "port": "http"},
        "periodSeconds": 1,
        "failureThreshold": 4,
    }
    apply(kube, ns, site("frozen", "cold"), deployment)
    (pod,) = wait_for("a ready pod", lambda: ready_pods(kube, ns, "app=frozen", 1), timeout=90)
    name = pod["metadata"]["name"]
    faults.freeze(ns, name)

    def status() -> dict[str, object]:
        return dict(get(kube, "pod", name, "-n", ns)["status"]["containerStatuses"][0])

    wait_for("the frozen pod to turn unready", lambda: status()["ready"] is False, timeout=30)
    wait_for(
        "liveness to restart the frozen container",
        lambda: status()["restartCount"] == 1 and status()["ready"] is True,
        timeout=60,
    )


def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(
    kube: Cluster, ns: str, faults: Faults
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stubborn"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "initContainers": [
                {
                    "name": "prepare",
                    "image": "busybox",
                    "command": ["sh", "-c", "echo prepared > /work/state"],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                }
            ],
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    # Ignores SIGTERM; ready only if the init container ran first.
                    "command": ["sh", "-c", "trap '' TERM; while true; do sleep 0.2; done"],
                    "readinessProbe": {
                        "exec": {"command": ["grep", "-q", "prepared", "/work/state"]},
                        "periodSeconds": 1,
                    },
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                }
            ],
            "volumes": [{"name": "work", "emptyDir": {}}],
        },
    }
    apply(kube, ns, pod)
    wait_for("the pod to be ready", lambda: ready_pods(kube, ns, "", 1), timeout=60)
    (record,) = [p for p in faults.pods() if p["namespace"] == ns]
    pid = record["containers"]["c"]
    kube.kubectl("delete", "pod", "stubborn", "-n", ns, "--wait=true", "--timeout=30s")
    # The agent deletes the pod object only once the container's processes are gone.
    assert not Path(f"/proc/{pid}").exists()


def test_pod_reaches_the_api_with_its_service_account(kube: Cluster, ns: str) -> None:
    script = textwrap.dedent(
        """
        import json, os, ssl, urllib.request
        d = "/var/run/secrets/kubernetes.io/serviceaccount"
        token = open(d + "/token").read()
        ctx = ssl.create_default_context(cafile=d + "/ca.crt")
        port = os.environ["KUBERNETES_SERVICE_PORT"]
        url = "https://kubernetes.default.svc:%s/apis/authentication.k8s.io/v1/" % port
        url += "selfsubjectreviews"
        body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        req = urllib.request.Request(url, body.encode(), method="POST", headers={
            "Authorization": "Bearer " + token, "Content-Type": "application/json"})
        review = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
        user = review["status"]["userInfo"]["username"]
        ns = open(d + "/namespace").read()
        raise SystemExit(0 if user == "system:serviceaccount:%s:default" % ns else 1)
        """
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "whoami"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "c", "image": "python:3.11", "command": ["python3", "-c", script]}
            ],
        },
    }
    apply(kube, ns, pod)
    phase = wait_for(
        "the pod to finish",
        lambda: (
            get(kube, "pod", "whoami", "-n", ns)["status"].get("phase") in ("Succeeded", "Failed")
            and get(kube, "pod", "whoami", "-n", ns)["status"]["phase"]
        ),
        timeout=60,
    )
    assert phase == "Succeeded"


def postgres_statefulset(name: str, bindir: Path, uid: int) -> list[dict[str, object]]:
    """A one-replica PostgreSQL StatefulSet (headless Service + PVC template) as user ``uid``."""
    start = textwrap.dedent(
        f"""
        set -e
        export PGDATA=/var/lib/pgshard-e2e/data/pgdata
        if [ ! -s "$PGDATA/PG_VERSION" ]; then
            {bindir}/initdb --auth=trust --username=postgres -D "$PGDATA" >/dev/null
            echo "host all all 0.0.0.0/0 trust" >> "$PGDATA/pg_hba.conf"
        fi
        exec {bindir}/postgres -D "$PGDATA" -c listen_addresses='*' -c port=5432 \\
            -c unix_socket_directories= -c fsync=off -c shared_buffers=16MB
        """
    )
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {
                "clusterIP": "None",
                "selector": {"app": name},
                "ports": [{"name": "pg", "port": 5432}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"{name}-rw"},
            "spec": {"selector": {"app": name}, "ports": [{"name": "pg", "port": 5432}]},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": name},
            "spec": {
                "serviceName": name,
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "securityContext": {"runAsUser": uid, "fsGroup": uid},
                        "terminationGracePeriodSeconds": 10,
                        "containers": [
                            {
                                "name": "postgres",
                                "image": "postgres:15",
                                "command": ["sh", "-c", start],
                                "ports": [{"name": "pg", "containerPort": 5432}],
                                "readinessProbe": {
                                    "exec": {
                                        "command": [
                                            f"{bindir}/pg_isready",
                                            "-h",
                                            "127.0.0.1",
                                            "-p",
                                            "5432",
                                        ]
                                    },
                                    "periodSeconds": 1,
                                },
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/var/lib/pgshard-e2e/data"}
                                ],
                            }
                        ],
                    },
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    }
                ],
            },
        },
    ]


def test_postgres_statefulset_keeps_its_data_when_the_pod_is_recreated(
    kube: Cluster, ns: str
) -> None:
    bins = postgres.Binaries.detect()
    uid = pwd.getpwnam("postgres").pw_uid
    apply(kube, ns, *postgres_statefulset("pg", bins.bindir, uid))
    (pod,) = wait_for(
        "a ready PostgreSQL pod", lambda: ready_pods(kube, ns, "app=pg", 1), timeout=120
    )
    assert pod["metadata"]["name"] == "pg-0"
    pvc = get(kube, "pvc", "data-pg-0", "-n", ns)
    assert pvc["status"]["phase"] == "Bound"
    ip = pod["status"]["podIP"]
    with psycopg.connect(
        f"host={ip} port=5432 user=postgres dbname=postgres", autocommit=True
    ) as conn:
        assert conn.execute("select current_user").fetchone() == ("postgres",)
        conn.execute("create table kept (v text)")
        conn.execute("insert into kept values ('survives')")
    uid_before = pod["metadata"]["uid"]
    kube.kubectl("delete", "pod", "pg-0", "-n", ns, "--wait=true", "--timeout=60s")

    def recreated() -> list[dict[str, object]] | None:
        pods = ready_pods(kube, ns, "app=pg", 1)
        return pods if pods and pods[0]["metadata"]["uid"] != uid_before else None

    (pod,) = wait_for("pg-0 to be recreated and ready", recreated, timeout=120)
    # Through the ClusterIP Service this time, as the operator's clients will connect.
    cluster_ip = get(kube, "service", "pg-rw", "-n", ns)["spec"]["clusterIP"]
    with psycopg.connect(f"host={cluster_ip} port=5432 user=postgres dbname=postgres") as conn:
        assert conn.execute("select v from kept").fetchall() == [("survives",)]
        assert conn.execute("select host(inet_server_addr())").fetchone() == (
            pod["status"]["podIP"],
        )


def test_owned_objects_are_garbage_collected(kube: Cluster, ns: str) -> None:
    owner = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "owner"},
        "data": {"a": "1"},
    }
    apply(kube, ns, owner)
    uid = get(kube, "configmap", "owner", "-n", ns)["metadata"]["uid"]
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
    }
    apply(kube, ns, owned)
    assert kube.kubectl("get", "configmap", "owned", "-n", ns, "-o", "name") == "configmap/owned\n"
    kube.kubectl("delete", "configmap", "owner", "-n", ns)

    def collected() -> bool:
        out = kube.kubectl(
            "get", "configmap", "owned", "-n", ns, "--ignore-not-found", "-o", "name"
        )
        return out == ""

    wait_for("the owned ConfigMap to be collected", collected, timeout=60)


def test_helm_install_and_uninstall(kube: Cluster, ns: str) -> None:
    kube.helm("install", "hello", str(CHARTS / "hello"), "-n", ns, "--wait", "--timeout", "90s")
    (pod,) = wait_for(
        "the chart's pod", lambda: ready_pods(kube, ns, "app.kubernetes.io/instance=hello", 1)
    )
    assert http_get(f"http://{pod['status']['podIP']}:8080/index.html") == "hello from helm\n"
    assert "hello" in kube.helm("list", "-n", ns, "-q").split()
    kube.helm("uninstall", "hello", "-n", ns, "--wait", "--timeout", "60s")
    wait_for(
        "the chart's objects to go",
        lambda: (
            kube.kubectl(
                "get",
                "deploy,svc,cm,pods",
                "-n",
                ns,
                "-l",
                "app.kubernetes.io/instance=hello",
                "-o",
                "name",
            )
            == ""
        ),
    )


def test_stopped_heartbeat_marks_node_not_ready(kube: Cluster, ns: str, faults: Faults) -> None:
    apply(
        kube, ns, site("steady", "still here"), web_deployment("steady", 1), web_service("steady")
    )
    wait_for("a ready pod", lambda: ready_pods(kube, ns, "app=steady", 1), timeout=90)
    faults.heartbeat(enabled=False)
    try:
        wait_for("the node to go NotReady", lambda: node_ready(kube) != "True", timeout=60)
        # The node lifecycle controller marks the unreachable node's pods not ready.
        wait_for("the pod marked not ready", lambda: not ready_pods(kube, ns, "app=steady", 1))
    finally:
        faults.heartbeat(enabled=True)
    wait_for("the node to be Ready again", lambda: node_ready(kube) == "True", timeout=60)
    # The agent re-asserts its pods' readiness, so Services work again.
    wait_for("the pod ready again", lambda: ready_pods(kube, ns, "app=steady", 1), timeout=60)
    cluster_ip = get(kube, "service", "steady", "-n", ns)["spec"]["clusterIP"]
    wait_for("the Service to answer", lambda: http_get(f"http://{cluster_ip}/") == "still here")


def test_kubectl_reports_clear_errors(kube: Cluster) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        kube.kubectl("get", "pod", "no-such-pod", "-n", "default")
    assert "not found" in failure.value.stderr
