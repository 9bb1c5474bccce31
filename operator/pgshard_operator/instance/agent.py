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
import contextlib
import dataclasses
import enum
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import asyncpg

from pgshard_proxy.contract import positions, topology
from pgshard_proxy.contract import statement_log as slog

from .. import proctree
from . import (
    applier,
    bootstrap,
    bypass,
    config,
    lease,
    logtrim,
    peers,
    postgres,
    rejoin,
    sql,
    statement_roles,
    timeline,
    wallclock,
)
from .credentials import Credentials
from .supervise import PostgresSupervisor

log = logging.getLogger(__name__)

_FOLLOWERS = """
SELECT application_name,
       (pg_current_wal_lsn() - replay_lsn)::bigint AS lag_bytes,
       extract(epoch FROM replay_lag)::float8 AS lag_seconds
FROM pg_stat_replication WHERE state = 'streaming'
"""


_PROMOTE_WAIT = 40.0
"""Longest a promotion may keep its lease renewed: pg_promote(true, 30) plus a margin
(a server that stops answering would otherwise hold the shard's lease forever)."""


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
    statement_mode: bool = False
    """``statement`` replication: followers are copies by dump that run the applier."""
    tls_server_name: str | None = None
    """With ``server.tls``: verify members' certificates for this name, not their
    addresses (``--tls-server-name``; the shard's DNS name on Kubernetes)."""


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
        self,
        settings: AgentSettings,
        bins: postgres.Binaries,
        store: lease.LeaseStore,
        members: peers.Peers,
    ) -> None:
        self.s = settings
        self.peers = members
        self.bins = bins
        tls = settings.server.tls
        self.creds: Credentials = Credentials.load(settings.credentials).with_tls(
            tls.ca_cert if tls is not None else None, settings.tls_server_name
        )
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
        self._log_conn: Any = None
        """Statement mode: kept connection to the application database (positions)."""
        self.applier: applier.Applier | None = None
        self._applier_task: asyncio.Task[None] | None = None
        self._source: bootstrap.Upstream | None = None
        """Statement mode: the primary whose log the applier applies."""
        self._recopy_task: asyncio.Task[None] | None = None
        self.bypass = bypass.Watch()
        """Statement mode, as primary: writes that bypassed the proxy (bypass.py)."""
        self.foreign = bypass.Watch(follower=True)
        """Statement mode, as follower: writes that did not come from the applier."""
        self.valid_until = 0.0
        """The lease's wall-clock expiry as the store recorded it (reported in status)."""
        self.deadline = lease.Deadline(
            settings.lease_ttl, lease.fence_margin(settings.lease_ttl), self._deadline_reached
        )
        self._fenced_by_control_plane = False
        self._lock = asyncio.Lock()  # one role change at a time
        self.progress = bootstrap.Progress()
        """The snapshot copy of a member bootstrapped as a follower (metrics)."""

    # -- life cycle ---------------------------------------------------------------

    async def prepare(self) -> None:
        """Kill a server left over by a dead agent, create PGDATA if needed, pick the role.

        Holds the role lock: the control endpoint already answers (status, metrics) while
        a bootstrap copy runs, and a role change must not work on the same PGDATA."""
        async with self._lock:
            await self._prepare()

    async def _prepare(self) -> None:
        if (pid := postgres.postmaster_pid(self.s.datadir)) is not None:
            log.warning("killing postgres (pid %d) left running by a previous agent", pid)
            proctree.kill_tree(pid)
            await postgres.wait_postmaster_gone(self.s.datadir, pid)
        if not config.is_initialised(self.s.datadir):
            if self.s.bootstrap_primary:
                log.info("initdb: creating the first primary")
                await bootstrap.init_primary(
                    self.bins,
                    self.s.datadir,
                    self.s.server,
                    self.creds,
                    self.s.pg_log,
                    statement_log=self.s.statement_mode,
                )
            elif self.s.upstream is not None and self.s.statement_mode:
                log.info("copying primary %s from an exported snapshot", self.s.upstream.address)
                pos = await bootstrap.copy_follower(
                    self.bins,
                    self.s.datadir,
                    self.s.server,
                    self.creds,
                    self.s.upstream,
                    self.s.pg_log,
                )
                log.info("copy done at log position %d", pos)
            elif self.s.upstream is not None:
                log.info("taking a snapshot of primary %s", self.s.upstream.address)
                await bootstrap.clone_follower(
                    self.bins,
                    self.s.datadir,
                    self.s.server,
                    self.creds,
                    self.s.upstream,
                    self.progress,
                )
            else:
                raise bootstrap.BootstrapFailed(
                    f"{self.s.datadir} is empty and no primary was given to copy (--upstream)"
                )
        config.write_server_files(self.bins, self.s.datadir, self.s.server)
        if config.is_standby(self.s.datadir):
            self.role = Role.FOLLOWER
            await self.pg.start()
        elif config.is_statement_follower(self.s.datadir):
            if self.s.upstream is None:
                raise bootstrap.BootstrapFailed(
                    f"{self.s.name} is a statement-mode follower but no primary was given "
                    "to apply the log of (--upstream)"
                )
            statement_roles.pin_upstream(self.bins, self.s.datadir, self.s.upstream)
            self.role = Role.FOLLOWER
            await self.pg.start()
            self._start_applier(self.s.upstream)
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
        loops = [self.pg.run(), self._lease_loop()]
        if self.s.statement_mode:
            loops.append(self._log_loop())
        await asyncio.gather(*loops)

    async def shutdown(self) -> None:
        """Clean stop (SIGTERM): fast shutdown, then hand the lease back."""
        recopy, self._recopy_task = self._recopy_task, None
        await _cancelled(recopy)
        await self._stop_applier()
        writes = None
        if self.role is Role.PRIMARY and self.s.statement_mode:
            writes = await self._drain_log()
        for conn in (self._probe_conn, self._log_conn):
            if conn is not None:
                conn.terminate()
        await self._stop_server(writes)
        if self.role is Role.PRIMARY:
            try:
                await asyncio.wait_for(self.store.release(self.s.name, wallclock.now()), 5)
            except Exception as e:  # it then simply expires
                log.warning("could not release the lease: %s", e)

    async def _stop_server(self, writes: statement_roles.WritesStopped | None) -> None:
        """Stop PostgreSQL; the shard's write lock (``writes``, statement mode) is let go
        only once it is down, so no writer waiting for it commits past the handover."""
        try:
            await self.pg.stop()
        finally:
            if writes is not None:
                writes.release()

    async def _drain_log(self) -> statement_roles.WritesStopped | None:
        """Statement mode: no logged commit after this, and a follower applies the last
        entry before the server stops (``stop_writes`` waits for it, as for a
        switchover), so a failover after a deleted pod or ``local down`` promotes one
        that has every acknowledged write. The lock is the caller's to release once the
        server is down."""
        host, port = self.s.server.host, self.s.server.port
        try:
            # The lock (terminating a writer after 3 s), then the follower's pull; bounded
            # even when the server stops answering.
            return await asyncio.wait_for(
                statement_roles.stop_writes(host, port, self.creds),
                statement_roles.HANDOVER_SECONDS + 10,
            )
        except Exception as e:  # stopping goes on: the followers may then miss entries
            log.warning("could not hand the statement log over before stopping: %s", e)
            return None

    # -- the lease ------------------------------------------------------------------

    def _may_restart(self) -> bool:
        if self.role is Role.FOLLOWER:
            return True
        if self.role is Role.PRIMARY:
            # Nobody may take the lease before it runs out; the lease loop keeps renewing
            # it once the restarted server answers, or fences before it runs out.
            if not self.deadline.passed():
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
        sent_at = asyncio.get_running_loop().time()
        try:
            got = await asyncio.wait_for(
                self.store.take(self.s.name, self.s.lease_ttl, wallclock.now(), epoch),
                self._store_timeout,
            )
        except Exception as e:
            log.warning("could not take the lease: %s", e)
            return False
        if got is not None:
            self.valid_until = got.expires_at
            self._held = got
            self.deadline.granted(sent_at)
        return got is not None

    async def _lease_loop(self) -> None:
        period = max(0.05, self.s.lease_ttl / 3)
        while True:
            await asyncio.sleep(self._renewal_pause(period))
            async with self._lock:
                if self.role is Role.PRIMARY:
                    await self._renew_or_fence(period)
                elif self.role is Role.FENCED:
                    await self._maybe_recover()

    def _renewal_pause(self, period: float) -> float:
        """A primary renews ``period`` after its last granted renewal was *sent*, so a slow
        store (a loaded API server) does not push the next attempt past the deadline; a
        failed attempt is retried after a tenth of the period. Others wait a period."""
        if self.role is not Role.PRIMARY or not self.deadline.until:
            return period
        next_at = self.deadline.until - self.s.lease_ttl + period
        return min(period, max(period / 10, next_at - asyncio.get_running_loop().time()))

    def _deadline_reached(self) -> None:
        """The lease was not renewed in time: stop before it can run out (a timer, so it
        fires on time whatever the renewal loop is waiting for)."""
        if self.role is Role.PRIMARY:
            self._fence(
                f"the lease was not renewed within {self.s.lease_ttl - self.deadline.margin:g}s"
            )

    async def _renew_or_fence(self, probe_timeout: float) -> None:
        if self.deadline.passed(margin=0):
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
            loop = asyncio.get_running_loop()
            sent_at = loop.time()
            # Wait for the store as long as its answer can still keep the lease: the
            # deadline's timer fences at the fence point whatever this call is doing.
            budget = max(probe_timeout, self.deadline.until - self.deadline.margin - sent_at)
            try:
                renewed = await asyncio.wait_for(
                    self.store.renew(self.s.name, self.s.lease_ttl, wallclock.now()), budget
                )
            except Exception as e:  # the store is unreachable: fence only near expiry
                log.warning("could not renew the lease: %s", e)
            else:
                if renewed is not None and self.role is Role.PRIMARY:
                    self.valid_until = renewed.expires_at
                    self._held = renewed
                    self.deadline.granted(sent_at)
                    return
                if renewed is not None:  # fenced by the deadline while renewing
                    return
                self._fence("the lease was taken by another member")
                return
        if self.deadline.passed():
            why = "server unhealthy" if not healthy else "lease store unreachable"
            self._fence(f"{why}: could not renew the lease before it expires")

    async def _maybe_recover(self) -> None:
        """A primary that fenced itself serves again only while its lease is still its own
        and unexpired (``lease.may_recover``): e.g. a store that was unreachable for a
        moment. Never after the control plane fenced it, nor after the lease ran out."""
        try:
            held = await self._read_lease()
        except Exception as e:
            log.debug("lease store unreachable: %s", e)
            return
        if (
            lease.may_recover(
                held,
                self.s.name,
                wallclock.now(),
                self.deadline.margin,
                by_control_plane=self._fenced_by_control_plane,
            )
            and await self._take_lease()
        ):
            log.warning("lease still ours and untaken: serving as primary again")
            self.role = Role.PRIMARY
            self.error = None
            await self.pg.start()

    def _fence(self, why: str) -> None:
        log.error("fencing: %s; stopping postgres so it acknowledges no further write", why)
        # Half the margin: the kill lands before the lease ends even when the fast
        # shutdown cannot start (a frozen postmaster still has backends committing).
        self.pg.fence(grace=self.deadline.margin / 2)
        self.role = Role.FENCED
        self.deadline.cancel()
        self.error = f"fenced: {why}"

    # -- statement mode ---------------------------------------------------------------

    def _app_dsn(self, host: str, port: int) -> str:
        return self.creds.superuser_dsn(f"{host}:{port}", self.creds.app_database)

    def _applies_log_of(self, up: bootstrap.Upstream) -> bool:
        a = self.applier
        return (
            self.role is Role.FOLLOWER
            and a is not None
            and a.source_dsn == self._app_dsn(up.host, up.port)
            and a.state is not applier.State.DIVERGED
            and self._applier_task is not None
            and not self._applier_task.done()
        )

    async def _streams_from(self, up: bootstrap.Upstream) -> bool:
        """A WAL follower pointed at ``up`` and streaming from it on ``up``'s timeline.

        It came back (or never left) before a rejoin the manager decided while it looked
        gone reached it: restarting it would only take it away for a while. A follower
        that replayed past the fork cannot stream on the new timeline, so it is not
        mistaken for one that can."""
        if self.s.statement_mode or self.role is not Role.FOLLOWER or self.pg.pid is None:
            return False
        try:
            row = await asyncio.wait_for(self._probe(), 5.0)
            rows = await asyncio.wait_for(self._query("SHOW primary_conninfo"), 5.0)
            tli, _ = await timeline.primary_history(up, self.creds)
        except Exception as e:  # not provable now: rejoin as asked
            log.info("could not tell whether it already streams from %s: %s", up.address, e)
            return False
        wanted = bootstrap.replication_conninfo(up, self.creds, self.s.name)
        return (
            row is not None
            and row["receiver"] == "streaming"
            and row["receiver_tli"] == tli
            and rows[0][0] == wanted
        )

    async def _held_wal(self, primary_tli: int | None = None) -> int | None:
        """How far a running WAL follower's WAL goes (received or replayed, whichever is
        further); None when not a running follower, when unknown, or when it streams on
        timeline ``primary_tli`` already (its WAL past the fork is then that timeline's)."""
        if self.s.statement_mode or self.role is not Role.FOLLOWER or self.pg.pid is None:
            return None
        try:
            row = await asyncio.wait_for(self._probe(), 5.0)
        except Exception as e:  # unknown: the control file's check still applies
            log.info("could not read how much WAL it holds: %s", e)
            return None
        if row is None or not row["recovery"]:
            return None
        if primary_tli is not None and row["receiver_tli"] == primary_tli:
            return None
        lsns = [positions.parse_lsn(row[k]) for k in ("received", "replayed") if row[k]]
        return max(lsns) if lsns else None

    def _start_applier(self, up: bootstrap.Upstream) -> None:
        self._source = up
        self.applier = applier.Applier(
            self.s.name,
            self._app_dsn(self.s.server.host, self.s.server.port),
            self._app_dsn(up.host, up.port),
            address=f"{self.s.server.host}:{self.s.server.port}",
        )
        self._applier_task = asyncio.ensure_future(self._apply(self.applier))

    async def _apply(self, a: applier.Applier) -> None:
        """Run the applier. One that found this follower ahead of its primary (entries of
        a former primary the current one never had), or behind what the primary still
        keeps, is repaired at once by a new copy of the current primary, as the manager's
        rejoin of an old primary would."""
        await a.run()
        if a.divergence is not None and a.divergence.recopy:
            self._copy_again(a.divergence.error)

    def _recopying(self) -> bool:
        return self._recopy_task is not None and not self._recopy_task.done()

    async def _watch_follower(self, conn: Any) -> None:
        """A statement follower written by anyone but its applier (read-only turned off by
        hand) no longer matches its primary, whatever its applier says: it is stopped as
        diverged (the proxy stops reading from it) and copied again."""
        try:
            found = await self.foreign.check(conn)
        except asyncpg.PostgresError:
            return  # in its status (logged once); tried again next period
        a = self.applier
        if not found or a is None or self.role is not Role.FOLLOWER:
            return
        error = (
            f"{found} transaction(s) wrote {', '.join(self.foreign.last_tables)} on this "
            f"follower, not through its applier (last: {self.foreign.last_xid}): it no "
            "longer matches its primary; it is copied again"
        )
        async with self._lock:  # not while a promotion or a rejoin is under way
            if self.role is not Role.FOLLOWER or self.applier is not a:
                return
            await self._stop_applier()
            a.stopped_diverged(error)
        self._copy_again(error)

    def _copy_again(self, why: str) -> None:
        """In the background: replace this diverged follower by a new copy of the primary
        it applied the log of (a rejoin, as the manager would ask for)."""
        up = self._source
        if up is None:
            return
        log.warning("applier: %s (%s)", why, up.address)
        self._recopy_task = asyncio.ensure_future(self._recopy(up))

    async def _recopy(self, up: bootstrap.Upstream) -> None:
        try:
            result = await self.rejoin(up)
        except Exception as e:  # reported as diverged; a rejoin by the manager can retry
            log.error("copying %s again failed: %s", up.address, e)
            return
        log.info("copied %s again: %s", up.address, result)

    async def _stop_applier(self) -> None:
        task, self._applier_task = self._applier_task, None
        await _cancelled(task)

    async def _log_loop(self) -> None:
        """Statement mode, every period. While primary: look for writes that bypassed the
        proxy (bypass.py), trim the log (logtrim.py). While follower: look for writes that
        did not come from the applier. Each failure is retried next time."""
        conn: Any = None
        conn_role: Role | None = None
        try:
            while True:
                await asyncio.sleep(logtrim.PERIOD_SECONDS)
                role = self.role
                watched = role is Role.PRIMARY or (
                    role is Role.FOLLOWER and self.applier is not None and not self._recopying()
                )
                if not watched or self.pg.pid is None:
                    continue
                try:
                    if conn is not None and (conn.is_closed() or conn_role is not role):
                        conn.terminate()
                        conn = None
                    if conn is None:
                        conn = await sql.connect(
                            self.s.server.host,
                            self.s.server.port,
                            self.creds,
                            database=self.creds.app_database,
                        )
                        conn_role = role
                        # Making the slot waits for running transactions: not forever.
                        await conn.execute("SET statement_timeout = '20s'")
                        if role is Role.PRIMARY:
                            await conn.execute(slog.SCHEMA_SQL)  # a log made before trimming
                    if role is Role.FOLLOWER:
                        await self._watch_follower(conn)
                        continue
                    with contextlib.suppress(asyncpg.PostgresError):  # kept in its status
                        await self.bypass.check(conn)
                    await logtrim.trim_primary(
                        conn,
                        self.s.name,
                        await self.peers.members(),
                        f"{self.s.server.host}:{self.s.server.port}",
                    )
                except Exception as e:
                    log.warning("statement log upkeep failed: %s", e)
                    if conn is not None:
                        conn.terminate()
                        conn = None
        finally:
            if conn is not None:
                conn.terminate()

    async def _log_position(self) -> int:
        """This member's statement log position (the highest ``seq`` in its log)."""
        async with self._probe_lock:
            if self._log_conn is None or self._log_conn.is_closed():
                self._log_conn = await sql.connect(
                    self.s.server.host,
                    self.s.server.port,
                    self.creds,
                    database=self.creds.app_database,
                )
            try:
                return int(await self._log_conn.fetchval(slog.POSITION_SQL))
            except BaseException:
                conn, self._log_conn = self._log_conn, None
                conn.terminate()
                raise

    # -- observations ---------------------------------------------------------------

    async def _probe(self) -> Any:
        """One status query over a kept connection (a SCRAM login per probe costs CPU)."""
        rows = await self._query(_PROBE)
        return rows[0] if rows else None

    async def _query(self, query: str) -> list[Any]:
        async with self._probe_lock:
            if self._probe_conn is None or self._probe_conn.is_closed():
                self._probe_conn = await sql.connect(
                    self.s.server.host, self.s.server.port, self.creds
                )
            try:
                return list(await self._probe_conn.fetch(query))
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
                "expiresIn": round(held.expires_at - wallclock.now(), 3) if held.holder else None,
                "epoch": held.epoch,
            },
            "error": error,
        }
        if self.progress.directory is not None and not self.progress.finished:
            # A follower's snapshot copy under way (local progress displays show it).
            doc["bootstrap"] = {
                "copiedBytes": await asyncio.to_thread(self.progress.copied),
                "totalBytes": self.progress.total,
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
            if self.s.statement_mode:
                doc["method"] = "statement"
                if self.applier is not None and self.role is Role.FOLLOWER:
                    doc["applier"] = self.applier.status()
                    doc["position"] = self.applier.applied
                    doc["foreignWrites"] = self.foreign.status()
                else:
                    if self.role is Role.PRIMARY:
                        doc["bypass"] = self.bypass.status()
                    try:
                        doc["position"] = await asyncio.wait_for(self._log_position(), 2.0)
                    except Exception as e:
                        doc["error"] = error or f"statement log not readable: {e}"
            if row["received"] and row["replayed"]:
                # Received but not yet applied (e.g. recovery_min_apply_delay); the lag
                # behind the primary is computed by whoever also knows the primary's LSN.
                doc["replayLagBytes"] = max(
                    0, positions.parse_lsn(row["received"]) - positions.parse_lsn(row["replayed"])
                )
        return doc

    async def followers(self) -> list[Any]:
        """On a primary, each streaming follower's lag (pg_stat_replication); else none."""
        if self.role is not Role.PRIMARY or self.pg.pid is None:
            return []
        try:
            return list(await asyncio.wait_for(self._query(_FOLLOWERS), 2.0))
        except Exception as e:  # metrics then simply lack the rows
            log.debug("reading pg_stat_replication failed: %s", e)
            return []

    # -- role changes (called by the control plane) ---------------------------------

    async def promote(self, epoch: int | None) -> dict[str, Any]:
        async with self._lock:
            if self.role is not Role.FOLLOWER:
                raise AgentConflict(f"{self.s.name} is {self.role.value}, not a follower")
            if not await self._take_lease(epoch):
                held = await self._read_lease()
                raise AgentConflict(
                    f"lease held by {held.holder} for {held.expires_at - wallclock.now():.1f}s more"
                )
            if epoch is not None:
                await self._record_epoch(epoch)
            if self.s.statement_mode:
                await self._stop_applier()
                self.role = Role.PRIMARY
                pos = await statement_roles.make_writer(
                    self.s.server.host, self.s.server.port, self.creds, self.s.datadir
                )
                self.applier = None
                log.info("promoted to primary at log position %d (epoch %s)", pos, epoch)
                return {"promoted": True, "lsn": None, "position": pos}
            self.role = Role.PRIMARY
            self._fenced_by_control_plane = False
            conn = await sql.connect(self.s.server.host, self.s.server.port, self.creds)
            try:
                ok = await self._renewing(conn.fetchval("SELECT pg_promote(true, 30)"))
                lsn = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
            finally:
                await conn.close()
            if not ok:
                raise AgentConflict("pg_promote() did not complete within 30s")
            log.info("promoted to primary at %s (epoch %s)", lsn, epoch)
            return {"promoted": True, "lsn": lsn}

    async def _renewing(self, promotion: Coroutine[Any, Any, Any]) -> Any:
        """Await ``promotion`` (pg_promote: it waits for the end of replay and for the WAL
        receiver to exit, which a stalled one delays) while renewing the lease taken for
        it. The lease loop cannot: promote() holds the lock, and its probe counts a server
        still in recovery as unhealthy; a promotion longer than the lease fenced the very
        member it promoted, and the shard was left with no follower to promote. Renewed
        only while the server answers, for at most :data:`_PROMOTE_WAIT`; a renewal
        refused or not sent in time fences, as ever."""
        task = asyncio.ensure_future(promotion)
        period = max(0.05, self.s.lease_ttl / 3)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(_PROMOTE_WAIT):
                while not (await asyncio.wait({task}, timeout=period))[0]:
                    if self.role is not Role.PRIMARY:
                        raise AgentConflict(f"{self.s.name} was fenced while promoting")
                    sent_at = loop.time()
                    try:
                        # Renewed only while the server answers, as by the lease loop.
                        await asyncio.wait_for(self._query("SELECT 1"), period)
                        renewed = await asyncio.wait_for(
                            self.store.renew(self.s.name, self.s.lease_ttl, wallclock.now()),
                            self._store_timeout,
                        )
                    except Exception as e:  # the deadline's timer fences if this goes on
                        log.warning("lease not renewed while promoting: %s", e)
                        continue
                    if renewed is None:
                        self._fence("the lease was taken by another member while promoting")
                        raise AgentConflict(f"{self.s.name} lost its lease while promoting")
                    if self.role is Role.PRIMARY:
                        self.valid_until, self._held = renewed.expires_at, renewed
                        self.deadline.granted(sent_at)
                return task.result()
        finally:
            task.cancel()

    async def _record_epoch(self, epoch: int) -> None:
        """Record the epoch this member is promoted in, before it takes writes, where the
        proxy reads it when it opens a primary connection (``topology.EPOCH_SETTING``)."""
        setting = topology.EPOCH_SETTING
        conn = await sql.connect(self.s.server.host, self.s.server.port, self.creds)
        try:
            # PostgreSQL 15 only ALTERs a custom setting the session knows: SET makes it so.
            await conn.execute(f"SET {setting} = {config.quote(str(int(epoch)))}")
            await conn.execute(f"ALTER SYSTEM SET {setting} = {config.quote(str(int(epoch)))}")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    async def repoint(self, up: bootstrap.Upstream) -> dict[str, Any]:
        """Follow ``up`` from now on: slot there, new primary_conninfo, reload (no restart)."""
        async with self._lock:
            if self.role is not Role.FOLLOWER:
                raise AgentConflict(f"{self.s.name} is {self.role.value}; rejoin it instead")
            await peers.check(self.peers, up)
            if self.s.statement_mode:
                await statement_roles.set_upstream(
                    self.s.server.host, self.s.server.port, self.creds, up
                )
                self._source = up
                if self.applier is not None:
                    self.applier.repoint(self._app_dsn(up.host, up.port))
                log.info("now applying the log of %s", up.address)
                return {"upstream": up.address}
            tli, history = await timeline.primary_history(up, self.creds)
            held = await self._held_wal(tli)
            if held is not None and (why := timeline.past_fork(held, tli, history)):
                # A new primary_conninfo would leave it running but never streaming.
                raise AgentConflict(
                    f"{self.s.name} cannot follow {up.address}: {why}; rejoin it (pg_rewind)"
                )
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
            final: int | None = None
            if self.role is Role.PRIMARY:
                self.role = Role.FENCED
                self._fenced_by_control_plane = True
                self.deadline.cancel()
                self.error = "fenced by the control plane"
                writes = None
                if self.s.statement_mode:
                    try:
                        writes = await statement_roles.stop_writes(
                            self.s.server.host, self.s.server.port, self.creds
                        )
                        final = writes.position
                    except Exception as e:  # then the end is unknown: no switchover
                        log.warning("could not take the write lock before stopping: %s", e)
                await self._stop_server(writes)
                try:
                    await asyncio.wait_for(
                        self.store.release(self.s.name, wallclock.now()), self._store_timeout
                    )
                except Exception as e:  # harmless: it expires, and the server is down
                    log.warning("could not release the lease: %s", e)
            elif self.pg.pid is not None:
                self.pg.kill()
                await self.pg.stop()
            if self.s.statement_mode:
                log.info("fenced: server stopped (last log entry %s), lease released", final)
                return {"role": self.role.value, "lsn": final}
            lsn = None
            state = await asyncio.to_thread(postgres.controldata, self.bins, self.s.datadir)
            if state.get("Database cluster state") == "shut down":
                lsn = state.get("Latest checkpoint location")
            log.info("fenced: server stopped (end of WAL %s), lease released", lsn)
            return {"role": self.role.value, "lsn": lsn}

    async def rejoin(self, up: bootstrap.Upstream) -> dict[str, Any]:
        """Become a follower of ``up``: stop, pg_rewind (or re-clone), start as standby."""
        if self.role is Role.BOOTSTRAPPING:
            # Its copy is a fresh one already; waiting for the lock would only hold the
            # manager's request for the length of the copy, then copy again.
            raise AgentConflict(
                f"{self.s.name} is still bootstrapping (copying its primary); "
                "rejoin it once it reports a role"
            )
        async with self._lock:
            if self.role is Role.PRIMARY:
                raise AgentConflict(f"{self.s.name} is the lease-holding primary; fence it first")
            await peers.check(self.peers, up)
            if self._applies_log_of(up):
                # A statement-mode follower copied from (or repointed to) ``up`` that has
                # not diverged: a re-copy would only restart it and take it away.
                log.info("already applying the log of %s: nothing to rejoin", up.address)
                return rejoin.RejoinResult(rejoin.Method.RESTART, None, 0).to_dict()
            if await self._streams_from(up):
                log.info("already streaming from %s on its timeline: nothing to rejoin", up.address)
                return rejoin.RejoinResult(rejoin.Method.RESTART, None, 0).to_dict()
            held = await self._held_wal()
            previous = self.role
            self.role = Role.REJOINING
            try:
                await self._stop_applier()
                await self.pg.stop()
                if self.s.statement_mode:
                    result = await statement_roles.recopy(
                        self.bins,
                        self.s.datadir,
                        self.s.server,
                        self.creds,
                        up,
                        self.s.pg_log,
                    )
                else:
                    result = await rejoin.follow(
                        self.bins, self.s.datadir, self.s.server, self.creds, up, held
                    )
            except Exception as e:
                self.role = previous
                self.error = f"rejoin failed: {e}"
                raise
            self.role = Role.FOLLOWER
            self.error = None
            await self.pg.start()
            if self.s.statement_mode:
                self._start_applier(up)
            log.info("rejoined as follower of %s: %s", up.address, result.to_dict())
            return result.to_dict()


async def _cancelled(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
