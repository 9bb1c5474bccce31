"""The operator on a real Kubernetes control plane (tests/kube), installed with Helm.

The operator runs as a pod from the chart (this checkout's code: the chart's
``command`` runs ``python -m pgshard_operator.k8s``), talks to the API server with
its service account, and manages ShardedClusters in one test namespace.

Proxy pods run the real ``pgshard-proxy``, following the cluster's status through
the Kubernetes topology source with their service account. Shard pods run a
stand-in here, a TCP server on the pod's address and port 5432
(``PGSHARD_OPERATOR_INSTANCE_COMMAND``), which keeps these tests fast; real
PostgreSQL pods are in ``test_operator_postgres.py`` and ``test_failover.py``. What
is tested here: the CRD (the API server's refusals), every owned object, labels,
owner references, Secrets, readiness-driven status and phase, safe roll-out of a
parameter change one pod at a time, scaling followers, Events and conditions for
impossible specs, and garbage collection when the cluster is deleted; and the
primary Lease store's compare-and-set against the API server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from prometheus_client.parser import text_string_to_metric_families

from pgshard_operator.instance import postgres
from pgshard_operator.k8s import apply
from pgshard_operator.k8s import lease as kube_lease
from tests.e2e.helpers import get, operator_namespace, ready_pods, wait_for
from tests.kube.cluster import Kube
from tests.support import crd

pytestmark = pytest.mark.e2e

STAND_IN = "{python} -m http.server 5432 --bind $(PGSHARD_POD_IP)"


@pytest.fixture(scope="module")
def ns(kube: Kube) -> Iterator[str]:
    """A namespace with the chart installed, watching only that namespace."""
    env = {
        "PGSHARD_OPERATOR_REAPPLY_SECONDS": "3",
        # Pods from the image run its python (on PATH), process pods this interpreter.
        "PGSHARD_OPERATOR_INSTANCE_COMMAND": STAND_IN.format(
            python="python" if kube.pod_image else sys.executable
        ),
        "PGSHARD_OPERATOR_METRICS_PORT": "9188",
    }
    with operator_namespace(kube, "op", env, log_level="info") as name:
        yield name


def apply_cluster(
    kube: Kube, ns: str, name: str, spec: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    doc = json.dumps(crd.cluster(spec, name=name) | {"metadata": {"name": name, "namespace": ns}})
    return subprocess.run(
        [str(kube.bin / "kubectl"), "apply", "-f", "-"],
        input=doc, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def cluster(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = get(kube, "shardedcluster", "-n", ns, name)
    return result


def phase(kube: Kube, ns: str, name: str, wanted: str) -> dict[str, Any] | None:
    c = cluster(kube, ns, name)
    return c if (c.get("status") or {}).get("phase") == wanted else None


def test_invalid_cluster_is_refused_by_the_api_server(kube: Kube, ns: str) -> None:
    done = apply_cluster(kube, ns, "bad", {"shards": 0, "replication": {"mode": "quorum"}})
    assert done.returncode != 0
    assert "spec.shards" in done.stderr and "greater than or equal to 1" in done.stderr
    done = apply_cluster(kube, ns, "bad", {"replication": {"mode": "quorum"}})
    assert "replication.quorum (the number k of followers" in done.stderr
    assert get(kube, "shardedclusters", "-n", ns)["items"] == []


def test_impossible_cluster_gets_a_condition_and_an_event(kube: Kube, ns: str) -> None:
    spec = {"shards": 1, "replicasPerShard": 1, "replication": {"mode": "quorum", "quorum": 2}}
    assert apply_cluster(kube, ns, "impossible", spec).returncode == 0
    c = wait_for("phase Invalid", lambda: phase(kube, ns, "impossible", "Invalid"), 60)
    (valid,) = [x for x in c["status"]["conditions"] if x["type"] == "SpecValid"]
    assert (valid["status"], valid["reason"]) == ("False", "SpecImpossible")
    assert "needs 2 follower confirmation(s)" in valid["message"]
    events = wait_for(
        "a SpecImpossible event",
        lambda: [
            e
            for e in get(kube, "events", "-n", ns)["items"]
            if e["involvedObject"]["name"] == "impossible" and e["reason"] == "SpecImpossible"
        ],
        30,
    )
    assert events[0]["type"] == "Warning"
    assert (
        get(kube, "statefulsets", "-n", ns, "-l", "app.kubernetes.io/instance=impossible")["items"]
        == []
    )
    kube.kubectl("delete", "shardedcluster", "-n", ns, "impossible")


def owned(kube: Kube, ns: str, name: str) -> list[tuple[str, str]]:
    kinds = ",".join(
        [
            "statefulsets",
            "services",
            "poddisruptionbudgets",
            "secrets",
            "configmaps",
            "deployments",
            "serviceaccounts",
            "roles",
            "rolebindings",
            "persistentvolumeclaims",
        ]
    )
    items = get(kube, kinds, "-n", ns, "-l", f"app.kubernetes.io/instance={name}")["items"]
    return sorted((i["kind"], i["metadata"]["name"]) for i in items)


def test_operator_serves_its_shard_managers_metrics(kube: Kube, ns: str) -> None:
    assert apply_cluster(kube, ns, "watched", {"shards": 2, "replicasPerShard": 0}).returncode == 0
    (pod,) = get(kube, "pods", "-n", ns, "-l", "app.kubernetes.io/component=operator")["items"]
    url = f"http://{pod['status']['podIP']}:9188/metrics"

    def both_shards() -> set[str] | None:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        shards = {
            s.labels["shard"]
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "pgshard_shard_state" and s.labels["cluster"] == f"{ns}/watched"
        }
        return shards if shards == {"0", "1"} else None

    wait_for("both shards' managers in the operator's metrics", both_shards, 120, every=1)
    kube.kubectl("delete", "pgsc", "-n", ns, "watched", "--wait=false")


def test_cluster_lifecycle(kube: Kube, ns: str) -> None:
    name = "shop"
    assert (
        apply_cluster(
            kube, ns, name, {"shards": 2, "replicasPerShard": 2, "proxy": {"replicas": 1}}
        ).returncode
        == 0
    )
    c = wait_for("phase Ready", lambda: phase(kube, ns, name, "Ready"), 180, every=1)
    assert c["status"]["ready"] == "6/6"
    printed = kube.kubectl("get", "pgsc", "-n", ns, name)
    assert "6/6" in printed and "Ready" in printed

    # Owned objects, labelled and owned by the cluster.
    uid = c["metadata"]["uid"]
    for shard in (0, 1):
        sts = get(kube, "statefulset", "-n", ns, f"{name}-shard-{shard}")
        assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}
        assert sts["metadata"]["ownerReferences"][0]["uid"] == uid
        for suffix, role in (("-rw", "primary"), ("-ro", "replica")):
            svc = get(kube, "service", "-n", ns, f"{name}-shard-{shard}{suffix}")
            assert svc["spec"]["selector"]["pgshard.io/role"] == role
        get(kube, "poddisruptionbudget", "-n", ns, f"{name}-shard-{shard}")
    pods = ready_pods(kube, ns, f"app.kubernetes.io/instance={name},pgshard.io/shard=1", 3)
    assert pods is not None
    assert {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods} == {"instance"}
    service = get(kube, "service", "-n", ns, name)
    assert [p["port"] for p in service["spec"]["ports"]] == [5432]
    secret = get(kube, "secret", "-n", ns, f"{name}-app")["data"]
    uri = urlsplit(base64.b64decode(secret["uri"]).decode())
    assert (uri.hostname, uri.port) == (f"{name}.{ns}.svc", 5432)
    assert base64.b64decode(secret["password"]).decode() == uri.password

    # Clients reach the proxy pods through the Service with the Secret's credentials; the
    # proxy knows the shards from the cluster's status (which has no primary here: shard
    # pods are stand-ins) and says so clearly.
    psql = str(postgres.find_bindir() / "psql")
    ip = service["spec"]["clusterIP"]

    def through_proxy(password: str) -> str:
        done = subprocess.run(
            [psql, f"postgresql://app:{password}@{ip}:5432/app", "-c", "select 1"],
            capture_output=True, text=True, timeout=30, check=False,
            env={"PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        return done.stderr

    assert "password authentication failed" in through_proxy("wrong")
    assert "shard 0 has no primary right now" in through_proxy(uri.password or "")

    # An owned object deleted by hand comes back.
    kube.kubectl("delete", "service", "-n", ns, f"{name}-shard-1-rw")
    wait_for(
        "the -rw Service put back",
        lambda: ("Service", f"{name}-shard-1-rw") in owned(kube, ns, name),
        60,
    )

    # A parameter change rolls every member onto the new template, one pod at a time.
    kube.kubectl("patch", "shardedcluster", "-n", ns, name, "--type", "merge",
                 "-p", '{"spec":{"postgres":{"parameters":{"work_mem":"8MB"}}}}')  # fmt: skip
    wait_for("phase Updating", lambda: phase(kube, ns, name, "Updating"), 30, every=0.5)

    def rolled() -> bool:
        for shard in (0, 1):
            sts = get(kube, "statefulset", "-n", ns, f"{name}-shard-{shard}")
            revision = sts["status"].get("updateRevision")
            pods = ready_pods(
                kube, ns, f"app.kubernetes.io/instance={name},pgshard.io/shard={shard}", 3
            )
            if not pods or any(
                p["metadata"]["labels"]["controller-revision-hash"] != revision for p in pods
            ):
                return False
        return phase(kube, ns, name, "Ready") is not None

    wait_for("every member restarted on the new template", rolled, 300, every=1)
    restarts = [
        e for e in get(kube, "events", "-n", ns)["items"]
        if e["involvedObject"]["name"] == name and e["reason"] == "RestartingMember"
    ]  # fmt: skip
    assert len({e["message"] for e in restarts}) == 6
    assert get(kube, "configmap", "-n", ns, f"{name}-postgres")["data"]["postgresql.conf"].endswith(
        "work_mem = '8MB'\n"
    )

    # Fewer followers: the StatefulSets shrink and the removed volume goes too.
    kube.kubectl("patch", "shardedcluster", "-n", ns, name, "--type", "merge",
                 "-p", '{"spec":{"replicasPerShard":1}}')  # fmt: skip
    wait_for(
        "two members per shard",
        lambda: (
            ready_pods(kube, ns, f"app.kubernetes.io/instance={name},pgshard.io/shard=0", 2)
            and phase(kube, ns, name, "Ready")
        ),
        120,
    )
    wait_for(
        "the removed member's volume deleted",
        lambda: ("PersistentVolumeClaim", f"data-{name}-shard-0-2") not in owned(kube, ns, name),
        60,
    )

    # Deleting the cluster garbage-collects everything it owned.
    assert owned(kube, ns, name)
    kube.kubectl("delete", "shardedcluster", "-n", ns, name)
    wait_for("owned objects garbage-collected", lambda: owned(kube, ns, name) == [], 120, every=1)
    wait_for(
        "pods gone",
        lambda: (
            get(kube, "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={name}")["items"] == []
        ),
        120,
    )


async def test_primary_lease_is_compare_and_set_on_the_api_server(kube: Kube, ns: str) -> None:
    cfg = k8s_client.Configuration()
    await k8s_config.load_kube_config(config_file=str(kube.kubeconfig), client_configuration=cfg)
    async with k8s_client.ApiClient(cfg) as api_client:
        store = kube_lease.KubeLeaseStore(apply.Api(api_client), ns, "lease-test-shard-0-primary")
        now = time.time()
        first = await store.take("a", 5, now, epoch=1)
        assert first is not None and first.holder == "a"
        assert await store.take("b", 5, now + 1, epoch=2) is None, "a's claim is still valid"
        assert await store.renew("b", 5, now + 1) is None
        renewed = await store.renew("a", 5, now + 2)
        assert renewed is not None and renewed.expires_at == pytest.approx(now + 7, abs=1e-3)
        taken = await store.take("b", 5, now + 20, epoch=2)
        assert taken is not None and taken.epoch == 2
        assert await store.renew("a", 5, now + 20) is None, "a lost the lease: it must fence"
        record = await store.read()
        assert record.lease is not None and record.transitions == 2
        assert (record.lease.holder, record.lease.epoch) == ("b", 2)
        # The API keeps microseconds.
        assert record.lease.expires_at == pytest.approx(taken.expires_at, abs=1e-5)
        # Two members racing for an expired lease: exactly one gets it.
        results = await asyncio.gather(
            store.take("c", 5, now + 40, epoch=3), store.take("d", 5, now + 40, epoch=3)
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await store.release(winners[0].holder, now + 41)
        assert (await store.read()).lease is None
        lease_obj = get(kube, "lease", "-n", ns, "lease-test-shard-0-primary")
        assert lease_obj["spec"]["leaseTransitions"] == 3
