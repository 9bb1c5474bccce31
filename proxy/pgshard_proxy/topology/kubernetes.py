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

How stale the view can be is bounded: the watch only speeds changes up. Every
``resync_seconds`` (and at once when the proxy doubts its view, :meth:`refresh`)
the source reads the object again and starts a new watch from it, so a lost watch
event or a stream that hangs without a word (issue 15: a proxy kept writing to a
re-created pod that came back as a follower) costs at most one resync period.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, cast
from urllib.parse import quote, urlencode

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio import watch as k8s_watch

from pgshard_proxy.contract import topology
from pgshard_proxy.contract.topology import Topology
from pgshard_proxy.pool.backend import detect_dead_peer

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "pgshard.io", "v1alpha1", "shardedclusters"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """How the proxy logs in to every member (the cluster's application user)."""

    user: str
    password: str
    database: str
    root_cert: str | None = None
    """The cluster CA: members are verified against it (``sslmode=verify-full``)."""
    server_name: str | None = None
    """With ``root_cert``: the name a shard's members are verified for (``{shard}``: the
    shard's index), connecting to their addresses (``hostaddr``, ``contract.pgtls``)."""

    def dsn(self, address: str, shard: int = 0) -> str:
        host, _, port = address.rpartition(":")
        query: dict[str, str] = {}
        if self.root_cert is not None and self.server_name is not None:
            query["hostaddr"] = host.strip("[]")
            host = self.server_name.format(shard=shard)
        if self.root_cert is not None:
            query |= {"sslmode": "verify-full", "sslrootcert": self.root_cert}
        tail = "?" + urlencode(query, safe="/") if query else ""
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{host}:{port}/{quote(self.database, safe='')}{tail}"
        )


def _with_dsn(
    member: Mapping[str, Any] | None, creds: Credentials, shard: int
) -> dict[str, Any] | None:
    if not member:
        return None
    out = dict(member)
    if not out.get("dsn") and out.get("address"):
        out["dsn"] = creds.dsn(str(out["address"]), shard)
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
        index = entry.get("index")
        shard = index if isinstance(index, int) else 0
        if entry.get("primary"):
            entry["primary"] = _with_dsn(entry["primary"], creds, shard)
        entry["followers"] = [_with_dsn(f, creds, shard) for f in entry.get("followers") or ()]
        shards.append(entry)
    doc = {
        "version": status.get("topologyVersion", 0),
        "method": status.get("method", "wal"),
        "statementAcks": status.get("statementAcks") or 0,
        "shards": shards,
        "sharding": status.get("sharding") or {},
        # The zones of the proxies' nodes (the operator's status refresh writes them).
        "nodeZones": status.get("nodeZones"),
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
        resync_seconds: float = 3.0,
        request_timeout: float = 5.0,
        refresh_spacing: float = 0.2,
        connect: Callable[[], Awaitable[k8s_client.ApiClient]] | None = None,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.credentials = credentials
        self.retry_seconds = retry_seconds
        self.resync_seconds = resync_seconds
        """Longest time between two reads of the object, whatever the watch says."""
        self.request_timeout = request_timeout
        """Bound on one read of the object."""
        self.refresh_spacing = refresh_spacing
        """Shortest time between two reads that :meth:`refresh` asks for."""
        self._connect = connect or _connect
        self._problem: str | None = None
        self._doubted = False
        self._read_at = -math.inf
        self._watching: asyncio.Timeout | None = None

    def refresh(self) -> None:
        """Read the object again now (not before ``refresh_spacing`` after the last read):
        the proxy has reason to doubt its view, e.g. its primary turned out read-only."""
        self._doubted = True
        if self._watching is not None and not self._watching.expired():
            loop = asyncio.get_running_loop()
            self._watching.reschedule(max(loop.time(), self._read_at + self.refresh_spacing))

    async def __aiter__(self) -> AsyncIterator[Topology]:
        last: Topology | None = None
        api_client = await self._connect()
        try:
            api = k8s_client.CustomObjectsApi(api_client)
            while True:
                try:
                    async for obj in self._objects(api):
                        current = self._parse(obj, last)
                        if current is not None and current != last:
                            last = current
                            yield current
                except (
                    k8s_client.ApiException,
                    aiohttp.ClientError,  # e.g. a watch stream cut mid-event
                    OSError,
                    TimeoutError,
                    ValueError,
                ) as e:
                    self._report(f"watching ShardedCluster {self.namespace}/{self.name}: {e}", last)
                    await asyncio.sleep(self.retry_seconds)
        finally:
            await api_client.close()

    async def _objects(self, api: k8s_client.CustomObjectsApi) -> AsyncIterator[Mapping[str, Any]]:
        """The object now, then every change the watch reports until the next resync
        (or a :meth:`refresh`). Nothing is awaited while an object is being yielded, so
        the deadline never interrupts the consumer."""
        loop = asyncio.get_running_loop()
        self._doubted = False
        self._read_at = loop.time()
        async with asyncio.timeout(self.request_timeout):
            obj = await api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name
            )
        yield obj
        if self._doubted:
            return
        version = obj.get("metadata", {}).get("resourceVersion")
        async with k8s_watch.Watch() as w:
            events = w.stream(
                api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                field_selector=f"metadata.name={self.name}",
                resource_version=version,
                timeout_seconds=math.ceil(self.resync_seconds) + 1,
            )
            while True:
                try:
                    async with asyncio.timeout_at(self._read_at + self.resync_seconds) as t:
                        self._watching = t
                        event = await anext(events, None)
                except TimeoutError:
                    return  # time for a fresh read (a stalled stream ends here too)
                finally:
                    self._watching = None
                if event is None:
                    return
                if event.get("type") in ("ADDED", "MODIFIED"):
                    yield event["object"]
                if self._doubted:
                    return

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
    return api_client()


def _dead_peer_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    detect_dead_peer(sock)
    return sock


def api_client(configuration: k8s_client.Configuration | None = None) -> k8s_client.ApiClient:
    """An API client whose connections notice an API server host that vanished (no FIN,
    no RST): TCP keepalive and TCP_USER_TIMEOUT, as on the proxy's server connections.
    The resync deadline already bounds staleness; this frees a dead watch's connection."""
    client = k8s_client.ApiClient(configuration)
    rest = client.rest_client
    plain = rest.pool_manager
    built = cast(aiohttp.TCPConnector, plain.connector)
    # kubernetes_asyncio builds its aiohttp session without a way to set socket options:
    # the same session again, with a connector whose sockets detect a dead peer.
    connector = aiohttp.TCPConnector(
        limit=built.limit,
        ssl=built._ssl,  # the context it built from the configuration
        socket_factory=_dead_peer_socket,
    )
    rest.pool_manager = aiohttp.ClientSession(
        connector=connector, trust_env=plain.trust_env, read_bufsize=2**21
    )
    plain.detach()  # nothing was connected through it; its connector is not ours to close
    return client
