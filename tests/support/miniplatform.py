"""A minimal Platform over plain test servers, to run the shard core against real PostgreSQL.

It drives real servers (``pgserver.PgServer``) with real SQL for promotion,
repointing and synchronous_standby_names, keeps the lease and the shard record in
memory, and stands in for the primary's instance agent by renewing the lease while
the holder's postmaster is alive. It cannot rejoin (that needs the instance agent):
``rejoin`` raises. The real implementation is ``pgshard_operator.platform.local``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time

import asyncpg

from pgshard_operator.instance import postgres
from pgshard_operator.platform import base
from pgshard_operator.shard import state
from pgshard_proxy.contract import positions, topology

from .pgserver import PgServer


class MiniPlatform:
    def __init__(self, servers: dict[str, PgServer], primary: str, ttl: float = 5.0) -> None:
        self.servers = servers
        self.ttl = ttl
        self.gone: set[str] = set()
        self.lease: state.Lease | None = state.Lease(primary, 1, time.time() + ttl)
        p = servers[primary]
        self.shard = topology.Shard(
            index=0,
            epoch=1,
            primary=topology.Member(name=primary, address=f"{p.host}:{p.port}", dsn=p.dsn),
        )
        self.version = 1
        self.events: list[tuple[base.EventReason, str]] = []
        self.promoted: list[str] = []

    def kill(self, name: str) -> None:
        """kill -9 of the member's postmaster; the platform knows it is gone."""
        proc = self.servers[name].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.gone.add(name)

    async def read_snapshot(self) -> state.ShardSnapshot:
        lease = self.lease
        if lease is not None and lease.holder not in self.gone:
            self.lease = dataclasses.replace(lease, expires_at=time.time() + self.ttl)
        members = tuple(
            state.MemberInfo(
                name=n,
                address=f"{s.host}:{s.port}",
                dsn=s.dsn,
                process=state.ProcessState.GONE if n in self.gone else state.ProcessState.ALIVE,
            )
            for n, s in self.servers.items()
        )
        return state.ShardSnapshot(members, self.shard, str(self.version), self.lease)

    async def _sql(self, member: str, query: str) -> object:
        conn = await asyncpg.connect(self.servers[member].dsn, timeout=10)
        try:
            return await conn.fetchval(query, timeout=60)
        finally:
            await conn.close()

    async def promote(self, member: str, epoch: int, replaces: state.Lease | None) -> None:
        if self.lease != replaces:
            raise base.PlatformConflict(f"lease is {self.lease}, expected {replaces}")
        self.lease = state.Lease(member, epoch, time.time() + self.ttl)
        if not await self._sql(member, "SELECT pg_promote(true, 30)"):
            raise base.PlatformError(f"pg_promote on {member} did not finish")
        self.promoted.append(member)

    async def fence(self, member: str) -> positions.Position | None:
        """Clean (fast) shutdown, then the shutdown checkpoint's location from pg_controldata:
        a follower that replayed past it holds everything the member wrote."""
        server = self.servers[member]
        await asyncio.to_thread(server.stop)
        if self.lease is not None and self.lease.holder == member:
            self.lease = None
        self.gone.add(member)
        bins = postgres.Binaries.detect()
        out = await bins.run_async("pg_controldata", str(server.datadir), timeout=30)
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        if fields.get("Database cluster state", "").strip() != "shut down":
            return None  # not a clean shutdown: its end of WAL is unknown
        return positions.parse_lsn(fields["Latest checkpoint location"])

    async def repoint(self, member: str, primary: str) -> None:
        p = self.servers[primary]
        conninfo = f"host={p.host} port={p.port} user={p.user} application_name={member}"
        await self._sql(member, f"ALTER SYSTEM SET primary_conninfo = '{conninfo}'")
        await self._sql(member, "SELECT pg_reload_conf()")

    async def rejoin(self, member: str, primary: str) -> state.RejoinResult:
        raise base.PlatformError("the test platform cannot rejoin members")

    async def set_sync_standbys(self, member: str, value: str) -> None:
        await self._sql(member, f"ALTER SYSTEM SET synchronous_standby_names = {_literal(value)}")
        await self._sql(member, "SELECT pg_reload_conf()")

    async def publish_topology(self, shard: topology.Shard, expected_version: str) -> str:
        if expected_version != str(self.version):
            raise base.PlatformConflict(f"version is {self.version}, not {expected_version}")
        self.version += 1
        self.shard = shard
        return str(self.version)

    async def record_event(self, reason: base.EventReason, message: str) -> None:
        self.events.append((reason, message))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
