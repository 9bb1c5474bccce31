"""The members of a shard on Kubernetes: its pods' IPs (see ``instance/peers.py``).

The instance agent asks the API server (its service account may list pods) for the
pods of its own shard, by the shard's label selector, each time it is asked to
stream from somewhere: pod IPs change when pods are recreated.
"""

from __future__ import annotations

from .. import naming
from .apply import Api


class ShardPods:
    def __init__(self, api: Api, namespace: str, cluster: str, shard: int) -> None:
        self.api = api
        self.namespace = namespace
        self.selector = naming.label_selector(naming.shard_selector(cluster, shard))

    async def members(self) -> set[str]:
        pods = await self.api.list("Pod", self.namespace, self.selector)
        ips = ((p.get("status") or {}).get("podIP") for p in pods)
        return {f"{ip}:{naming.PG_PORT}" for ip in ips if ip}
