"""``bench/switchover.py --kube``: the switchover comparison on the test control plane.

Starts the local control plane (tests/kube), installs the chart (operator running this
checkout) and creates one ShardedCluster (one shard, two followers, ``sync``) with the
default ``proxy.bufferWindowMs``. Its proxy Deployment holds requests during a
switchover; a copy of that Deployment made here, with ``PGSHARD_PROXY_BUFFER_WINDOW_MS=0``
and a Service of its own, follows the same cluster's status, so both proxies see the
same switchovers (a second ShardedCluster would switch at other moments, on other
pods). Four writers go through each proxy's Service; ``pgshard switchover --kube``
switches over; the held requests come from each proxy pod's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from typing import Any
from urllib.parse import urlsplit

from tests.e2e.helpers import get, operator_namespace, ready_pods, wait_for
from tests.kube import cluster
from tests.support import crd, procs

from bench.switchover import Proxy, compare
from pgshard_operator import naming

NAME = "bench"
SPEC = crd.FAST_FAILOVER
UNBUFFERED = f"{NAME}-proxy-unbuffered"


def healthy(kube: cluster.Cluster, ns: str) -> dict[str, Any] | None:
    """Shard 0's status once it has a primary and two streaming followers."""
    status = get(kube, "shardedcluster", "-n", ns, NAME).get("status") or {}
    s: dict[str, Any] = (status.get("shards") or [{}])[0]
    streaming = [f for f in s.get("followers") or () if f.get("state") == "streaming"]
    ok = s.get("primary") and len(streaming) == 2 and status.get("phase") == "Ready"
    return s if ok and not s.get("switching") else None


def unbuffered_proxy(kube: cluster.Cluster, ns: str) -> None:
    """A copy of the cluster's proxy Deployment that does not hold requests, with a
    Service of its own (another component label: the cluster's Service does not pick
    it). Owned by the ShardedCluster like the original."""
    dep = get(kube, "deployment", "-n", ns, naming.proxy_deployment(NAME))
    labels = {**dep["spec"]["selector"]["matchLabels"], naming.COMPONENT_LABEL: UNBUFFERED}
    template = dep["spec"]["template"]
    template["metadata"] = {"labels": labels}
    (container,) = template["spec"]["containers"]
    env = [e for e in container["env"] if e["name"] != "PGSHARD_PROXY_BUFFER_WINDOW_MS"]
    container["env"] = [*env, {"name": "PGSHARD_PROXY_BUFFER_WINDOW_MS", "value": "0"}]
    owners = dep["metadata"]["ownerReferences"]
    meta = {"name": UNBUFFERED, "namespace": ns, "labels": labels, "ownerReferences": owners}
    service = get(kube, "service", "-n", ns, naming.proxy_service(NAME))
    items = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"selector": labels, "ports": service["spec"]["ports"]},
        },
    ]
    kube.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                       "items": items}))  # fmt: skip


def proxy(
    kube: cluster.Cluster, ns: str, key: str, component: str, service: str, password: str
) -> Proxy:
    """The proxy whose pods carry ``component``: ``service``'s DSN, its pod's metrics."""
    selector = {**naming.cluster_selector(NAME), naming.COMPONENT_LABEL: component}
    query = ",".join(f"{k}={v}" for k, v in selector.items())
    (pod,) = wait_for(f"a Ready {component} pod", lambda: ready_pods(kube, ns, query, 1), 120, 1)
    ip = get(kube, "service", "-n", ns, service)["spec"]["clusterIP"]
    metrics = f"http://{pod['status']['podIP']}:{naming.PROXY_METRICS_PORT}/metrics"
    return Proxy(key, f"postgresql://app:{password}@{ip}:5432/app", metrics)


async def bench(kube: cluster.Cluster, ns: str, switchovers: int) -> None:
    doc = crd.cluster(SPEC, name=NAME)
    doc["metadata"]["namespace"] = ns
    kube.kubectl("apply", "-f", "-", input=json.dumps(doc))
    await asyncio.to_thread(wait_for, "a Ready cluster", lambda: healthy(kube, ns), 300, 2)
    secret = get(kube, "secret", "-n", ns, f"{NAME}-app")["data"]
    password = urlsplit(base64.b64decode(secret["uri"]).decode()).password or ""
    unbuffered_proxy(kube, ns)
    component = naming.Component.PROXY.value
    on = await asyncio.to_thread(
        proxy, kube, ns, "on", component, naming.proxy_service(NAME), password
    )
    off = await asyncio.to_thread(proxy, kube, ns, "off", UNBUFFERED, UNBUFFERED, password)

    async def settled() -> str:
        s = await asyncio.to_thread(wait_for, "a healthy shard", lambda: healthy(kube, ns), 300, 1)
        return str(s["primary"]["name"])

    async def switch() -> None:
        await asyncio.to_thread(
            subprocess.run,
            procs.pgshard_argv("switchover", "--kube", "--cluster", NAME, "-n", ns, "--shard", "0"),
            env=procs.env(KUBECONFIG=str(kube.kubeconfig)),
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip

    await compare("switchover bench, Kubernetes", switchovers, (on, off), settled, switch)


def main(switchovers: int) -> None:
    with cluster.temporary("pgshard-kube-bench-") as kube, operator_namespace(kube, "bench") as ns:
        asyncio.run(bench(kube, ns, switchovers))
