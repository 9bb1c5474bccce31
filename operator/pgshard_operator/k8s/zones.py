"""The failure zone of the Nodes the cluster's pods run on (``topology.kubernetes.io/zone``).

One :class:`NodeZones` per operator, shared by the shard managers (each member's zone
in ``status.shards``, ``platform/kubernetes.py``) and the status refresh (the zones of
the proxy pods' nodes in ``status.nodeZones``, which a proxy reads its own from).
Nodes rarely change zone, so each Node is read at most once per ``ttl`` seconds (one
``get``: the operator needs ``get`` on ``nodes``, nothing more). A pod not scheduled yet,
a node without the label, or an operator that may not read Nodes: no zone. A refused
read is logged once, with the RBAC it needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .apply import Api, ApiError

log = logging.getLogger(__name__)

ZONE_LABEL = "topology.kubernetes.io/zone"

TTL_SECONDS = 300.0
"""How long a Node's zone (or its absence) is trusted before the Node is read again."""


def zone_of(node: Mapping[str, Any] | None) -> str | None:
    """The zone label of a Node object; None for a missing node or label."""
    labels = ((node or {}).get("metadata") or {}).get("labels") or {}
    zone = labels.get(ZONE_LABEL)
    return str(zone) if zone else None


def node_of(pod: Mapping[str, Any]) -> str | None:
    """The Node a pod is bound to; None while it is not scheduled."""
    return (pod.get("spec") or {}).get("nodeName") or None


class NodeZones:
    """Zones of Nodes by name, read lazily and cached for ``ttl`` seconds."""

    def __init__(
        self,
        api: Api,
        ttl: float = TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.ttl = ttl
        self._clock = clock
        self._known: dict[str, tuple[str | None, float]] = {}
        """Node name -> (zone, when it was read)."""
        self._warned: set[int] = set()

    async def zone(self, node: str | None) -> str | None:
        if not node:
            return None
        now = self._clock()
        cached = self._known.get(node)
        if cached is not None and now - cached[1] < self.ttl:
            return cached[0]
        try:
            obj = await self.api.get("Node", None, node)
        except ApiError as e:
            self._warn_once(e)
            if e.status in (401, 403):
                self._known[node] = (None, now)  # no permission: do not ask every cycle
                return None
            return cached[0] if cached is not None else None  # keep the last known zone
        zone = zone_of(obj)
        self._known[node] = (zone, now)
        return zone

    async def zones(self, nodes: Iterable[str | None]) -> dict[str, str]:
        """``{node: zone}`` for the given nodes that have one."""
        out = {}
        for node in set(nodes):
            if node and (zone := await self.zone(node)) is not None:
                out[node] = zone
        return out

    def _warn_once(self, e: ApiError) -> None:
        if e.status in self._warned:
            return
        self._warned.add(e.status)
        if e.status in (401, 403):
            log.warning(
                "cannot read Nodes (%s): members and proxies are published without a zone; "
                "give the operator's ServiceAccount 'get' on 'nodes' (a ClusterRole; the Helm "
                "chart has it) for zone-aware reads",
                e,
            )
        else:
            log.warning("cannot read a Node's zone now (%s); keeping the last known one", e)
