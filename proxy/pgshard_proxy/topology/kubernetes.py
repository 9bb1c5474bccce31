"""Follow a ShardedCluster's status on Kubernetes as the proxy's topology.

Used by ``pgshard-proxy`` in the proxy pods the operator creates
(``PGSHARD_TOPOLOGY=kubernetes``, ``PGSHARD_CLUSTER``, ``PGSHARD_NAMESPACE``). The
operator and the shard manager write the cluster's ``status`` in the topology
format of :mod:`pgshard_proxy.contract.topology`; this source watches it and
yields a new :class:`Topology` whenever it changes (an epoch bump after a
failover, a follower added). The status carries no passwords: member DSNs are
built here from the pod's application credentials (the Secret ``<name>-app``,
given to the pod as ``PGSHARD_APP_USER``/``PGSHARD_APP_PASSWORD``).

A source never raises for a bad document or a lost connection: it keeps the
last good topology, logs the problem once, and reconnects with a delay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio import watch as k8s_watch

from pgshard_proxy.contract import topology
from pgshard_proxy.contract.topology import Topology

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "pgshard.io", "v1alpha1", "shardedclusters"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """How the proxy logs in to every member (the cluster's application user)."""

    user: str
    password: str
    database: str

    def dsn(self, address: str) -> str:
        host, _, port = address.rpartition(":")
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{host}:{port}/{quote(self.database, safe='')}"
        )


def _with_dsn(member: Mapping[str, Any] | None, creds: Credentials) -> dict[str, Any] | None:
    if not member:
        return None
    out = dict(member)
    if not out.get("dsn") and out.get("address"):
        out["dsn"] = creds.dsn(str(out["address"]))
    return out


def from_status(status: Mapping[str, Any], creds: Credentials) -> Topology:
    """The topology in a ShardedCluster ``status``; raises :class:`topology.BadTopology`.

    Shards without a primary are kept (the proxy refuses writes to them until one is
    published); members get DSNs from ``creds``.
    """
    if not isinstance(status, Mapping) or not isinstance(status.get("shards"), list):
        raise topology.BadTopology("the ShardedCluster has no status.shards yet")
    shards = []
    for s in status["shards"]:
        if not isinstance(s, Mapping):
            raise topology.BadTopology("status.shards: every entry must be an object")
        entry = dict(s)
        if entry.get("primary"):
            entry["primary"] = _with_dsn(entry["primary"], creds)
        entry["followers"] = [_with_dsn(f, creds) for f in entry.get("followers") or ()]
        shards.append(entry)
    doc = {
        "version": status.get("topologyVersion", 0),
        "method": status.get("method", "wal"),
        "shards": shards,
    }
    return topology.from_dict(doc)


class KubernetesTopologySource:
    """A :class:`~.source.TopologySource` over one ShardedCluster's status."""

    def __init__(
        self,
        namespace: str,
        name: str,
        credentials: Credentials,
        *,
        retry_seconds: float = 2.0,
        watch_seconds: int = 60,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.credentials = credentials
        self.retry_seconds = retry_seconds
        self.watch_seconds = watch_seconds
        self._problem: str | None = None

    async def __aiter__(self) -> AsyncIterator[Topology]:
        last: Topology | None = None
        api_client = await _connect()
        try:
            api = k8s_client.CustomObjectsApi(api_client)
            while True:
                try:
                    async for obj in self._objects(api):
                        current = self._parse(obj, last)
                        if current is not None and current != last:
                            last = current
                            yield current
                except (k8s_client.ApiException, OSError, TimeoutError, ValueError) as e:
                    self._report(f"watching ShardedCluster {self.namespace}/{self.name}: {e}", last)
                await asyncio.sleep(self.retry_seconds)
        finally:
            await api_client.close()

    async def _objects(self, api: k8s_client.CustomObjectsApi) -> AsyncIterator[Mapping[str, Any]]:
        """The object now, then every change until the watch times out."""
        obj = await api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name
        )
        yield obj
        version = obj.get("metadata", {}).get("resourceVersion")
        async with k8s_watch.Watch() as w:
            async for event in w.stream(
                api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                field_selector=f"metadata.name={self.name}",
                resource_version=version,
                timeout_seconds=self.watch_seconds,
            ):
                if event.get("type") in ("ADDED", "MODIFIED"):
                    yield event["object"]

    def _parse(self, obj: Mapping[str, Any], last: Topology | None) -> Topology | None:
        try:
            current = from_status(obj.get("status") or {}, self.credentials)
        except topology.BadTopology as e:
            self._report(f"ShardedCluster {self.namespace}/{self.name}: {e}", last)
            return None
        if self._problem is not None:
            log.info("topology of %s/%s is valid again", self.namespace, self.name)
            self._problem = None
        return current

    def _report(self, message: str, last: Topology | None) -> None:
        if message != self._problem:
            action = "keeping the last good topology" if last else "waiting for a valid one"
            log.error("%s; %s", message, action)
            self._problem = message


async def _connect() -> k8s_client.ApiClient:
    """API access from the pod's service account, else ``$KUBECONFIG``."""
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        await k8s_config.load_kube_config()
    return k8s_client.ApiClient()
