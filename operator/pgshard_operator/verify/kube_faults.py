"""Faults ``pgshard verify --kube`` injects on a ShardedCluster, and where its endpoints are.

* ``kill``: the primary's pod deleted with grace period 0 (its processes get SIGKILL,
  no shutdown); the StatefulSet re-creates it on the same volume and it rejoins;
* ``switchover``: the ``pgshard.io/switchover`` annotation, ``pgshard switchover
  --kube``'s code path (a refusal, e.g. a follower still catching up, is retried);
* ``partition``: the primary's pod cut off from the API server and the operator by two
  NetworkPolicies (``partition_policies``) until the shard failed over, then healed
  (deleted) so the old primary rejoins. Needs a network plugin that enforces
  NetworkPolicy egress (the test node does, tests/kube/agent/policies.py).

``stop`` (a frozen primary) would need exec into the pod to send SIGSTOP; verify
refuses it with ``--kube`` (``UNAVAILABLE``). The shard is read from
the cluster's ``status`` as the operator publishes it (``status.shards[i]`` and
``status.managers[i]``), the same fields ``local status --json`` shows. Needs the
optional "kube" packages, so ``command.py`` imports it only with ``--kube``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from .. import naming
from ..cli import CommandError
from ..k8s import switchover_request
from ..k8s.apply import Api, secret_data
from ..k8s.network import OPERATOR_POD_LABELS
from .faults import Faults, Kind, Unsettled

UNAVAILABLE = {
    "stop": "freezing a pod needs exec into it (SIGSTOP of its processes), which verify "
    "does not do",
}
VERIFY_LABEL = f"{naming.GROUP}/verify"
"""On the partition's NetworkPolicies: the cluster they cut (to find leftovers by hand)."""
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
"""Set by the StatefulSet controller on each of its pods."""
"""Faults refused with ``--kube``, and why."""


class SetupError(Exception):
    """The cluster, its Service or its Secrets are missing or unusable."""


