"""Role labels on shard pods, from what each member's instance agent reports.

Called by ``reconcile.refresh`` on every status refresh: asks each pod's agent
(``GET http://<pod IP>:8008/status``; ``https`` verified with the cluster CA for the
shard's DNS name when the cluster serves TLS, ``agent_tls.py``) for its role and sets the pod's
``pgshard.io/role`` label to ``primary`` or ``replica`` (removed otherwise), so the
``-rw``/``-ro`` Services follow the members. The shard manager
(``platform/kubernetes.py``) changes roles through the agents and leaves the
labels to this module: after a promotion they follow within one refresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from .. import naming
from ..platform import agent_client
from ..platform import kubernetes as kube_platform
from . import tls
from .objects import ClusterRef

AGENT_ROLES = {"primary": naming.Role.PRIMARY, "follower": naming.Role.REPLICA}
"""The agent's role names (``instance/agent.py``) that map to a pod label."""


def role_of(status: Mapping[str, Any] | None) -> naming.Role | None:
    """The pod label for an agent's ``/status`` document; None when the member is in no
    serving role or its agent did not answer."""
    return AGENT_ROLES.get(str(status.get("role"))) if status else None


def label_patch(pod: Mapping[str, Any], role: naming.Role | None) -> dict[str, Any] | None:
    """The merge patch that makes the pod's role label say ``role`` (None: no change)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    wanted = role.value if role else None
    if labels.get(naming.ROLE_LABEL) == wanted:
        return None
    return {"metadata": {"labels": {naming.ROLE_LABEL: wanted}}}


async def observe_all(
    pods: list[dict[str, Any]], cluster: ClusterRef, ca_cert: Path | None
) -> list[naming.Role | None]:
    """The role each pod's agent reports, asked all at once over one HTTP session;
    ``ca_cert``: the cluster CA when the cluster serves TLS."""
    async with aiohttp.ClientSession() as http:
        agents = agent_client.AgentClient(http, None, ca_cert)

        async def one(pod: dict[str, Any]) -> naming.Role | None:
            ip = (pod.get("status") or {}).get("podIP")
            if not ip:
                return None
            name = None
            if ca_cert is not None:
                shard = int(pod["metadata"]["labels"][naming.SHARD_LABEL])
                name = tls.shard_server_name(cluster.name, cluster.namespace, shard)
            ref = kube_platform.agent_ref(pod["metadata"]["name"], ip, name)
            return role_of(await agents.status(ref))

        return list(await asyncio.gather(*(one(p) for p in pods)))
