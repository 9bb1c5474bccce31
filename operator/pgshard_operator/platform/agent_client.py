"""Requests to an instance agent's control endpoint, shared by both platforms.

The agent's side is ``instance/health.py``: ``GET /status`` and the POST routes
``/promote``, ``/fence``, ``/repoint``, ``/rejoin``, ``/parameter``. The shard
manager's platforms (``platform/local.py``, ``platform/kubernetes.py``) talk to
their members' agents only through :class:`AgentClient`. Each platform keeps its
own concerns: where a member's agent is (:class:`AgentRef`: the member's spec
locally, its pod IP on Kubernetes), the lease, and what to do when a request
fails (kill by pid locally, rely on the Lease on Kubernetes).

A member that serves TLS serves this API over HTTPS (``agent_tls.py``): its
:class:`AgentRef` has an ``https`` URL, and the client verifies the agent's
certificate against the cluster CA it was given (for ``AgentRef.server_name`` when
the certificate names the shard rather than the address connected to).

Every POST carries the cluster's control token (``control_token.py``); an agent
answers 401 without it. Every request is bounded (the timeouts below). An answer of
409 (the request does not fit the member's role) raises
:class:`base.PlatformConflict`; any other error answer, a refused or timed-out
connection, or an answer that is not JSON raises :class:`base.PlatformError` naming
the member and the route.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import aiohttp

from pgshard_proxy.contract import positions

from .. import agent_tls, control_token
from ..shard import state
from . import base

STATUS_TIMEOUT = 2.0
FENCE_TIMEOUT = 45.0
"""Agent-side clean stop is bounded by 30 s (then immediate); this bounds the request."""
ACTION_TIMEOUT = 45.0
PARAMETER_TIMEOUT = 10.0
"""ALTER SYSTEM + reload take milliseconds: a primary that does not answer in 10 s is
frozen or gone, and the manager must get back to noticing that (it retries next tick)."""
REJOIN_TIMEOUT = 1800.0
"""A re-clone copies the whole primary; bounded, but generously."""

_NO_ANSWER = (aiohttp.ClientError, TimeoutError, ValueError, OSError)
"""What a request to an agent that is down, frozen or not an agent raises (ValueError:
an answer that is not JSON)."""


@dataclasses.dataclass(frozen=True)
class AgentRef:
    """One member's agent, as its platform found it."""

    member: str
    """The member's name (in error messages)."""
    url: str
    """The agent endpoint's base URL, ``http://host:port`` (``https`` with TLS)."""
    server_name: str | None = None
    """With ``https``: the name the agent's certificate is verified for, when it is not
    the URL's host (Kubernetes: the shard's DNS name, the pod reached at its IP)."""


def upstream(address: str) -> dict[str, Any]:
    """The ``/repoint`` and ``/rejoin`` body for the primary at ``address`` (``host:port``)."""
    host, _, port = address.rpartition(":")
    return {"host": host, "port": int(port)}


class AgentClient:
    """The control API of the instance agents, over one shared HTTP session."""

    def __init__(
        self, http: aiohttp.ClientSession, token: str | None, ca_cert: Path | None = None
    ) -> None:
        """``token`` None: status reads only (a POST without the token is refused);
        ``ca_cert``: the cluster CA that ``https`` agents are verified against."""
        self.http = http
        self.headers = control_token.headers(token) if token is not None else {}
        self.ssl = agent_tls.client_ssl(ca_cert)

    async def status(self, agent: AgentRef) -> dict[str, Any] | None:
        """The agent's ``/status`` document; None when it does not answer in time."""
        try:
            async with self.http.get(
                agent.url + "/status",
                timeout=aiohttp.ClientTimeout(total=STATUS_TIMEOUT),
                ssl=self.ssl,
                server_hostname=agent.server_name,
            ) as r:
                doc = await r.json()
        except _NO_ANSWER:
            return None
        return doc if isinstance(doc, dict) else None

    async def promote(self, agent: AgentRef, epoch: int) -> None:
        await self._post(agent, "/promote", {"epoch": epoch}, ACTION_TIMEOUT)

    async def fence(self, agent: AgentRef) -> positions.Position | None:
        """Ask for a clean stop; the member's end of WAL (statement mode: its last log
        entry), if the agent knows it."""
        doc = await self._post(agent, "/fence", None, FENCE_TIMEOUT)
        lsn = doc.get("lsn")
        return positions.parse(lsn) if lsn is not None else None

    async def repoint(self, agent: AgentRef, primary_address: str) -> None:
        await self._post(agent, "/repoint", upstream(primary_address), ACTION_TIMEOUT)

    async def rejoin(self, agent: AgentRef, primary_address: str) -> state.RejoinResult:
        doc = await self._post(agent, "/rejoin", upstream(primary_address), REJOIN_TIMEOUT)
        return state.RejoinResult.from_agent(doc)

    async def set_parameter(self, agent: AgentRef, name: str, value: str) -> None:
        await self._post(agent, "/parameter", {"name": name, "value": value}, PARAMETER_TIMEOUT)

    async def _post(
        self, agent: AgentRef, path: str, body: dict[str, Any] | None, timeout: float
    ) -> dict[str, Any]:
        try:
            async with self.http.post(
                agent.url + path,
                json=body or {},
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                ssl=self.ssl,
                server_hostname=agent.server_name,
            ) as r:
                doc: dict[str, Any] = await r.json()
                if r.status == 409:
                    raise base.PlatformConflict(f"{agent.member}: {doc.get('error')}")
                if r.status != 200:
                    raise base.PlatformError(f"{agent.member}{path}: {doc.get('error', r.status)}")
                return doc
        except _NO_ANSWER as e:
            raise base.PlatformError(
                f"{agent.member}{path}: agent did not answer ({e!r})"
            ) from None
