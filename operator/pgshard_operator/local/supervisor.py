"""The local cluster's supervisor: the background process ``pgshard local up`` leaves running.

It owns DIR while it runs (``DIR/supervisor.lock``), starts one instance agent per
member (agents.py), restarts agents that die, keeps ``DIR/topology.json``'s
follower states current from the agents' status endpoints (view.py), runs one
shard manager per shard through the local platform, adds or removes followers when
``pgshard local scale`` asks (scale.py), and reports its progress in
``DIR/supervisor.json`` (``starting`` → ``ready`` | ``failed`` → ``stopped``),
which ``local up`` waits on. SIGTERM or SIGINT stop everything it started.

Run as ``python -m pgshard_operator.local.supervisor --dir DIR`` (by ``local up``)
or in-process (``local up --foreground``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from pgshard_proxy.contract import topology

from .. import agent_tls, atomicfile, control_token, redact
from ..instance import main as instance_main
from ..instance import postgres
from ..model import spec as specs
from ..platform.local import LocalPlatform
from ..shard import manager, observe, policy, replication, switchover
from . import control, proxy_counts, topofile, view
from . import scale as scaling
from . import upgrade as upgrading
from .agents import AgentProcess
from .layout import ClusterConfig, ClusterDir, LayoutError
from .proxyproc import ProxyProcess

log = logging.getLogger(__name__)

BOOTSTRAP_ATTEMPTS = 3
"""Failed bootstraps of a member before ``up`` (or ``scale``) gives up; a full disk: 1."""
RESUME_GRACE_SECONDS = 60
"""How long a resumed cluster's managers wait for the recorded primaries to start."""


class StartupFailed(Exception):
    """The cluster could not be brought up; the message is shown by ``local up``."""


