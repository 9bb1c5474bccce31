"""What every session of one proxy process shares: settings, pools, topology, keys.

Built by ``server.listener`` at start; sessions read the current topology from
it and borrow connections through it. The topology is replaced as a whole when
the topology source yields a new one (:meth:`ServerContext.set_topology`); when
something shows the current one is wrong (a primary that is read-only), the
source is asked to read it again at once (:meth:`ServerContext.doubt_topology`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .. import metrics
from ..consistency.monitor import PositionMonitor
from ..contract import topology
from ..execute import keytypes, statement_log
from ..pool import server_tls
from ..pool.backend import BackendError, Credentials
from ..pool.pool import FOLLOWER_EPOCH, PoolKey, Pools
from ..protocol import auth
from ..routing import classify
from ..settings import ProxySettings
from .cancel import CancelRegistry, CancelRelay
from .switch_buffer import SwitchBuffer

log = logging.getLogger(__name__)


class Closable(Protocol):
    def abort(self) -> None: ...
    def topology_changed(self) -> None: ...
    def activity(self) -> str:
        """``logging-in``, ``waiting`` (for a follower, a server or a topology),
        ``active`` (answers owed or a transaction open) or ``idle``: for metrics."""
        ...


class NoPrimary(BackendError):
    """The topology has no primary for the shard right now (failover in progress?)."""


class ServerContext:
    def __init__(
        self,
        settings: ProxySettings,
        ssl_context: ssl.SSLContext | None,
        monitor: PositionMonitor,
        refresh: Callable[[], None] = lambda: None,
        worker: int = 0,
        cancel_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.monitor = monitor
        self._refresh = refresh
        self._doubt: str | None = None
        self.background: set[asyncio.Task[None]] = set()
        """Tasks that outlive a session (closing its consistency state)."""
        self.ssl_context = ssl_context
        self.pools = Pools(
            max_size=settings.pool_size,
            connect_timeout=settings.connect_timeout,
            wait_timeout=settings.pool_timeout_ms / 1000,
            on_not_primary=self.doubt_topology,
        )
        self.cancel_keys = CancelRegistry(worker, alone=cancel_dir is None)
        self.cancels = CancelRelay(self.cancel_keys, cancel_dir)
        """Where a CancelRequest goes: this worker's session, or the worker named by its key."""
        self.topology: topology.Topology | None = None
        self._changed = asyncio.Event()
        # Deriving a SCRAM verifier costs 4096 PBKDF2 rounds: once, not per login.
        self._salt_key = auth.salt_key(u.secret() for u in settings.users.values())
        self.verifiers: dict[str, auth.ScramVerifier | None] = {
            name: user.verifier(auth.derived_salt(self._salt_key, name))
            for name, user in settings.users.items()
        }
        self.switch_buffer = SwitchBuffer(
            settings.buffer_window_ms,
            settings.buffer_max_requests,
            lambda: self.topology,
            self.topology_changed,
        )
        """Holds requests for a shard while its primary is switched over."""
        self.metrics = metrics.ProxyMetrics()
        self.metrics.attach(self, classify.cache_stats, self.switch_buffer.counts)
        self.bytes_in = 0
        self.bytes_out = 0
        """Bytes received from and sent to clients (sessions add to them; metrics read)."""
        self.sessions: set[Closable] = set()
        self.logins: dict[Closable, None] = {}
        """Sessions still logging in, oldest first (also in ``sessions``)."""
        self.key_types = keytypes.KeyTypes()
        """Key column types of distributed tables, shared by all sessions."""
        self.statement_log = statement_log.Shared(lambda: self.topology)
        """Statement replication: the rewriter and the shards' catalogs, for all sessions."""

    def scram_verifier(self, user: str) -> auth.ScramVerifier:
        """``user``'s SCRAM verifier, or a mock one with the salt a real one would show."""
        known = self.verifiers.get(user)
        if known is not None:
            return known
        return auth.ScramVerifier.mock(auth.derived_salt(self._salt_key, user))

    def client_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("logging-in", "waiting", "active", "idle"), 0)
        for session in self.sessions:
            counts[session.activity()] += 1
        return counts

    def server_counts(self) -> dict[tuple[str, str], int]:
        return self.pools.counts()

    def bytes_moved(self) -> tuple[int, int]:
        return self.bytes_in, self.bytes_out

    def zone(self) -> str | None:
        """The zone whose followers new sessions prefer: ``proxy.zone``, else (Kubernetes)
        the zone the topology gives this proxy's node (``status.nodeZones``)."""
        if self.settings.zone is not None or self.settings.node_name is None:
            return self.settings.zone
        return topology.node_zone(self.topology, self.settings.node_name)

    async def topology_changed(self) -> None:
        """Wait until the next topology arrives."""
        await self._changed.wait()

    async def topology_replaced(self, since: topology.Topology | None, timeout: float) -> bool:
        """Whether the topology is (or within ``timeout`` seconds becomes) another than
        ``since``."""
        if self.topology is not since:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self.topology_changed()
        except TimeoutError:
            return False
        return True

    def doubt_topology(self, reason: str) -> None:
        """The topology looks wrong (``reason``): have the source read it again now.
        Logged once per reason until a new topology arrives."""
        if reason != self._doubt:
            log.warning("%s; reading the topology again", reason)
            self._doubt = reason
        self._refresh()

    def set_topology(self, topo: topology.Topology) -> None:
        old = self.topology
        self._doubt = None
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
        if self.settings.zone is None and self.settings.node_name is not None:
            zone = topology.node_zone(topo, self.settings.node_name)
            if old is None or zone != topology.node_zone(old, self.settings.node_name):
                log.info(
                    "this proxy's zone is now %s (its node %s in the topology's nodeZones)",
                    zone or "none: reads prefer no zone",
                    self.settings.node_name,
                )
        if old is None or [s.epoch for s in old.shards] != [s.epoch for s in topo.shards]:
            shards = ", ".join(
                f"shard {s.index} epoch {s.epoch} primary {s.primary.name if s.primary else '-'}"
                for s in topo.shards
            )
            log.info("topology version %s: %s", topo.version, shards)
        switching = {s.index: s.switching for s in old.shards} if old else {}
        for s in topo.shards if self.settings.buffer_window_ms > 0 else ():
            if s.switching is not None and switching.get(s.index) != s.switching:
                log.info(
                    "shard %d is switching to %s: holding its new requests for the new "
                    "primary (bufferWindowMs %d)",
                    s.index,
                    s.switching.target,
                    self.settings.buffer_window_ms,
                )
        was = {s.index for s in old.shards if s.primary is None} if old else set()
        for s in topo.shards:
            if s.primary is None and s.index not in was:
                log.warning(
                    "shard %d has no primary right now (epoch %d): its writes wait up to "
                    "%gs for one, then fail with 57P03",
                    s.index, s.epoch, self.settings.failover_wait,
                )  # fmt: skip

    def shard(self, index: int = 0) -> topology.Shard:
        """Shard ``index`` of the current topology (0: home tables, new sessions)."""
        if self.topology is None or not self.topology.shards:
            raise NoPrimary("no topology yet: the proxy has not read the cluster's topology")
        try:
            return self.topology.shard(index)
        except KeyError:
            raise NoPrimary(f"shard {index} is not in the topology") from None

    def pool_key(
        self, member: topology.Member, database: str, epoch: int
    ) -> tuple[PoolKey, Credentials]:
        try:
            credentials = _credentials(member.dsn)
        except server_tls.TlsConfigError as e:
            raise BackendError(f"member {member.name}'s DSN: {e}") from None
        return PoolKey(member.name, member.address, database, epoch), credentials


@functools.lru_cache(maxsize=1024)
def _credentials(dsn: str) -> Credentials:
    """Parsed once per DSN: transaction pooling borrows a server per transaction."""
    return Credentials.from_dsn(dsn)
