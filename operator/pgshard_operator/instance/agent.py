"""The instance agent: one member's PostgreSQL, its role, its lease, its fencing.

Created by main.py; its public coroutines are what the HTTP endpoint (health.py)
exposes to the control plane (the local platform, later the operator): status,
promote, repoint, demote, rejoin, fence. The agent owns the member's role
(``Role``); the shard manager decides, the agent carries out and refuses what
would break the lease rule (never two primaries: a promotion first takes the
lease, a primary that cannot renew kills its server before the lease runs out).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from pathlib import Path
from typing import Any

from pgshard_proxy.contract import positions

from .. import proctree
from . import bootstrap, config, lease, postgres, rejoin, sql
from .credentials import Credentials
from .supervise import PostgresSupervisor

log = logging.getLogger(__name__)


class Role(enum.Enum):
    BOOTSTRAPPING = "bootstrapping"
    PRIMARY = "primary"
    FOLLOWER = "follower"
    FENCED = "fenced"
    """Was primary, lost (or could not renew) the lease: server killed, waiting to rejoin."""
    STALE = "stale"
    """PGDATA of a primary whose lease another member holds: not started, waiting to rejoin."""
    DEMOTED = "demoted"
    """Cleanly stopped for a switchover: waiting to rejoin under the new primary."""
    REJOINING = "rejoining"
    FAILED = "failed"


class AgentConflict(Exception):
    """A request that does not fit the member's current role (HTTP 409)."""


@dataclasses.dataclass(frozen=True)
class AgentSettings:
    name: str
    datadir: Path
    server: config.ServerSettings
    credentials: Path
    lease_ttl: float = 3.0
    bootstrap_primary: bool = False
    """Create PGDATA with initdb (the shard's first primary) instead of a snapshot."""
    upstream: bootstrap.Upstream | None = None
    """The primary to copy and follow when PGDATA must be created as a follower."""
    pg_log: Path = Path("/dev/null")
    hold_primary: bool = False
    """Do not serve as primary on start (the platform restarted a crashed primary):
    wait for ``rejoin`` even if the lease is still ours."""


_PROBE = """
SELECT pg_is_in_recovery() AS recovery,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END AS current,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END AS primary_tli,
       pg_last_wal_receive_lsn()::text AS received,
       pg_last_wal_replay_lsn()::text AS replayed,
       (SELECT timeline_id FROM pg_control_checkpoint()) AS checkpoint_tli,
       (SELECT status FROM pg_stat_wal_receiver) AS receiver,
       (SELECT received_tli FROM pg_stat_wal_receiver) AS receiver_tli,
       (SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver) AS upstream
"""