class Supervisor:
    def __init__(
        self,
        cdir: ClusterDir,
        ready_timeout: float = 300.0,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.cdir = cdir
        self._on_ready = on_ready
        self.cfg: ClusterConfig = cdir.load_config()
        self.creds = cdir.load_credentials(self.cfg)
        self.token = control_token.ensure(cdir.control_token)
        self.ready_timeout = ready_timeout
        self.agents = {m.name: AgentProcess(cdir, self.cfg, m) for m in self.cfg.members()}
        self.proxy = ProxyProcess(cdir, self.cfg, self.creds)
        self.statuses: dict[str, dict[str, Any] | None] = {}
        self.stopping = False
        self.ready = False
        self._tasks: list[asyncio.Task[Any]] = []
        self.managers: dict[int, manager.ShardManager] = {}
        self.platforms: dict[int, LocalPlatform] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._adding: set[str] = set()
        """Members ``scale`` is adding: their failed bootstrap fails the request."""
        self._scaling = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None
        self._agent_ssl = agent_tls.client_ssl(cdir.agent_ca(self.cfg))
        """Agents serve HTTPS with the cluster's TLS (verified with its CA)."""

    # -- state file -------------------------------------------------------------

    def _report(self, state: str, error: str | None = None) -> None:
        atomicfile.write_json(
            self.cdir.supervisor_state,
            {
                "pid": os.getpid(),
                "state": state,
                "error": error,
                "control": f"{self.cfg.host}:{self.cfg.control_port}",
                "updatedAt": time.time(),
            },
        )

    # -- agents -----------------------------------------------------------------

    def primary_of(self, shard: int) -> str | None:
        topo = topofile.read(self.cdir)
        if topo is None:
            return None
        p = topo.shard(shard).primary
        return p.name if p else None

    def _upstream(self, shard: int) -> str | None:
        name = self.primary_of(shard)
        return self.cfg.member(name).address if name else None

    async def _watch(self, agent: AgentProcess) -> None:
        """Restart an agent that exits while the cluster runs (back-off 1 s … 10 s)."""
        backoff = 0.0
        failed_bootstraps = 0
        while True:
            started = time.monotonic()
            code = await agent.wait()
            if self.stopping:
                return
            if code in (instance_main.BOOTSTRAP_EXIT, instance_main.DISK_FULL_EXIT):
                failed_bootstraps += 1
            # A snapshot can fail for passing reasons (the primary restarting); retry a
            # few times, but a full disk or a persistent failure ends `up` (or `scale`)
            # with the reason. A member of a running cluster keeps being retried.
            gave_up = code == instance_main.DISK_FULL_EXIT or (
                code == instance_main.BOOTSTRAP_EXIT and failed_bootstraps >= BOOTSTRAP_ATTEMPTS
            )
            if gave_up and (not self.ready or agent.spec.name in self._adding):
                raise StartupFailed(
                    f"{agent.spec.name} could not be created: {agent.bootstrap_error()}\n"
                    f"(full log: {self.cdir.agent_log(agent.spec.name)})"
                )
            ran = time.monotonic() - started
            backoff = 1.0 if ran > 30 else min(10.0, max(1.0, backoff * 2))
            log.warning(
                "%s: agent exited with status %s; restarting in %.0fs",
                agent.spec.name,
                code,
                backoff,
            )
            await asyncio.sleep(backoff)
            if self.stopping:
                return
            shard = agent.spec.shard
            # A crashed primary must not come back as primary on its own: the shard manager
            # fails over and then rejoins it (with no followers there is nobody to fail to).
            hold = self.primary_of(shard) == agent.spec.name and self.cfg.replicas > 0
            await agent.start(upstream=self._upstream(shard), hold_primary=hold)

    async def _start_shard(self, shard: int, fresh: bool) -> None:
        members = self.cfg.members(shard)
        primary = self.primary_of(shard) or members[0].name
        first = self.agents[primary]
        await first.start(upstream=None, bootstrap_primary=fresh)
        self._supervise(first)
        must_clone = [m for m in members if not (self.cdir.datadir(m.name) / "PG_VERSION").exists()]
        if fresh or must_clone:  # a snapshot needs a running primary
            await self._wait_for(lambda: self._role(primary) == "primary")
        for m in members:
            if m.name != primary:
                agent = self.agents[m.name]
                await agent.start(upstream=first.spec.address)
                self._supervise(agent)

    async def _primaries_started(self) -> None:
        """On resume: give each shard's recorded primary time to start (its agent takes
        the lease, then starts PostgreSQL) before the managers look. On a loaded machine
        that took over 10 s, and a manager started at once failed over every shard whose
        primary had not answered yet. Bounded: a primary that does not come back is
        failed over by its manager afterwards."""
        names = [p for i in range(self.cfg.shards) if (p := self.primary_of(i)) is not None]
        deadline = time.monotonic() + RESUME_GRACE_SECONDS
        while time.monotonic() < deadline:
            if all(self._role(n) not in (None, "bootstrapping") for n in names):
                return
            await asyncio.sleep(0.1)
        slow = [n for n in names if self._role(n) in (None, "bootstrapping")]
        log.warning(
            "%s not started after %ds; the shard managers take over",
            ", ".join(slow),
            RESUME_GRACE_SECONDS,
        )

    def _supervise(self, agent: AgentProcess, *, tracked: bool = True) -> None:
        """Watch ``agent``; a ``tracked`` watcher's failure ends the supervisor (during
        startup: ``up`` fails). ``scale`` watches members it adds untracked until they
        stream, and handles their failure itself."""
        task = asyncio.ensure_future(self._watch(agent))
        self._watchers[agent.spec.name] = task
        if tracked:
            self._tasks.append(task)

    def _role(self, name: str) -> str | None:
        doc = self.statuses.get(name)
        return None if doc is None else doc.get("role")

    async def _wait_for(self, cond: Any) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while not cond():
            failed = [t for t in self._tasks if t.done()]
            for t in failed:
                t.result()  # raises StartupFailed
            if time.monotonic() > deadline:
                raise StartupFailed(
                    f"the cluster was not ready after {self.ready_timeout:.0f}s; "
                    f"see the logs in {self.cdir.logs}"
                )
            await asyncio.sleep(0.1)

    # -- observation ------------------------------------------------------------

    async def _fetch(self, agent: AgentProcess) -> dict[str, Any] | None:
        assert self._http is not None
        try:
            async with self._http.get(agent.spec.status_url + "/status", ssl=self._agent_ssl) as r:
                doc: dict[str, Any] = await r.json()
                return doc
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def observe_once(self) -> None:
        names = list(self.agents)
        docs = await asyncio.gather(*(self._fetch(self.agents[n]) for n in names))
        self.statuses = dict(zip(names, docs, strict=True))

        def change(topo: topology.Topology) -> topology.Topology | None:
            new = topo
            for s in topo.shards:
                live = view.build_shard(
                    s, self.cfg.members(s.index), self.statuses, self.creds, topo.method
                )
                if view.shape(live) != view.shape(s):
                    new = topofile.replace_shard(new, live)
            return new if new is not topo else None

        topofile.update(self.cdir, change)
        if not self.ready:
            topo = topofile.read(self.cdir)
            assert topo is not None
            self.ready = all(
                view.shard_ready(
                    view.build_shard(
                        s, self.cfg.members(s.index), self.statuses, self.creds, topo.method
                    ),
                    self.statuses.get(s.primary.name) if s.primary else None,
                )
                for s in topo.shards
            )

    def _with_tables(self, topo: topology.Topology) -> topology.Topology | None:
        tables = self.cfg.distributed_tables
        return None if topo.tables == tables else dataclasses.replace(topo, tables=tables)

    async def _observe_loop(self) -> None:
        while True:
            try:
                await self.observe_once()
            except Exception:
                log.exception("observation failed (will retry)")
            await asyncio.sleep(self.cfg.timings.interval)

    # -- shard managers ---------------------------------------------------------

    def shard_policy(self) -> policy.ShardPolicy:
        t = self.cfg.timings
        statement = self.cfg.method is specs.ReplicationMethod.STATEMENT
        return policy.ShardPolicy(
            replication=policy.ReplicationSettings(
                # Statement sync/quorum is the proxy's wait for appliers (topology
                # ``statementAcks``), not synchronous_standby_names: to the managers,
                # which elect the highest applied seq, it is async.
                mode=policy.ReplicationMode.ASYNC
                if statement
                else policy.ReplicationMode(self.cfg.mode.value),
                quorum=self.cfg.quorum,
                statement=statement,
            ),
            failover=policy.FailoverSettings(
                detection_seconds=t.detection,
                cooldown_seconds=t.cooldown,
                max_lag_bytes=self.cfg.max_lag_bytes,
                lease_ttl_seconds=t.lease_ttl,
                # One machine, one clock: the agents' own margin is all that is needed
                # (0, the default), unless a test sets the agents' clocks off.
                max_clock_skew_seconds=t.max_clock_skew,
            ),
            cycle_seconds=t.interval,
            probe_timeout_seconds=max(0.5, min(2.0, t.lease_ttl / 3)),
            failover_buffer_seconds=self.cfg.failover_buffer_seconds,
        )

    def _start_managers(self) -> None:
        assert self._http is not None
        pol = self.shard_policy()
        observer: manager.Observer = observe.observe
        if self.cfg.method is specs.ReplicationMethod.STATEMENT:
            observer = observe.statement_observer(self.creds.app_database)
        for i in range(self.cfg.shards):
            platform = LocalPlatform(
                self.cdir,
                self.cfg,
                self.creds,
                i,
                self._http,
                agent_alive=lambda name: self.agents[name].alive,
                statuses=lambda: self.statuses,
                token=self.token,
            )
            self.platforms[i] = platform
            self.managers[i] = manager.ShardManager(
                platform,
                pol,
                observer=observer,
                logger=logging.getLogger(f"pgshard_operator.shard.{i}"),
                force_command=f"pgshard failover --dir {self.cdir.root} --shard {i} --accept-loss",
                proxy_counts=proxy_counts.counter(self._http, self.cfg.proxy_metrics_url),
            )
            self._tasks.append(asyncio.ensure_future(self.managers[i].run()))

    # -- life cycle -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._report("starting")
        fresh = topofile.read(self.cdir) is None
        if fresh:
            topofile.create(self.cdir, topofile.initial(self.cfg))
        else:  # `up` may have added distributed tables: the proxy follows the file
            topofile.update(self.cdir, self._with_tables)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        runner = await control.serve(
            self.managers,
            self.cfg.host,
            self.cfg.control_port,
            self.token,
            scale=self.scale,
            upgrade=self.upgrade,
            cluster=self.cdir.root.name,
        )
        try:
            observer = asyncio.ensure_future(self._observe_loop())
            try:
                await asyncio.gather(*(self._start_shard(i, fresh) for i in range(self.cfg.shards)))
                if not fresh:
                    await self._primaries_started()
                await self.observe_once()
                self._start_managers()
                await self._wait_for(lambda: self.ready)
                await self.proxy.start()
                await self.proxy.listening()
                self._tasks.append(asyncio.ensure_future(self._watch_proxy()))
                self._report("ready")
                log.info("cluster ready")
                if self._on_ready is not None:
                    await asyncio.to_thread(self._on_ready)
                waiter = asyncio.ensure_future(stop.wait())
                while not waiter.done():
                    # Re-collected each time: `scale` adds watchers and retires others.
                    watched = list(self._tasks)
                    await asyncio.wait([waiter, *watched], return_when=asyncio.FIRST_COMPLETED)
                    for t in watched:
                        if t.done() and t in self._tasks:
                            self._tasks.remove(t)
                            t.result()
            finally:
                observer.cancel()
        finally:
            await self.shutdown()
            await runner.cleanup()
            await self._http.close()

    # -- scale ------------------------------------------------------------------

    async def scale(self, replicas: int, timeout: float) -> dict[str, Any]:
        """Give every shard ``replicas`` followers (see scale.py); one change at a time."""
        async with self._scaling:
            if not self.ready:
                raise scaling.ScaleRefused("the cluster is still starting; retry when it is ready")
            primaries = {i: self.primary_of(i) for i in range(self.cfg.shards)}
            p = scaling.plan(self.cfg, replicas, primaries)
            if p.added:
                await self._add(p, timeout)
            for shard in sorted({m.shard for m in p.removed}):
                await self._remove(p, shard, timeout)
            if p.removed:
                self._adopt(p.cfg)
            return {
                "replicas": replicas,
                "added": [m.name for m in p.added],
                "removed": [m.name for m in p.removed],
            }

    def _adopt(self, cfg: ClusterConfig) -> None:
        """``cfg`` becomes the cluster's shape: here, for the managers, and in cluster.json
        (so ``up`` after ``down`` resumes with it). After a removal failed half-way, the
        old shape stays: a retry (or ``up``) finds the members still listed."""
        self.cfg = cfg
        for platform in self.platforms.values():
            platform.set_members(cfg)
        atomicfile.write_json(self.cdir.config, cfg.to_dict())

    async def _add(self, p: scaling.ScalePlan, timeout: float) -> None:
        for m in p.added:
            for port in (m.port, m.status_port):
                with socket.socket() as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        sock.bind((m.host, port))
                    except OSError as e:
                        raise scaling.ScaleRefused(
                            f"port {port} on {m.host} (for new member {m.name}) is not "
                            f"available: {e.strerror}; stop what uses it and retry"
                        ) from None
        old = self.cfg
        for m in p.added:  # known before the managers see them (agent_alive looks them up)
            self.agents[m.name] = AgentProcess(self.cdir, p.cfg, m)
        self._adopt(p.cfg)
        names = {m.name for m in p.added}
        self._adding |= names
        try:
            for m in p.added:
                # The agent's usual follower bootstrap: slot on the primary, then the snapshot.
                await self.agents[m.name].start(upstream=self._upstream(m.shard))
                self._supervise(self.agents[m.name], tracked=False)
            failure = await self._added_streaming(names, timeout)
        finally:
            self._adding -= names
            # From now on a watcher that is still on restarts its member like any other.
            self._tasks += [w for n in sorted(names) if not (w := self._watchers[n]).done()]
        if failure is None:
            return
        # All or nothing: the new members go again (the removal path: out of the sync
        # list, slot dropped, data deleted) and the cluster keeps its shape.
        log.warning("scale: %s; removing %s again", failure, ", ".join(sorted(names)))
        back = scaling.plan(p.cfg, old.replicas, {i: self.primary_of(i) for i in self.platforms})
        for shard in sorted({m.shard for m in back.removed}):
            await self._remove(back, shard, timeout)
        self._adopt(old)
        raise scaling.ScaleRefused(f"{failure}; the cluster stays at --replicas {old.replicas}")

    async def _added_streaming(self, names: set[str], timeout: float) -> str | None:
        """Wait until the members ``names`` stream; else why not (a failed bootstrap)."""

        def streaming() -> bool:
            topo = topofile.read(self.cdir)
            return topo is not None and names <= {
                f.name for s in topo.shards for f in s.followers if f.state == "streaming"
            }

        deadline = time.monotonic() + timeout
        while not streaming():
            for name in sorted(names):
                watcher = self._watchers[name]
                if watcher.done():
                    try:
                        watcher.result()
                    except StartupFailed as e:
                        return str(e)
            if time.monotonic() > deadline:
                raise scaling.ScaleRefused(
                    f"{', '.join(sorted(names))} not streaming after {timeout:.0f}s (they keep "
                    f"trying; see {self.cdir.logs}/<name>.agent.log)"
                )
            await asyncio.sleep(0.2)
        return None

    async def _remove(self, p: scaling.ScalePlan, shard: int, timeout: float) -> None:
        leaving = [m for m in p.removed if m.shard == shard]
        mgr, platform = self.managers[shard], self.platforms[shard]
        settings = self.shard_policy().replication
        async with mgr.paused():  # no failover or switchover while the membership changes
            primary = self.primary_of(shard)
            if primary is None or primary in {m.name for m in leaving}:
                raise scaling.ScaleRefused(
                    f"shard {shard} has no primary outside the members to remove now; retry"
                )
            remaining = [m.name for m in p.cfg.members(shard) if m.name != primary]
            # Only followers already in the published sync set may be listed (they are
            # published first); the manager adds the others once they have caught up.
            topo = topofile.read(self.cdir)
            sync = topo.shard(shard).sync_standbys if topo is not None else None
            if sync is not None:
                remaining = [n for n in remaining if n in sync]
            platform.set_members(p.cfg)
            try:
                if settings.required_acks:
                    await platform.set_sync_standbys(
                        primary, replication.standby_names(settings, remaining)
                    )
                await scaling.handed_over(
                    self.creds.superuser_dsn(self.cfg.member(primary).address),
                    remaining,
                    settings.required_acks,
                    timeout,
                )
            except BaseException:
                platform.set_members(self.cfg)  # the manager's next cycle restores the setting
                raise
        primary_dsn = self.creds.superuser_dsn(self.cfg.member(primary).address)
        for m in leaving:
            if (watcher := self._watchers.pop(m.name, None)) is not None:
                if watcher in self._tasks:
                    self._tasks.remove(watcher)
                watcher.cancel()  # before the stop, so that it does not restart the agent
                await asyncio.gather(watcher, return_exceptions=True)
            if (agent := self.agents.pop(m.name, None)) is not None:
                await agent.stop()
            await scaling.drop_slot(primary_dsn, m.name, timeout)
            if self.cdir.member_dir(m.name).exists():  # absent if it never started
                await asyncio.to_thread(shutil.rmtree, self.cdir.member_dir(m.name))
            log.info("%s removed from shard %d", m.name, shard)

    # -- upgrade ----------------------------------------------------------------

    async def upgrade(self, bindir: str, timeout: float) -> dict[str, Any]:
        """Every member onto ``bindir`` (see upgrade.py); excludes ``scale`` meanwhile."""
        async with self._scaling:
            if not self.ready:
                raise upgrading.UpgradeRefused("the cluster is still starting; retry when ready")
            default = str(postgres.find_bindir().resolve())
            primaries = {i: self.primary_of(i) for i in range(self.cfg.shards)}
            plans = upgrading.plan(self.cfg, bindir, default, primaries)
            deadline = time.monotonic() + timeout
            rebuilt: list[str] = []
            for p in plans:
                for m in p.followers:
                    await self._rebuild(m.name, bindir, deadline)
                    rebuilt.append(m.name)
                if p.primary is not None:
                    primary_dsn = self.creds.superuser_dsn(
                        p.primary.address, self.creds.app_database
                    )
                    others = [m.name for m in self.cfg.members(p.shard) if m != p.primary]
                    await upgrading.caught_up(primary_dsn, others, deadline)
                    try:
                        await self.managers[p.shard].request_switchover(None)
                    except (switchover.SwitchoverRefused, manager.SwitchoverFailed) as e:
                        raise upgrading.UpgradeRefused(
                            f"the switchover of shard {p.shard} failed: {e}; the shard keeps "
                            f"{p.primary.name} on the old binaries: run the upgrade again"
                        ) from None
                    await self._rebuild(p.primary.name, bindir, deadline)
                    rebuilt.append(p.primary.name)
            self._adopt(dataclasses.replace(self.cfg, follower_bindir=bindir))
            return {
                "bindir": bindir,
                "rebuilt": rebuilt,
                "primaries": [self.primary_of(i) for i in range(self.cfg.shards)],
            }

    async def _rebuild(self, name: str, bindir: str, deadline: float) -> None:
        """Recreate follower ``name`` on ``bindir``: stop its agent, delete its data, and
        let a new agent bootstrap it from the primary; returns once it applies the log."""
        shard = self.cfg.member(name).shard
        self._adding.add(name)
        try:
            # Paused until the new agent reports (bootstrapping): a manager cycle seeing
            # the member gone would ask it to rejoin, which fails while it bootstraps.
            async with self.managers[shard].paused():
                agent = await self._replace_agent(name, bindir, deadline)
            self._supervise(agent, tracked=False)
            try:
                failure = await self._added_streaming({name}, max(1.0, deadline - time.monotonic()))
            except scaling.ScaleRefused as e:
                failure = str(e)
        finally:
            self._adding.discard(name)
            if (w := self._watchers.get(name)) is not None and not w.done():
                self._tasks.append(w)
        if failure is not None:
            raise upgrading.UpgradeRefused(
                f"{failure}; {name} is recorded on {bindir}: run the upgrade again to continue"
            )

    async def _replace_agent(self, name: str, bindir: str, deadline: float) -> AgentProcess:
        """Stop ``name``'s agent, delete its data, start a new agent on ``bindir``; returns
        it once it reports a role (it is bootstrapping then)."""
        if (watcher := self._watchers.pop(name, None)) is not None:
            if watcher in self._tasks:
                self._tasks.remove(watcher)
            watcher.cancel()  # before the stop, so that it does not restart the agent
            await asyncio.gather(watcher, return_exceptions=True)
        await self.agents[name].stop()
        # Until an observation shows it gone, the topology may still call it streaming.
        while self._streaming(name) or self._role(name) is not None:
            if time.monotonic() > deadline:
                raise upgrading.UpgradeRefused(f"{name} still answers after its agent stopped")
            await asyncio.sleep(0.1)
        if self.cdir.member_dir(name).exists():
            await asyncio.to_thread(shutil.rmtree, self.cdir.member_dir(name))
        self._adopt(self.cfg.with_bindir(name, bindir))
        spec = self.cfg.member(name)
        agent = self.agents[name] = AgentProcess(self.cdir, self.cfg, spec)
        log.info("%s: rebuilding on %s", name, bindir)
        await agent.start(upstream=self._upstream(spec.shard))
        for _ in range(300):  # 30 s at most; a failed start is the watcher's to report
            if self._role(name) is not None or not agent.alive:
                break
            await asyncio.sleep(0.1)
        return agent

    def _streaming(self, name: str) -> bool:
        topo = topofile.read(self.cdir)
        return topo is not None and any(
            f.name == name and f.state == "streaming" for s in topo.shards for f in s.followers
        )

    async def _watch_proxy(self) -> None:
        """Restart the proxy if it exits while the cluster runs (after 1 s)."""
        while True:
            code = await self.proxy.wait()
            if self.stopping:
                return
            log.warning("proxy exited with status %s; restarting in 1s", code)
            await asyncio.sleep(1.0)
            if self.stopping:
                return
            await self.proxy.start()

    async def shutdown(self) -> None:
        """Stop the proxy, then every agent (followers first), by pid; nothing is left running."""
        self.stopping = True
        self._report("stopping")
        for t in self._tasks:
            t.cancel()
        # Managers first (their cancellation also stops background rejoins), so that no
        # failover starts while the agents go down.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.proxy.stop()
        primaries = {self.primary_of(i) for i in range(self.cfg.shards)}
        followers = [a for n, a in self.agents.items() if n not in primaries]
        await asyncio.gather(*(a.stop() for a in followers))
        await asyncio.gather(*(a.stop() for n, a in self.agents.items() if n in primaries))


async def supervise(
    cdir: ClusterDir, ready_timeout: float, on_ready: Callable[[], None] | None = None
) -> int:
    """Run the supervisor until SIGTERM/SIGINT; 0 after a clean stop, 1 if startup failed."""
    try:
        lock_fd = atomicfile.hold_lock(cdir.supervisor_lock)
    except atomicfile.AlreadyLocked:
        log.error("%s is in use by a running cluster", cdir.root)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sup = Supervisor(cdir, ready_timeout, on_ready)
    try:
        await sup.run(stop)
    except StartupFailed as e:
        log.error("%s", e)
        sup._report("failed", str(e))
        return 1
    except Exception as e:
        log.exception("supervisor failed")
        sup._report("failed", f"{type(e).__name__}: {e}")
        return 1
    else:
        sup._report("stopped")
        return 0
    finally:
        os.close(lock_fd)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pgshard-local-supervisor")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--ready-timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redact.install()
    try:
        return asyncio.run(supervise(ClusterDir(args.dir.resolve()), args.ready_timeout))
    except LayoutError as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
