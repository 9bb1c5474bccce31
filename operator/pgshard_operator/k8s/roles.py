"""Role labels on shard pods, from what each member's instance agent reports.

Called by ``reconcile.refresh`` on every status refresh: asks each pod's agent
(``GET http://<pod IP>:8008/status``) for its role and sets the pod's
``pgshard.io/role`` label to ``primary`` or ``replica`` (removed otherwise), so the
``-rw``/``-ro`` Services follow the members. The shard manager
(``platform/kubernetes.py``) changes roles through the agents and leaves the
labels to this module: after a promotion they follow within one refresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp

from .. import naming

AGENT_ROLES = {"primary": naming.Role.PRIMARY, "follower": naming.Role.REPLICA}
"""The agent's role names (``instance/agent.py``) that map to a pod label."""


async def observe(ip: str, timeout: float = 2.0) -> naming.Role | None:
    """The role the agent at ``ip`` reports; None when it is in no serving role or
    does not answer."""
    url = f"http://{ip}:{naming.STATUS_PORT}/status"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url) as response,
        ):
            doc = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError):
        return None
    return AGENT_ROLES.get(str(doc.get("role"))) if isinstance(doc, dict) else None


def label_patch(pod: Mapping[str, Any], role: naming.Role | None) -> dict[str, Any] | None:
    """The merge patch that makes the pod's role label say ``role`` (None: no change)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    wanted = role.value if role else None
    if labels.get(naming.ROLE_LABEL) == wanted:
        return None
    return {"metadata": {"labels": {naming.ROLE_LABEL: wanted}}}


async def observe_all(pods: list[dict[str, Any]]) -> list[naming.Role | None]:
    async def one(pod: dict[str, Any]) -> naming.Role | None:
        ip = (pod.get("status") or {}).get("podIP")
        return await observe(ip) if ip else None

    return list(await asyncio.gather(*(one(p) for p in pods)))
