"""``LocalPlatform``: the shard manager's Platform for ``pgshard local`` (one per shard).

Members are instance agents run by the local supervisor; actions are requests to
the agent's HTTP endpoint at the member's status port (platform/agent_client.py,
shared with the Kubernetes platform). The lease is ``DIR/leases/shard-I.json``
(compare-and-set under its lock, shared with the agents: instance/lease.py); the
shard record is this shard's entry in ``DIR/topology.json`` (local/topofile.py).

How the rules of ``platform/base.py`` are kept:

- ``ProcessState.GONE`` is reported when the member's agent process is dead and
  its PostgreSQL is not running, or its agent reports ``stale``/``demoted`` (a
  primary's data that waits for ``rejoin`` and will not serve on its own: the
  supervisor restarts a crashed primary's agent with ``--hold-primary``).
- The shard record's version covers only what the manager owns (epoch, primary,
  lastFailover): the supervisor's follower-state updates never make a manager's
  compare-and-set fail. Followers, their state, positions and DSNs (application
  credentials, never the superuser's) are filled in from the agents' reports.
- ``fence`` asks the agent for a clean stop; if the agent does not answer within
  the bound (e.g. it is frozen by SIGSTOP), the member's server is killed by pid
  and its lease released, so it acknowledges nothing when it wakes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from pgshard_proxy.contract import positions, topology

from .. import proctree
from ..instance import lease as lease_store
from ..instance import postgres
from ..instance.credentials import Credentials
from ..local import topofile, view
from ..local.layout import ClusterConfig, ClusterDir, MemberSpec
from ..shard import state
from . import base
from .agent_client import AgentClient, AgentRef

log = logging.getLogger(__name__)

_WAITING_ROLES = {"stale", "demoted"}


class LocalPlatform:
    def __init__(
        self,
        cdir: ClusterDir,
        cfg: ClusterConfig,
        creds: Credentials,
        shard: int,
        http: aiohttp.ClientSession,
        agent_alive: Callable[[str], bool],
        statuses: Callable[[], dict[str, dict[str, Any] | None]],
        token: str,
    ) -> None:
        self.cdir = cdir
        self.cfg = cfg
        self.creds = creds
        self.index = shard
        self.agents = AgentClient(http, token, cdir.agent_ca(cfg))
        self._agent_alive = agent_alive
        self._statuses = statuses
        self.members = {m.name: m for m in cfg.members(shard)}
        self.leases = lease_store.FileLeaseStore(cdir.lease(shard))
        # The record exactly as the manager last published it. The file holds the same
        # manager fields but member DSNs with application credentials and states from
        # the agents; handing the manager back its own record keeps its "did the
        # structure change?" check from republishing every cycle.
        self._published: topology.Shard | None = None

    def set_members(self, cfg: ClusterConfig) -> None:
        """The shard's membership changed (``pgshard local scale``): manage ``cfg``'s."""
        self.cfg = cfg
        self.members = {m.name: m for m in cfg.members(self.index)}

    # -- helpers ------------------------------------------------------------------

    def _spec(self, name: str) -> MemberSpec:
        try:
            return self.members[name]
        except KeyError:
            raise base.PlatformError(f"shard {self.index} has no member {name!r}") from None

    def _agent(self, name: str) -> AgentRef:
        return AgentRef(name, self._spec(name).status_url)

    def _process(self, name: str, doc: dict[str, Any] | None) -> state.ProcessState:
        if not self._agent_alive(name):
            pid = postgres.postmaster_pid(self.cdir.datadir(name))
            if pid is None or not proctree.alive(pid):  # a zombie counts as gone
                return state.ProcessState.GONE
            return state.ProcessState.UNKNOWN
        if doc is not None and doc.get("role") in _WAITING_ROLES and not doc.get("pgRunning"):
            return state.ProcessState.GONE
        return state.ProcessState.ALIVE

    # -- Platform -----------------------------------------------------------------

    async def read_snapshot(self) -> state.ShardSnapshot:
        topo = topofile.read(self.cdir)
        if topo is None:
            raise base.PlatformError(f"{self.cdir.topology} is missing")
        record = topo.shard(self.index)
        if self._published is not None and base.record_version(
            self._published
        ) == base.record_version(record):
            record = self._published
        statuses = self._statuses()
        members = []
        for spec in self.members.values():
            doc = statuses.get(spec.name)
            members.append(
                state.MemberInfo(
                    name=spec.name,
                    address=spec.address,
                    dsn=self.creds.superuser_dsn(spec.address),
                    process=self._process(spec.name, doc),
                    bootstrapping=doc is not None
                    and doc.get("role") in ("bootstrapping", "rejoining"),
                    zone=spec.zone,
                )
            )
        held = self.leases.read()
        lease = (
            state.Lease(holder=held.holder, epoch=held.epoch, expires_at=held.expires_at)
            if held.holder is not None
            else None
        )
        return state.ShardSnapshot(
            members=tuple(members), shard=record, version=base.record_version(record), lease=lease
        )

    async def promote(self, member: str, epoch: int, replaces: state.Lease | None) -> None:
        ttl = self.cfg.timings.lease_ttl
        new = lease_store.Lease(holder=member, expires_at=time.time() + ttl, epoch=epoch)
        expected = (
            lease_store.Lease(replaces.holder, replaces.expires_at, replaces.epoch)
            if replaces is not None
            else None
        )
        # In a thread: the lease file's lock is waited for (boundedly), never on the loop.
        if await asyncio.to_thread(self.leases.compare_and_set, expected, new) is None:
            cur = self.leases.read()
            if not (cur.holder == member and cur.epoch == epoch):
                raise base.PlatformConflict(
                    f"lease of shard {self.index} changed (now {cur.holder} at epoch {cur.epoch})"
                )
        try:
            await self.agents.promote(self._agent(member), epoch)
        except base.PlatformConflict:
            doc = self._statuses().get(member) or {}
            if doc.get("role") != "primary":
                raise

    async def fence(self, member: str) -> positions.Position | None:
        try:
            return await self.agents.fence(self._agent(member))
        except base.PlatformError as e:
            log.warning("%s did not fence itself (%s): killing its server", member, e)
            if (pid := postgres.postmaster_pid(self.cdir.datadir(member))) is not None:
                proctree.kill_tree(pid)
            await asyncio.to_thread(self.leases.release, member)
            return None

    async def repoint(self, member: str, primary: str) -> None:
        await self.agents.repoint(self._agent(member), self._spec(primary).address)

    async def rejoin(self, member: str, primary: str) -> state.RejoinResult:
        deadline = time.monotonic() + 30
        # The supervisor restarts dead agents; wait until this one answers its endpoint.
        while not (self._agent_alive(member) and self._statuses().get(member) is not None):
            if time.monotonic() > deadline:
                raise base.PlatformError(f"{member}'s agent is not running")
            await asyncio.sleep(0.2)
        return await self.agents.rejoin(self._agent(member), self._spec(primary).address)

    async def set_sync_standbys(self, member: str, value: str) -> None:
        await self.agents.set_parameter(self._agent(member), "synchronous_standby_names", value)

    async def publish_topology(self, shard: topology.Shard, expected_version: str) -> str:
        written: list[topology.Shard] = []

        def change(topo: topology.Topology) -> topology.Topology | None:
            current = topo.shard(self.index)
            if base.record_version(current) != expected_version:
                raise base.PlatformConflict(
                    f"shard {self.index}'s record changed since it was read"
                )
            merged = view.build_shard(
                shard, list(self.members.values()), self._statuses(), self.creds, topo.method
            )
            written.append(merged)
            if view.shape(merged) == view.shape(current):
                return None  # nothing a reader of the file would notice
            return topofile.replace_shard(topo, merged)

        await asyncio.to_thread(topofile.update, self.cdir, change)
        self._published = shard
        return base.record_version(written[0])

    async def record_event(self, reason: base.EventReason, message: str) -> None:
        log.info("shard %d: %s: %s", self.index, reason.value, message)
