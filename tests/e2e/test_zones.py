"""Zones on Kubernetes: members and the proxy take their node's topology.kubernetes.io/zone.

The test node is labelled with a zone (and the label removed afterwards: the node is the
session's). The operator (installed with the Helm chart, whose ClusterRole lets it get
Nodes) publishes each member's zone in ``status.shards`` and the proxy pod's node's in
``status.nodeZones``; the proxy, given no ``spec.proxy.zone``, takes that one
(``pgshard_proxy_zone``) and reads of fresh sessions go to the follower in it
(``pgshard_proxy_routes_total``), none to the primary. The test
control plane has one Node, so every member shares the zone: choosing between followers
of two zones is shown locally (tests/integration/test_proxy_zones.py) and by the router's
unit tests.
"""

from __future__ import annotations

import base64
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgshard_operator.instance import postgres
from tests.e2e.helpers import create_cluster, get, operator_namespace, wait_for
from tests.kube.cluster import Kube

pytestmark = pytest.mark.e2e

ZONE = "zone-e2e"
LABEL = "topology.kubernetes.io/zone"


@pytest.fixture(scope="module")
def zoned_node(kube: Kube) -> Iterator[str]:
    if not kube.node:
        pytest.skip("needs a cluster with one node (every member in the labelled zone)")
    kube.kubectl("label", "node", kube.node, f"{LABEL}={ZONE}", "--overwrite")
    try:
        yield ZONE
    finally:
        kube.kubectl("label", "node", kube.node, f"{LABEL}-", check=False)


@pytest.fixture(scope="module")
def ns(kube: Kube, zoned_node: str) -> Iterator[str]:
    with operator_namespace(kube, prefix="zone") as name:
        yield name


def test_members_and_proxy_take_their_node_s_zone(kube: Kube, ns: str) -> None:
    name = "zn"
    create_cluster(kube, ns, name, {"shards": 1, "replicasPerShard": 1, "proxy": {"replicas": 1}})

    def zoned() -> dict[str, Any] | None:
        status = get(kube, "shardedcluster", "-n", ns, name).get("status") or {}
        shards = status.get("shards") or []
        if status.get("phase") != "Ready" or len(shards) != 1:
            return None
        members = [shards[0].get("primary") or {}, *(shards[0].get("followers") or ())]
        streaming = [f for f in members[1:] if f.get("state") == "streaming"]
        ok = len(members) == 2 and len(streaming) == 1
        ok = ok and all(m.get("zone") == ZONE for m in members)
        return status if ok and status.get("nodeZones") == {kube.node: ZONE} else None

    status = wait_for("a Ready cluster whose members and proxy node carry the zone", zoned,
                      300, every=2)  # fmt: skip
    assert status["shards"][0]["followers"][0]["zone"] == ZONE
    (proxy,) = get(kube, "pods", "-n", ns, "-l", "app.kubernetes.io/component=proxy")["items"]
    metrics_url = f"http://{proxy['status']['podIP']}:9187/metrics"

    def proxy_zone() -> bool:
        with urllib.request.urlopen(metrics_url, timeout=10) as r:
            return f'pgshard_proxy_zone{{zone="{ZONE}"}} 1.0' in r.read().decode()

    wait_for("the proxy to take its node's zone (pgshard_proxy_zone)", proxy_zone, 60, every=1)

    secret = get(kube, "secret", "-n", ns, f"{name}-app")["data"]
    password = urlsplit(base64.b64decode(secret["uri"]).decode()).password
    ip = get(kube, "service", "-n", ns, name)["spec"]["clusterIP"]

    def sql(text: str) -> str:
        """``text`` in a fresh session through the proxy Service."""
        done = subprocess.run(
            [str(postgres.find_bindir() / "psql"), f"postgresql://app:{password}@{ip}:5432/app",
             "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", text],
            capture_output=True, text=True, timeout=60, check=False,
            env={"PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def routed() -> dict[str, float]:
        """Requests the proxy routed so far, by role (primary, follower)."""
        with urllib.request.urlopen(metrics_url, timeout=10) as r:
            families = text_string_to_metric_families(r.read().decode())
            samples = [s for f in families if f.name == "pgshard_proxy_routes" for s in f.samples]
        out: dict[str, float] = {}
        for sample in samples:
            if sample.name.endswith("_total"):
                role = sample.labels["role"]
                out[role] = out.get(role, 0) + sample.value
        return out

    sql("CREATE TABLE z (i int)")
    sql("INSERT INTO z VALUES (1)")
    wait_for("the row on the follower", lambda: sql("SELECT count(*) FROM z") == "1", 30)
    before = routed()
    assert [sql("SELECT count(*) FROM z") for _ in range(5)] == ["1"] * 5
    after = routed()
    # Fresh sessions' reads all went to the follower (in the proxy's zone), none to the
    # primary.
    assert after["follower"] - before["follower"] == 5, (before, after)
    assert after["primary"] == before["primary"], (before, after)