@dataclasses.dataclass
class KubeFaults(Faults):
    api: Api
    namespace: str
    cluster: str
    shard: int = 0
    settle_timeout: float = 120.0

    async def cluster_obj(self) -> dict[str, Any]:
        obj = await self.api.get(naming.KIND, self.namespace, self.cluster)
        if obj is None:
            raise SetupError(f"no ShardedCluster {self.cluster!r} in namespace {self.namespace!r}")
        return obj

    async def shard_doc(self) -> dict[str, Any]:
        obj = await self.cluster_obj()
        entry = switchover_request.shard_entry(obj, self.shard)
        managers = (obj.get("status") or {}).get("managers") or {}
        return {
            "epoch": int(entry.get("epoch") or 0),
            "primary": entry.get("primary") or None,
            "followers": list(entry.get("followers") or ()),
            "lastFailover": entry.get("lastFailover"),
            "manager": managers.get(str(self.shard)) or {},
        }

    async def followers_expected(self) -> int:
        spec = (await self.cluster_obj()).get("spec") or {}
        return int(spec.get("replicasPerShard") or 0)

    async def fault(self, kind: Kind, primary: str, epoch: int) -> None:
        if kind is Kind.KILL:
            pod = switchover_request.pod_name(primary)
            await self.api.delete("Pod", self.namespace, pod, grace_seconds=0)
        elif kind is Kind.SWITCHOVER:
            await self._switchover()
        elif kind is Kind.PARTITION:
            await self._partition(switchover_request.pod_name(primary), epoch)
        else:
            raise ValueError(f"{kind.value} is not available with --kube")

    async def _switchover(self) -> None:
        args = argparse.Namespace(
            cluster=self.cluster, shard=self.shard, to=None, timeout=self.settle_timeout
        )
        deadline = time.monotonic() + self.settle_timeout
        while True:
            try:
                outcome = await switchover_request.request(self.api, args, self.namespace)
                if outcome.ok:
                    return
                problem = outcome.message
            except CommandError as e:
                problem = str(e)
            if time.monotonic() > deadline:
                raise Unsettled(f"switchover of shard {self.shard} failed: {problem}")
            await asyncio.sleep(1.0)

    async def _partition(self, pod: str, epoch: int) -> None:
        """Cut ``pod`` off until the shard's epoch moved past ``epoch``, then heal."""
        ip = ((await self.api.get("Pod", self.namespace, pod) or {}).get("status") or {}).get(
            "podIP"
        )
        selector = ",".join(f"{k}={v}" for k, v in OPERATOR_POD_LABELS.items())
        operators = await self.api.list("Pod", None, selector)
        if not ip or not operators:
            raise Unsettled(
                f"cannot partition {pod}: "
                + ("it has no IP" if not ip else f"no operator pod ({selector}) to cut it from")
            )
        spaces = sorted({str(o["metadata"]["namespace"]) for o in operators})
        policies = partition_policies(self.namespace, self.cluster, pod, ip, spaces)
        try:
            for policy in policies:
                meta = policy["metadata"]
                await self.api.delete("NetworkPolicy", meta["namespace"], meta["name"])
                await self.api.create(policy)
            await self._until(lambda s: int(s["epoch"]) > epoch, "failed over")
        finally:
            for policy in policies:
                meta = policy["metadata"]
                await self.api.delete("NetworkPolicy", meta["namespace"], meta["name"])

    async def proxy_dsn(self, address: str | None) -> str:
        """The app's URI from its Secret, pointed at ``address`` (default: the proxy
        Service's ClusterIP and port 5432)."""
        uri = (await self._secret(naming.app_secret(self.cluster))).get("uri")
        if not uri:
            raise SetupError(f"Secret {naming.app_secret(self.cluster)} has no 'uri'")
        if address is None:
            name = naming.proxy_service(self.cluster)
            service = await self.api.get("Service", self.namespace, name)
            ip = ((service or {}).get("spec") or {}).get("clusterIP")
            if not ip or ip == "None":
                raise SetupError(f"Service {name!r} in {self.namespace!r} has no ClusterIP")
            address = f"{ip}:{naming.PG_PORT}"
        return _with_host(uri, address)

    async def primary_dsn(self, app_dsn: str) -> str:
        """The superuser at the primary's pod IP (the final state is read there)."""
        shard = await self.shard_doc()
        if shard["primary"] is None:
            raise Unsettled(f"shard {self.shard} has no primary to read the final state from")
        pod_name = switchover_request.pod_name(shard["primary"]["name"])
        pod = await self.api.get("Pod", self.namespace, pod_name) or {}
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            raise Unsettled(f"the primary's pod {pod_name} has no IP")
        password = (await self._secret(naming.internal_secret(self.cluster))).get(
            "superuser-password"
        )
        if not password:
            raise SetupError(f"Secret {naming.internal_secret(self.cluster)} has no password")
        return _with_host(app_dsn, f"{ip}:{naming.PG_PORT}", ("postgres", password))

    async def _secret(self, name: str) -> dict[str, str]:
        secret = await self.api.get("Secret", self.namespace, name)
        if secret is None:
            raise SetupError(f"no Secret {name!r} in namespace {self.namespace!r}")
        return secret_data(secret)


def partition_policies(
    namespace: str, cluster: str, pod: str, ip: str, operator_namespaces: list[str]
) -> list[dict[str, Any]]:
    """The primary's pod may send only to the cluster's own pods (followers, proxies):
    not to the API server (its Lease), not to the operator, not to DNS; the operator's
    pods may send anywhere but to the pod's IP (NetworkPolicies only allow, and the
    shard's own policy lets the operator in, so its egress is the side to cut)."""
    labels = {VERIFY_LABEL: cluster}
    host = f"{ip}/128" if ":" in ip else f"{ip}/32"
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": f"{cluster}-verify-partition",
                "namespace": namespace,
                "labels": labels,
            },
            "spec": {
                "podSelector": {"matchLabels": {POD_NAME_LABEL: pod}},
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"podSelector": {"matchLabels": naming.cluster_selector(cluster)}}]}
                ],
            },
        },
        *(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": f"pgshard-verify-partition-{namespace}-{cluster}"[:253],
                    "namespace": space,
                    "labels": labels,
                },
                "spec": {
                    "podSelector": {"matchLabels": OPERATOR_POD_LABELS},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": _everything(ip), "except": [host]}}]}],
                },
            }
            for space in operator_namespaces
        ),
    ]


def _everything(ip: str) -> str:
    return "::/0" if ":" in ip else "0.0.0.0/0"


def _with_host(uri: str, address: str, user: tuple[str, str] | None = None) -> str:
    parts = urlsplit(uri)
    userinfo = parts.netloc.rpartition("@")[0]
    if user is not None:
        userinfo = f"{quote(user[0], safe='')}:{quote(user[1], safe='')}"
    netloc = f"{userinfo}@{address}" if userinfo else address
    return urlunsplit(parts._replace(netloc=netloc))
