"""What every session of one proxy process shares: settings, pools, topology, keys.

Built by ``server.listener`` at start; sessions read the current topology from
it and borrow connections through it. The topology is replaced as a whole when
the topology source yields a new one (:meth:`ServerContext.set_topology`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Protocol

from ..consistency.monitor import PositionMonitor
from ..contract import topology
from ..pool.backend import BackendError, Credentials
from ..pool.pool import FOLLOWER_EPOCH, PoolKey, Pools
from ..protocol import auth
from ..settings import ProxySettings
from .cancel import CancelRegistry

log = logging.getLogger(__name__)


class Closable(Protocol):
    def abort(self) -> None: ...
    def topology_changed(self) -> None: ...


class NoPrimary(BackendError):
    """The topology has no primary for the shard right now (failover in progress?)."""


class ServerContext:
    def __init__(
        self,
        settings: ProxySettings,
        ssl_context: ssl.SSLContext | None,
        monitor: PositionMonitor,
    ) -> None:
        self.settings = settings
        self.monitor = monitor
        self.background: set[asyncio.Task[None]] = set()
        """Tasks that outlive a session (closing its consistency state)."""
        self.ssl_context = ssl_context
        self.pools = Pools(max_size=settings.pool_size, connect_timeout=settings.connect_timeout)
        self.cancel_keys = CancelRegistry()
        self.topology: topology.Topology | None = None
        self._changed = asyncio.Event()
        # Deriving a SCRAM verifier costs 4096 PBKDF2 rounds: once, not per login.
        self.verifiers: dict[str, auth.ScramVerifier | None] = {
            name: user.verifier() for name, user in settings.users.items()
        }
        self.sessions: set[Closable] = set()

    async def topology_changed(self) -> None:
        """Wait until the next topology arrives."""
        await self._changed.wait()

    def set_topology(self, topo: topology.Topology) -> None:
        old = self.topology
        self.topology = topo
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        # A new epoch retires the old primary's pool at once: nothing borrowed from
        # it afterwards, and connections still lent out close when returned.
        keep = {(s.primary.name, s.primary.address, s.epoch) for s in topo.shards if s.primary}
        keep |= {(f.name, f.address, FOLLOWER_EPOCH) for s in topo.shards for f in s.followers}
        self.pools.retire(keep)
        # Sessions leave an old primary now, not on their next request: one that stopped
        # answering (frozen, unreachable) would otherwise hold their requests forever.
        for session in list(self.sessions):
            session.topology_changed()
        if old is None or [s.epoch for s in old.shards] != [s.epoch for s in topo.shards]:
            shards = ", ".join(
                f"shard {s.index} epoch {s.epoch} primary {s.primary.name if s.primary else '-'}"
                for s in topo.shards
            )
            log.info("topology version %s: %s", topo.version, shards)

    def shard(self) -> topology.Shard:
        """The shard sessions use (the first: key-based sharding is not routed yet)."""
        if self.topology is None or not self.topology.shards:
            raise NoPrimary("no topology yet: the proxy has not read the cluster's topology")
        return self.topology.shards[0]

    def pool_key(
        self, member: topology.Member, database: str, epoch: int
    ) -> tuple[PoolKey, Credentials]:
        return PoolKey(member.name, member.address, database, epoch), Credentials.from_dsn(
            member.dsn
        )
