"""Who may receive this member's replication credentials: the members of its shard.

``/repoint`` and ``/rejoin`` make the agent connect to the given host with the
replication (and, for a rewind, the superuser) password. Even with the control token
required, a host that is not a member of the shard is refused, so a wrong or forged
request can never hand a password to a stranger. Membership comes from the platform:
locally the cluster's topology file (this module), on Kubernetes the shard's pods
(``k8s/peers.py``). The bootstrap ``--upstream`` is a start flag, not a request, and
is not checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pgshard_proxy.contract import topology

from . import bootstrap


class Peers(Protocol):
    async def members(self) -> set[str]:
        """``host:port`` of every PostgreSQL server of this member's shard."""
        ...


class TopologyFilePeers:
    """The shard's members as the local topology file lists them (``DIR/topology.json``)."""

    def __init__(self, path: Path, shard: int) -> None:
        self.path = path
        self.shard = shard

    async def members(self) -> set[str]:
        try:
            s = topology.from_json(self.path.read_text()).shard(self.shard)
        except (OSError, ValueError, KeyError):
            return set()  # nothing known: nobody is a peer
        return {m.address for m in (s.primary, *s.followers) if m is not None}


class NotAPeer(Exception):
    """The requested upstream is not a member of this shard; nothing was sent to it."""


async def check(peers: Peers, up: bootstrap.Upstream) -> None:
    known = await peers.members()
    if up.address not in known:
        raise NotAPeer(
            f"{up.address} is not a member of this shard "
            f"(members: {', '.join(sorted(known)) or 'none known'}); credentials are only "
            "sent to members"
        )