class Agent:
    def __init__(
        self, settings: AgentSettings, bins: postgres.Binaries, store: lease.LeaseStore
    ) -> None:
        self.s = settings
        self.bins = bins
        self.creds: Credentials = Credentials.load(settings.credentials)
        self.store = store
        self._held = lease.FREE
        """The lease record as last read or written (status reports it without a call)."""
        self.pg = PostgresSupervisor(
            bins, settings.datadir, settings.pg_log, may_restart=self._may_restart
        )
        self.role = Role.BOOTSTRAPPING
        self.error: str | None = None
        self._probe_conn: Any = None
        self._probe_lock = asyncio.Lock()
        self.valid_until = 0.0
        self._lock = asyncio.Lock()  # one role change at a time

    # -- life cycle ---------------------------------------------------------------

    async def prepare(self) -> None:
        """Kill a server left over by a dead agent, create PGDATA if needed, pick the role."""
        if (pid := postgres.postmaster_pid(self.s.datadir)) is not None:
            log.warning("killing postgres (pid %d) left running by a previous agent", pid)
            proctree.kill_tree(pid)
            await postgres.wait_postmaster_gone(self.s.datadir, pid)
        if not config.is_initialised(self.s.datadir):
            if self.s.bootstrap_primary:
                log.info("initdb: creating the first primary")
                await bootstrap.init_primary(
                    self.bins, self.s.datadir, self.s.server, self.creds, self.s.pg_log
                )
            elif self.s.upstream is not None:
                log.info("taking a snapshot of primary %s", self.s.upstream.address)
                await bootstrap.clone_follower(
                    self.bins, self.s.datadir, self.s.server, self.creds, self.s.upstream
                )
            else:
                raise bootstrap.BootstrapFailed(
                    f"{self.s.datadir} is empty and no primary was given to copy (--upstream)"
                )
        config.write_server_files(self.bins, self.s.datadir, self.s.server)
        if config.is_standby(self.s.datadir):
            self.role = Role.FOLLOWER
            await self.pg.start()
        elif not self.s.hold_primary and await self._take_lease():
            self.role = Role.PRIMARY
            await self.pg.start()
        else:
            self.role = Role.STALE
            log.warning(
                "PGDATA was a primary but %s: waiting to rejoin",
                "this member was restarted (--hold-primary)"
                if self.s.hold_primary
                else f"{(await self._read_lease()).holder} holds the lease",
            )

    async def run(self) -> None:
        """Supervise the server and keep the lease until cancelled."""
        await asyncio.gather(self.pg.run(), self._lease_loop())

    async def shutdown(self) -> None:
        """Clean stop (SIGTERM): fast shutdown, then hand the lease back."""
        if self._probe_conn is not None:
            self._probe_conn.terminate()
        await self.pg.stop()
        if self.role is Role.PRIMARY:
            try:
                await asyncio.wait_for(self.store.release(self.s.name, time.time()), 5)
            except Exception as e:  # it then simply expires
                log.warning("could not release the lease: %s", e)

    # -- the lease ------------------------------------------------------------------

    def _may_restart(self) -> bool:
        if self.role is Role.FOLLOWER:
            return True
        if self.role is Role.PRIMARY:
            # Nobody may take the lease before valid_until; the lease loop keeps renewing
            # it once the restarted server answers, or fences before it runs out.
            if time.time() < self.valid_until:
                return True
            self._fence("postgres crashed and the lease is no longer ours")
        return False

    async def _read_lease(self) -> lease.Lease:
        self._held = await asyncio.wait_for(self.store.read(), self._store_timeout)
        return self._held

    @property
    def _store_timeout(self) -> float:
        """A store call must not outlast a renewal period (then it counts as failed)."""
        return max(0.05, self.s.lease_ttl / 3)

    async def _take_lease(self, epoch: int | None = None) -> bool:
        try:
            got = await asyncio.wait_for(
                self.store.take(self.s.name, self.s.lease_ttl, time.time(), epoch),
                self._store_timeout,
            )
        except Exception as e:
            log.warning("could not take the lease: %s", e)
            return False
        if got is not None:
            self.valid_until = got.expires_at
            self._held = got
        return got is not None

    async def _lease_loop(self) -> None:
        period = max(0.05, self.s.lease_ttl / 3)
        while True:
            await asyncio.sleep(period)
            async with self._lock:
                if self.role is Role.PRIMARY:
                    await self._renew_or_fence(period)
                elif self.role is Role.FENCED:
                    await self._maybe_recover()

    async def _renew_or_fence(self, probe_timeout: float) -> None:
        if lease.must_fence(self.valid_until, time.time(), margin=0):
            # Woken after a stall (SIGSTOP, a frozen node) past the lease: another member
            # may be primary already, so stop before anything else.
            self._fence("the lease ran out while this agent was stalled")
            return
        healthy = False
        try:
            row = await asyncio.wait_for(self._probe(), probe_timeout)
            healthy = row is not None and not row["recovery"]
        except Exception as e:  # any failure to answer counts as unhealthy
            log.debug("primary probe failed: %s", e)
        if healthy:
            try:
                renewed = await asyncio.wait_for(
                    self.store.renew(self.s.name, self.s.lease_ttl, time.time()), probe_timeout
                )
            except Exception as e:  # the store is unreachable: fence only near expiry
                log.warning("could not renew the lease: %s", e)
            else:
                if renewed is not None:
                    self.valid_until = renewed.expires_at
                    self._held = renewed
                    return
                self._fence("the lease was taken by another member")
                return
        if lease.must_fence(self.valid_until, time.time(), margin=probe_timeout):
            why = "server unhealthy" if not healthy else "lease store unreachable"
            self._fence(f"{why}: could not renew the lease before it expires")

    async def _maybe_recover(self) -> None:
        """A fenced primary whose lease nobody took over serves again (e.g. after a stall)."""
        try:
            held = await self._read_lease()
        except Exception as e:
            log.debug("lease store unreachable: %s", e)
            return
        view = lease.classify(held, self.s.name, time.time())
        if (
            view in (lease.LeaseView.MINE, lease.LeaseView.MINE_EXPIRED)
            and await self._take_lease()
        ):
            log.warning("lease still ours and untaken: serving as primary again")
            self.role = Role.PRIMARY
            self.error = None
            await self.pg.start()

    def _fence(self, why: str) -> None:
        log.error("fencing: %s; killing postgres so it acknowledges no further write", why)
        self.pg.kill()
        self.role = Role.FENCED
        self.error = f"fenced: {why}"

    # -- observations ---------------------------------------------------------------

    async def _probe(self) -> Any:
        """One status query over a kept connection (a SCRAM login per probe costs CPU)."""
        async with self._probe_lock:
            if self._probe_conn is None or self._probe_conn.is_closed():
                self._probe_conn = await sql.connect(
                    self.s.server.host, self.s.server.port, self.creds
                )
            try:
                return await self._probe_conn.fetchrow(_PROBE)
            except BaseException:  # incl. cancellation by a timeout: the state is unknown
                conn, self._probe_conn = self._probe_conn, None
                conn.terminate()
                raise

    async def status(self) -> dict[str, Any]:
        row: Any = None
        error = self.error
        if self.pg.pid is not None:
            try:
                row = await asyncio.wait_for(self._probe(), 2.0)
            except Exception as e:
                error = error or f"postgres not answering: {e}"
        try:
            held = await self._read_lease()
        except Exception:  # report the last record known
            held = self._held
        doc: dict[str, Any] = {
            "name": self.s.name,
            "role": self.role.value,
            "address": f"{self.s.server.host}:{self.s.server.port}",
            "pgRunning": self.pg.pid is not None,
            "pgPid": self.pg.pid,
            "healthy": row is not None,
            "restarts": self.pg.restarts,
            "lease": {
                "holder": held.holder,
                "expiresIn": round(held.expires_at - time.time(), 3) if held.holder else None,
                "epoch": held.epoch,
            },
            "error": error,
        }
        if row is not None:
            doc.update(
                inRecovery=row["recovery"],
                timeline=row["primary_tli"] or row["receiver_tli"] or row["checkpoint_tli"],
                currentLsn=row["current"],
                receivedLsn=row["received"],
                replayedLsn=row["replayed"],
                walReceiver=row["receiver"],
                upstream=row["upstream"],
            )
            if row["received"] and row["replayed"]:
                # Received but not yet applied (e.g. recovery_min_apply_delay); the lag
                # behind the primary is computed by whoever also knows the primary's LSN.
                doc["replayLagBytes"] = max(
                    0, positions.parse_lsn(row["received"]) - positions.parse_lsn(row["replayed"])
                )
        return doc

    # -- role changes (called by the control plane) ---------------------------------

    async def promote(self, epoch: int | None) -> dict[str, Any]:
        async with self._lock:
            if self.role is not Role.FOLLOWER:
                raise AgentConflict(f"{self.s.name} is {self.role.value}, not a follower")
            if not await self._take_lease(epoch):
                held = await self._read_lease()
                raise AgentConflict(
                    f"lease held by {held.holder} for {held.expires_at - time.time():.1f}s more"
                )
            self.role = Role.PRIMARY
            conn = await sql.connect(self.s.server.host, self.s.server.port, self.creds)
            try:
                ok = await conn.fetchval("SELECT pg_promote(true, 30)")
                lsn = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
            finally:
                await conn.close()
            if not ok:
                raise AgentConflict("pg_promote() did not complete within 30s")
            log.info("promoted to primary at %s (epoch %s)", lsn, epoch)
            return {"promoted": True, "lsn": lsn}

    async def repoint(self, up: bootstrap.Upstream) -> dict[str, Any]:
        """Follow ``up`` from now on: slot there, new primary_conninfo, reload (no restart)."""
        async with self._lock:
            if self.role is not Role.FOLLOWER:
                raise AgentConflict(f"{self.s.name} is {self.role.value}; rejoin it instead")
            await bootstrap.ensure_slot(up, self.creds, self.s.name)
            info = bootstrap.replication_conninfo(up, self.creds, self.s.name)
            conn = await sql.connect(self.s.server.host, self.s.server.port, self.creds)
            try:
                await conn.execute(f"ALTER SYSTEM SET primary_conninfo = {config.quote(info)}")
                await conn.execute(
                    f"ALTER SYSTEM SET primary_slot_name = {config.quote(self.s.name)}"
                )
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()
            log.info("now following %s", up.address)
            return {"upstream": up.address}

    async def set_parameter(self, name: str, value: str) -> dict[str, Any]:
        """``ALTER SYSTEM SET name = value`` + reload (e.g. synchronous_standby_names)."""
        conn = await sql.connect(self.s.server.host, self.s.server.port, self.creds)
        try:
            await conn.execute(f'ALTER SYSTEM SET "{name}" = {config.quote(value)}')
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        return {name: value}

    async def fence(self) -> dict[str, Any]:
        """Acknowledge no further write: clean (fast) shutdown, so connected followers get
        all WAL first, then release the lease. Returns the end of WAL ("Latest checkpoint
        location") when known. A follower is left alone; a stopped member just reports."""
        async with self._lock:
            if self.role is Role.FOLLOWER:
                return {"role": self.role.value, "lsn": None}
            if self.role is Role.PRIMARY:
                self.role = Role.FENCED
                self.error = "fenced by the control plane"
                await self.pg.stop()
                try:
                    await asyncio.wait_for(
                        self.store.release(self.s.name, time.time()), self._store_timeout
                    )
                except Exception as e:  # harmless: it expires, and the server is down
                    log.warning("could not release the lease: %s", e)
            elif self.pg.pid is not None:
                self.pg.kill()
                await self.pg.stop()
            lsn = None
            state = await asyncio.to_thread(postgres.controldata, self.bins, self.s.datadir)
            if state.get("Database cluster state") == "shut down":
                lsn = state.get("Latest checkpoint location")
            log.info("fenced: server stopped (end of WAL %s), lease released", lsn)
            return {"role": self.role.value, "lsn": lsn}

    async def rejoin(self, up: bootstrap.Upstream) -> dict[str, Any]:
        """Become a follower of ``up``: stop, pg_rewind (or re-clone), start as standby."""
        async with self._lock:
            if self.role is Role.PRIMARY:
                raise AgentConflict(f"{self.s.name} is the lease-holding primary; fence it first")
            previous = self.role
            self.role = Role.REJOINING
            try:
                await self.pg.stop()
                if config.is_standby(self.s.datadir):
                    # Already a follower: just point it at the new primary.
                    result = rejoin.RejoinResult(rejoin.Method.RESTART, None, 0)
                    config.make_standby(
                        self.bins,
                        self.s.datadir,
                        bootstrap.replication_conninfo(up, self.creds, self.s.name),
                        self.s.name,
                    )
                    await bootstrap.ensure_slot(up, self.creds, self.s.name)
                else:
                    result = await rejoin.rejoin(
                        self.bins, self.s.datadir, self.s.server, self.creds, up
                    )
            except Exception as e:
                self.role = previous
                self.error = f"rejoin failed: {e}"
                raise
            self.role = Role.FOLLOWER
            self.error = None
            await self.pg.start()
            log.info("rejoined as follower of %s: %s", up.address, result.to_dict())
            return result.to_dict()
