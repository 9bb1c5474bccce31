"""An in-memory Platform and observer for the shard-manager loop tests (pure logic only).

The "world" is a dict of observations the fake observer returns; platform actions
change it the way the real platform would change PostgreSQL. The primary's agent is
simulated by renewing the lease on every snapshot read while the lease holder is
writable and not marked ``hung``.
"""

from __future__ import annotations

import asyncio
import dataclasses

from pgshard_operator.platform import base
from pgshard_operator.shard import state
from pgshard_proxy.contract import topology
from tests.unit.shard_fixtures import P, follower_obs, member, primary_obs


class FakePlatform:
    def __init__(self, names: tuple[str, ...] = ("p", "a", "b"), ttl: float = 10.0) -> None:
        self.ttl = ttl
        self.members = {n: member(n) for n in names}
        # Later followers are further ahead: with ("p", "a", "b"), b is the best candidate.
        self.obs: dict[str, state.MemberObservation] = {
            n: primary_obs(n, streaming=names[1:]) if i == 0 else follower_obs(n, 900 + 10 * i)
            for i, n in enumerate(names)
        }
        self.hung: set[str] = set()
        self.lease: state.Lease | None = state.Lease(names[0], 1, ttl)
        self.shard = topology.Shard(
            index=0,
            epoch=1,
            primary=topology.Member(name=names[0], address=f"{names[0]}.test:5432", dsn=""),
        )
        self.version = 1
        self.calls: list[tuple[float, str, str]] = []
        self.events: list[tuple[base.EventReason, str]] = []
        self.fail_snapshots = 0
        self.switching_seen: list[tuple[float, topology.Switching | None]] = []
        """(loop time, the published record's ``switching``) of every publish."""

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    # -- world manipulation by tests ---------------------------------------------------

    def hang(self, name: str) -> None:
        """SIGSTOP: the process is alive but neither answers nor renews its lease."""
        self.hung.add(name)
        self.obs[name] = state.MemberObservation.unreachable(
            name, state.ProcessState.ALIVE, "timeout"
        )

    def kill(self, name: str) -> None:
        """kill -9: the platform knows the process is gone."""
        self.members[name] = dataclasses.replace(
            self.members[name], process=state.ProcessState.GONE
        )
        self.obs[name] = state.MemberObservation.unreachable(
            name, state.ProcessState.GONE, "refused"
        )

    # -- Platform --------------------------------------------------------------------------

    async def read_snapshot(self) -> state.ShardSnapshot:
        if self.fail_snapshots:
            self.fail_snapshots -= 1
            raise base.PlatformError("store unavailable")
        lease = self.lease
        if lease is not None and lease.holder not in self.hung:
            holder = self.obs.get(lease.holder)
            if holder is not None and holder.ok and holder.in_recovery is False:
                self.lease = dataclasses.replace(lease, expires_at=self.now() + self.ttl)
        return state.ShardSnapshot(
            members=tuple(self.members.values()),
            shard=self.shard,
            version=str(self.version),
            lease=self.lease,
        )

    async def observe(
        self, name: str, dsn: str, timeout: float, process: state.ProcessState
    ) -> state.MemberObservation:
        return dataclasses.replace(self.obs[name], process=process)

    async def promote(self, member: str, epoch: int, replaces: state.Lease | None) -> None:
        if self.lease != replaces:
            raise base.PlatformConflict("lease changed")
        self.calls.append((self.now(), "promote", member))
        self.lease = state.Lease(member, epoch, self.now() + self.ttl)
        others = tuple(n for n in self.members if n != member)
        self.obs[member] = primary_obs(member, lsn=2000, streaming=others)

    async def fence(self, member: str) -> state.positions.Position | None:
        self.calls.append((self.now(), "fence", member))
        self.obs[member] = state.MemberObservation.unreachable(
            member, state.ProcessState.ALIVE, "stopped"
        )
        if self.lease is not None and self.lease.holder == member:
            self.lease = None
        return P(1000)

    async def repoint(self, member: str, primary: str) -> None:
        self.calls.append((self.now(), "repoint", member))
        self.obs[member] = dataclasses.replace(self.obs[member], upstream=f"{primary}.test:5432")

    async def rejoin(self, member: str, primary: str) -> state.RejoinResult:
        self.calls.append((self.now(), "rejoin", member))
        await asyncio.sleep(3)  # a rewind takes a while
        self.members[member] = dataclasses.replace(
            self.members[member], process=state.ProcessState.ALIVE
        )
        self.hung.discard(member)
        self.obs[member] = follower_obs(member, 2000, upstream=f"{primary}.test:5432")
        return state.RejoinResult(state.RejoinMethod.REWIND, P(1500), 4096)

    async def set_sync_standbys(self, member: str, value: str) -> None:
        self.calls.append((self.now(), "sync", member))
        self.obs[member] = dataclasses.replace(self.obs[member], sync_standby_names=value)

    async def publish_topology(self, shard: topology.Shard, expected_version: str) -> str:
        if expected_version != str(self.version):
            raise base.PlatformConflict("version changed")
        self.version += 1
        self.shard = shard
        self.switching_seen.append((asyncio.get_running_loop().time(), shard.switching))
        return str(self.version)

    async def record_event(self, reason: base.EventReason, message: str) -> None:
        self.events.append((reason, message))

    # -- helpers for assertions ---------------------------------------------------------------

    def when(self, what: str, member: str) -> list[float]:
        return [t for t, w, m in self.calls if w == what and m == member]
