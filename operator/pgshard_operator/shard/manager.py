"""``ShardManager``: the loop that keeps one shard healthy.

Each cycle: read the platform's snapshot → observe every member concurrently
(bounded) → ``decide`` → carry out the actions through the ``Platform``. One
log line whenever the decision changes; an exception in a cycle is logged and
the next cycle starts afresh (the loop never dies). ``rejoin`` can take long,
so it runs as a background task per member; everything else is awaited in
order, and the first failure ends the cycle's actions.

Who calls it: the local platform's supervisor (``pgshard local up``) and the
Kubernetes operator's per-shard daemon, which also call
:meth:`ShardManager.request_switchover` and :meth:`ShardManager.status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from pgshard_proxy.contract import topology

from ..platform import base
from . import actions, decide, history, observe, policy, record, replication, state, switchover

Observer = Callable[[str, str, float, state.ProcessState], Awaitable[state.MemberObservation]]
"""``observe.observe``'s signature; tests inject a fake."""
StatusSink = Callable[["ManagerStatus"], Awaitable[None]]
"""Called after every cycle with the current status (e.g. the local platform writes it to
a file for ``pgshard local status``; the operator puts it into the CR status)."""

_EVENT_KINDS = {
    decide.DecisionKind.FAILING_OVER: base.EventReason.FAILING_OVER,
    decide.DecisionKind.BLOCKED: base.EventReason.FAILOVER_BLOCKED,
    decide.DecisionKind.COOLDOWN: base.EventReason.COOLDOWN,
}
_REJOIN_RETRY_SECONDS = 5.0
"""After a failed rejoin, wait this long before trying that member again under the same
primary (under a new one: at once); doubled after each further failure, up to
:data:`_REJOIN_RETRY_MAX_SECONDS`."""
_REJOIN_RETRY_MAX_SECONDS = 60.0
_COUNTS_SETTLE_SECONDS = 6.0
"""How long the failover record waits for the proxies to release the requests they
hold (their default buffer window is 5 s) before it takes their counts anyway."""
_FIRST_WRITE_GRACE_SECONDS = 3.0
"""A rejoin recorded sooner than this after the publication waits (within
:data:`_COUNTS_SETTLE_SECONDS`) until then for a proxy to report a write on the new
primary: with no writer, ``firstWriteAt`` stays null."""
_BLOCKED_EVENT_SECONDS = 60.0
"""While a shard stays without a primary that the manager refuses to promote, the
``FailoverBlocked`` Event is recorded again this often."""


def _promotes(decision: decide.Decision) -> bool:
    return any(isinstance(a, actions.Promote) for a in decision.actions)


class SwitchoverFailed(Exception):
    """A switchover started but could not finish; the message says where it stopped."""


@dataclasses.dataclass(frozen=True)
class ManagerStatus:
    """What ``pgshard local status`` and the operator's status show about the manager."""

    kind: decide.DecisionKind | None
    """The shard's state (JSON ``state``); ``None`` before the first cycle finished."""
    reason: str
    epoch: int | None
    primary: str | None
    cooldown_remaining: float
    last_failover: state.LastFailover | None
    switchover_in_progress: bool
    members: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Member -> why it is not a ready follower (JSON ``members``; absent when it is)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.kind.value if self.kind else None,
            "reason": self.reason,
            "epoch": self.epoch,
            "primary": self.primary,
            "cooldownRemainingSeconds": round(self.cooldown_remaining, 1),
            "lastFailover": self.last_failover.to_dict() if self.last_failover else None,
            "switchoverInProgress": self.switchover_in_progress,
            "members": dict(self.members),
        }


@dataclasses.dataclass
class Tally:
    """What the manager counted since it started (its Prometheus metrics, metrics.py)."""

    promotions: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    """(kind, reason) -> count: ``failover`` with the old primary's process state
    (``gone``, ``replaced``, ``stopping``, ``alive`` = stopped answering, ``unknown``),
    or ``switchover`` with ``requested``."""
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    """stage (``cycle``: a cycle raised; ``action``: an action failed) -> count."""
    last_failover_seconds: float | None = None
    """From the primary's first failed probe to its replacement's promotion (the last
    automatic failover), or the whole switchover."""
    last_probe_ok: dict[str, float] = dataclasses.field(default_factory=dict)
    """member -> time of its last successful probe."""

    def count(self, table: dict[Any, int], key: Any) -> None:
        table[key] = table.get(key, 0) + 1


class ShardManager:
    def __init__(
        self,
        platform: base.Platform,
        pol: policy.ShardPolicy,
        *,
        clock: Callable[[], float] = time.time,
        observer: Observer = observe.observe,
        logger: logging.Logger | None = None,
        on_status: StatusSink | None = None,
        force_command: str | None = None,
        proxy_counts: history.ProxyCounter | None = None,
    ) -> None:
        """``force_command``: how an operator forces a failover of this shard (appended to
        reasons and Events when only a forced failover would end a blocked state).
        ``proxy_counts``: reads what the proxies counted, for the failover record."""
        self.platform = platform
        self.policy = pol
        self._clock = clock
        self._observer = observer
        self._log = logger or logging.getLogger(__name__)
        self._on_status = on_status
        self._force_command = force_command
        # Cycles and switchovers must not interleave: a switchover fences the primary,
        # which a cycle would otherwise take for a failure.
        self._lock = asyncio.Lock()
        self._memory = decide.Memory()
        self._decision: decide.Decision | None = None
        self._snapshot: state.ShardSnapshot | None = None
        self._observations: Mapping[str, state.MemberObservation] = {}
        self._rejoin_errors: dict[str, str] = {}
        self._logged: tuple[object, ...] | None = None
        self._force = False
        self._switching = False
        self._rejoins: dict[str, asyncio.Task[None]] = {}
        self._rejoin_retry_at: dict[str, tuple[str, float]] = {}
        """Member -> (the primary its last rejoin failed under, when to try again)."""
        self._rejoin_failures: dict[str, int] = {}
        self._last_refresh = float("-inf")
        self._last_event_at = float("-inf")
        self.tally = Tally()
        self._proxy_counts = proxy_counts
        self._counts_before: tuple[float, history.RequestCounts] | None = None
        """(when the change of primary began, the proxies' counts then)."""

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run cycles until cancelled; then stop the background rejoins."""
        try:
            while True:
                await self.run_cycle()
                await asyncio.sleep(self._pause())
        finally:
            await self.close()

    def _pause(self) -> float:
        """The period between cycles; a fifth of it right after a promotion and while the
        primary's commits wait for a follower to be named (``sync``/``quorum``): the
        cycle that sees a follower caught up names it, and only then do writes resume."""
        fast = self.policy.cycle_seconds / 5
        decision, snap = self._decision, self._snapshot
        if decision is not None and decision.kind is decide.DecisionKind.FAILING_OVER:
            return fast
        acks = self.policy.replication.required_acks
        if not acks or snap is None or snap.primary is None:
            return self.policy.cycle_seconds
        obs = self._observations.get(snap.primary)
        named = replication.listed(obs.sync_standby_names) if obs is not None else None
        return fast if named is not None and len(named) < acks else self.policy.cycle_seconds

    async def close(self) -> None:
        tasks = list(self._rejoins.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._rejoins.clear()

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No cycle or switchover runs inside: the platform's owner changes the shard's
        membership here (e.g. ``pgshard local scale`` removing a follower)."""
        async with self._lock:
            yield

    async def run_cycle(self) -> decide.Decision | None:
        """One cycle; returns its decision, or ``None`` if it failed (already logged)."""
        async with self._lock:
            try:
                decision: decide.Decision | None = await self._cycle()
            except Exception:
                self._log.exception("shard manager cycle failed; retrying next cycle")
                self.tally.count(self.tally.errors, "cycle")
                decision = None
        if self._on_status is not None:
            try:
                await self._on_status(self.status())
            except Exception:
                self._log.exception("publishing the manager status failed")
        return decision

    async def _cycle(self) -> decide.Decision:
        snap = await self.platform.read_snapshot()
        obs = await self._observe_all(snap)
        now = self._clock()
        self._memory = dataclasses.replace(
            decide.remember(self._memory, snap, obs, now),
            rejoin_failed=frozenset(self._rejoin_failures),
        )
        force, self._force = self._force, False
        decision = decide.decide(snap, obs, now, self.policy, self._memory, force=force)
        if decision.forceable and self._force_command:
            decision = dataclasses.replace(
                decision, reason=f"{decision.reason}; to force it: {self._force_command}"
            )
        self._snapshot, self._decision, self._observations = snap, decision, obs
        await self._report(snap, decision)
        down_since = self._memory.primary_unreachable_since
        if down_since is not None and (
            self._counts_before is None or self._counts_before[0] != down_since
        ):
            await self._count_requests(down_since)
        announced = await self._announce_failover(snap, decision)
        if snap.shard.switching is not None and not decision.actions:
            # Announced by a failover that gave up (a later cycle blocked it) or by a
            # manager that died: proxies must not hold requests for a primary not coming.
            await self._withdraw_switching()
        done = await self._execute(announced or snap, decision.actions, began=down_since)
        if announced is not None and not done:
            await self._withdraw_switching()
        if done and _promotes(decision):
            old = next((m for m in snap.members if m.name == snap.primary), None)
            why = old.process.value if old is not None else "unknown"
            self.tally.count(self.tally.promotions, ("failover", why))
            if down_since is not None:
                self.tally.last_failover_seconds = self._clock() - down_since
        if done and decision.kind is decide.DecisionKind.HEALTHY:
            await self._refresh_positions(snap, obs, decision, now)
        return decision

    async def _observe_all(self, snap: state.ShardSnapshot) -> dict[str, state.MemberObservation]:
        timeout = self.policy.probe_timeout_seconds
        members = [m for m in snap.members if not m.bootstrapping]

        async def one(m: state.MemberInfo) -> state.MemberObservation:
            if m.unprobed is not None:
                return state.MemberObservation.unreachable(m.name, m.process, m.unprobed)
            try:
                # observe() bounds itself; this guards against an observer that does not.
                async with asyncio.timeout(timeout + 1):
                    seen = await self._observer(m.name, m.dsn, timeout, m.process)
            except TimeoutError:
                return state.MemberObservation.unreachable(m.name, m.process, "probe hung")
            except Exception as e:  # e.g. asyncpg confused by a server shutting down
                # One member's failed probe is an observation, not a failed cycle.
                why = f"probe failed: {type(e).__name__}: {e}"
                return state.MemberObservation.unreachable(m.name, m.process, why)
            if seen.ok:
                self.tally.last_probe_ok[m.name] = self._clock()
            return seen

        results = await asyncio.gather(*(one(m) for m in members))
        return {o.name: o for o in results}

    async def _report(self, snap: state.ShardSnapshot, decision: decide.Decision) -> None:
        # Countdowns change every cycle; log when anything else does.
        key = (
            snap.index,
            decision.kind,
            re.sub(r"\d+(\.\d+)?s", "Ns", decision.reason),
            decision.actions,
        )
        now = self._clock()
        event = _EVENT_KINDS.get(decision.kind)
        if key == self._logged:
            if (
                decision.kind is decide.DecisionKind.BLOCKED
                and event is not None
                and now - self._last_event_at >= _BLOCKED_EVENT_SECONDS
            ):
                # Never stuck silently: say it again while it lasts.
                self._last_event_at = now
                await self.platform.record_event(event, decision.reason)
            return
        previous = self._logged[1] if self._logged else None
        self._logged = key
        acts = "; ".join(actions.describe(a) for a in decision.actions) or "nothing to do"
        self._log.info(
            "shard %s: %s: %s -> %s", snap.index, decision.kind.value, decision.reason, acts
        )
        if event is not None and decision.kind != previous:
            self._last_event_at = now
            await self.platform.record_event(event, decision.reason)

    # -- actions -------------------------------------------------------------------------

    async def _execute(
        self,
        snap: state.ShardSnapshot,
        todo: tuple[actions.Action, ...],
        began: float | None = None,
    ) -> bool:
        """Run ``todo`` in order; ``False`` after the first failure (logged + event).
        ``began``: when the change of primary began (failure detected, switchover
        announced), for the record of what it cost."""
        version = snap.version
        promoted_at: float | None = None
        for action in todo:
            try:
                match action:
                    case actions.SetSyncStandbys(member, value):
                        await self.platform.set_sync_standbys(member, value)
                        await self._event(base.EventReason.SYNC_STANDBYS, action)
                    case actions.Fence(member):
                        await self.platform.fence(member)
                        await self._event(base.EventReason.FENCED, action)
                    case actions.Promote(member, epoch, replaces):
                        await self.platform.promote(member, epoch, replaces)
                        promoted_at = self._clock()
                        await self._event(base.EventReason.PROMOTED, action)
                    case actions.PublishTopology(shard):
                        shard = self._recorded(snap.shard, shard, began, promoted_at)
                        version = await self.platform.publish_topology(shard, version)
                        self._last_refresh = self._clock()
                    case actions.Repoint(member, primary):
                        try:
                            await self.platform.repoint(member, primary)
                        except base.PlatformConflict as e:
                            # E.g. it holds WAL past the new primary's fork: repointed,
                            # it would run but never stream; a rejoin rewinds it.
                            self._log.info("shard %s: %s; rejoining it", snap.index, e)
                            self._start_rejoin(member, primary)
                            continue
                        await self._event(base.EventReason.REPOINTED, action)
                    case actions.Rejoin(member, primary):
                        self._start_rejoin(member, primary)
            except Exception as e:
                what = actions.describe(action)
                self._log.warning("shard %s: %s failed: %s", snap.index, what, e)
                self.tally.count(self.tally.errors, "action")
                await self.platform.record_event(
                    base.EventReason.ACTION_FAILED, f"{what} failed: {e}"
                )
                return False
        return True

    def _recorded(
        self,
        current: topology.Shard,
        shard: topology.Shard,
        began: float | None,
        promoted_at: float | None,
    ) -> topology.Shard:
        """``shard`` with a new promotion's record completed (timings) and appended to
        ``failoverHistory``; other records keep the published history."""
        last, before = shard.last_failover, current.last_failover
        if last is None or (before is not None and before.get("epoch") == last.get("epoch")):
            return dataclasses.replace(shard, failover_history=current.failover_history)
        done = history.completed(last, began, promoted_at, self._clock())
        return dataclasses.replace(
            shard,
            last_failover=done,
            failover_history=history.appended(current.failover_history, done),
        )

    async def _count_requests(self, began: float) -> None:
        """Remember the proxies' counts at the start of a change of primary."""
        counts = await self._read_counts()
        if counts is not None:
            self._counts_before = (began, counts)

    async def _read_counts(self) -> history.RequestCounts | None:
        """The proxies' counts now, or None (not available, or not within 1 s)."""
        if self._proxy_counts is None:
            return None
        try:
            async with asyncio.timeout(1.0):
                return await self._proxy_counts()
        except (TimeoutError, OSError) as e:
            self._log.info("reading the proxies' request counts failed: %s", e)
            return None

    async def _event(self, reason: base.EventReason, action: actions.Action) -> None:
        await self.platform.record_event(reason, actions.describe(action))

    def _start_rejoin(self, member: str, primary: str) -> None:
        running = self._rejoins.get(member)
        if running is not None and not running.done():
            return
        under, retry_at = self._rejoin_retry_at.get(member, (primary, float("-inf")))
        if under == primary and self._clock() < retry_at:
            return  # a new primary is worth trying at once
        task = asyncio.create_task(self._rejoin(member, primary), name=f"rejoin-{member}")
        self._rejoins[member] = task

    async def _rejoin(self, member: str, primary: str) -> None:
        try:
            result = await self.platform.rejoin(member, primary)
        except Exception as e:
            failures = self._rejoin_failures.get(member, 0) + 1
            self._rejoin_failures[member] = failures
            self._rejoin_errors[member] = str(e)
            delay = min(_REJOIN_RETRY_MAX_SECONDS, _REJOIN_RETRY_SECONDS * 2 ** (failures - 1))
            self._rejoin_retry_at[member] = (primary, self._clock() + delay)
            self._log.warning(
                "rejoin of %s as follower of %s failed (%d in a row): %s; retrying in %.0fs",
                member,
                primary,
                failures,
                e,
                delay,
            )
            await self.platform.record_event(
                base.EventReason.ACTION_FAILED,
                f"rejoin {member} failed: {e}; retrying in {delay:.0f}s against whatever "
                f"the primary is then",
            )
            return
        self._rejoin_failures.pop(member, None)
        self._rejoin_errors.pop(member, None)
        # Give it STUCK_FOLLOWER_SECONDS to open for connections, and to stream, before
        # judging it again.
        down = dict(self._memory.followers_down_since)
        down.pop(member, None)
        idle = dict(self._memory.not_streaming_since)
        idle.pop(member, None)
        self._memory = dataclasses.replace(
            self._memory,
            followers_down_since=types.MappingProxyType(down),
            not_streaming_since=types.MappingProxyType(idle),
        )
        message = (
            f"{member} rejoined as follower of {primary} by {result.method.value}; "
            f"discarded {result.discarded_bytes} bytes of WAL"
            + (
                f", {result.discarded_entries} log entries"
                if result.discarded_entries is not None
                else ""
            )
        )
        self._log.info(message)
        await self.platform.record_event(base.EventReason.REJOINED, message)
        counts = await self._settled_counts()
        async with self._lock:
            await self._record_rejoin(member, result, counts)

    async def _settled_counts(self) -> history.RequestCounts | None:
        """The proxies' counts once they hold no request: a fast rejoin can end before a
        proxy has read the new primary, while the requests it held are not counted yet;
        and until one reported a write on the new primary, or the grace after the
        publication is over. Read outside the lock, so that the manager goes on
        publishing meanwhile."""
        if self._proxy_counts is None:
            return None
        snap = self._snapshot
        last = snap.last_failover if snap is not None else None
        grace_until = float("-inf")
        if snap is not None and last is not None and last.published_at is not None:
            grace_until = last.published_at + _FIRST_WRITE_GRACE_SECONDS
        deadline = self._clock() + _COUNTS_SETTLE_SECONDS
        settled: history.RequestCounts | None = None
        while True:
            counts = await self._read_counts()
            if counts is None:
                return settled
            if counts.waiting == 0:
                settled = counts
                if (
                    self._clock() >= grace_until
                    or snap is None
                    or last is None
                    or counts.first_write(snap.index, last.epoch) is not None
                ):
                    return counts
            if self._clock() >= deadline:
                return counts
            await asyncio.sleep(0.1)

    async def _record_rejoin(
        self, member: str, result: state.RejoinResult, counts: history.RequestCounts | None
    ) -> None:
        """Put the rejoin's outcome into ``lastFailover`` if ``member`` was the old primary."""
        for _ in range(3):
            snap = await self.platform.read_snapshot()
            last = snap.last_failover
            if last is None or last.old_primary != member or last.rejoin is not None:
                return
            failed = buffered = None
            before = self._counts_before
            if counts is not None and before is not None and last.at >= before[0]:
                delta = counts.since(before[1])
                if delta.failed >= 0 and delta.buffered >= 0:  # else a proxy restarted
                    failed, buffered = delta.failed, delta.buffered
            first = counts.first_write(snap.index, last.epoch) if counts is not None else None
            detected = last.detected_at
            waited = None
            if first is not None and detected is not None:
                waited = round(first - detected, 3)
            done = dataclasses.replace(
                last,
                rejoin=result.method,
                fork_lsn=result.fork_lsn,
                discarded_bytes=result.discarded_bytes,
                discarded_entries=result.discarded_entries,
                requests_failed=failed,
                requests_buffered=buffered,
                first_write_at=first,
                first_write_seconds=waited,
            )
            record = done.to_dict()
            shard = dataclasses.replace(
                snap.shard,
                last_failover=record,
                failover_history=history.replaced(snap.shard.failover_history, record),
            )
            try:
                await self.platform.publish_topology(shard, snap.version)
                return
            except base.PlatformConflict:
                continue
        self._log.warning("could not record the rejoin of %s: the record kept changing", member)

    async def _refresh_positions(
        self,
        snap: state.ShardSnapshot,
        obs: Mapping[str, state.MemberObservation],
        decision: decide.Decision,
        now: float,
    ) -> None:
        """Publish fresh positions and lag now and then (structure changes go at once)."""
        if any(isinstance(a, actions.PublishTopology) for a in decision.actions):
            return
        if now - self._last_refresh < self.policy.status_refresh_seconds:
            return
        shard = record.shard_record(
            snap,
            obs,
            primary=snap.primary,
            epoch=snap.epoch,
            last_failover=snap.last_failover,
            sync_standbys=snap.shard.sync_standbys,
        )
        if shard == snap.shard:
            return
        try:
            await self.platform.publish_topology(shard, snap.version)
            self._last_refresh = now
        except base.PlatformConflict:
            pass  # someone else wrote; the next cycle reads it and tries again

    # -- requests and status ---------------------------------------------------------------

    def request_failover(self) -> None:
        """Fail over on the next cycle even if cooldown, maxLagBytes or the sync/quorum
        check would refuse (an operator accepting data loss). The lease is still
        respected, and nothing happens if the primary is healthy."""
        self._force = True

    async def request_switchover(self, target: str | None = None) -> state.LastFailover:
        """Planned switchover to ``target`` (or the best follower) with no acknowledged
        write lost. Raises :class:`switchover.SwitchoverRefused` before touching anything,
        or :class:`SwitchoverFailed` if it stopped part-way (then the ordinary failover
        logic takes over)."""
        async with self._lock:
            self._switching = True
            started = self._clock()
            try:
                done = await self._switchover(target)
            finally:
                self._switching = False
            self.tally.count(self.tally.promotions, ("switchover", "requested"))
            self.tally.last_failover_seconds = self._clock() - started
            return done

    async def _switchover(self, target: str | None) -> state.LastFailover:
        snap = await self.platform.read_snapshot()
        obs = await self._observe_all(snap)
        the_plan = switchover.plan(snap, obs, target, self.policy)
        old, new = the_plan.old_primary, the_plan.target
        await self.platform.record_event(
            base.EventReason.SWITCHOVER, f"switching over from {old} to {new}"
        )
        began = self._clock()
        await self._count_requests(began)
        pol = self.policy
        until = began + pol.switchover_drain_seconds + pol.switchover_timeout_seconds + 10.0
        announced = await self._announce_switching(snap, new, until)
        try:
            if announced is not None:
                # Proxies notice, and statements already sent finish.
                await asyncio.sleep(pol.switchover_drain_seconds)
            return await self._switch(snap, the_plan, began)
        except BaseException:
            if announced is not None:
                await self._withdraw_switching()
            raise

    async def _announce_failover(
        self, snap: state.ShardSnapshot, decision: decide.Decision
    ) -> state.ShardSnapshot | None:
        """With ``proxy.bufferOnFailover``: announce a decided promotion like a switchover,
        so that proxies hold the shard's requests not yet sent instead of sending them to
        the dead primary (requests in flight there still fail: a crash's outcome for them
        is unknown). Announced at the decision, not at a first failed probe: only then is
        the primary known gone for good (unreachable for ``detectionSeconds`` or its
        process dead, its lease run out so it acknowledges nothing more) and a new primary
        chosen and coming; holding earlier would delay every request through a blip that
        heals by itself, and for a failover that may never be allowed. The snapshot as
        announced, or None (not on, no promotion, or the announcement failed)."""
        target = next((a.member for a in decision.actions if isinstance(a, actions.Promote)), None)
        if target is None or not self.policy.failover_buffer_seconds:
            return None
        until = self._clock() + self.policy.failover_buffer_seconds
        return await self._announce_switching(snap, target, until)

    async def _announce_switching(
        self, snap: state.ShardSnapshot, target: str, until: float
    ) -> state.ShardSnapshot | None:
        """Publish the shard as ``switching`` to ``target`` until ``until`` (proxies hold
        its new requests); the snapshot as published. Best effort: a change of primary
        that cannot announce itself still runs (None; clients then see the errors they
        saw before buffering existed)."""
        now = self._clock()
        record = dataclasses.replace(
            snap.shard, switching=topology.Switching(target=target, since=now, until=until)
        )
        try:
            version = await self.platform.publish_topology(record, snap.version)
        except base.PlatformError as e:
            self._log.warning("shard %s: announcing the switch failed: %s", snap.index, e)
            return None
        self._log.info("shard %s: announced the switch to %s to the proxies", snap.index, target)
        return dataclasses.replace(snap, shard=record, version=version)

    async def _withdraw_switching(self) -> None:
        """The switchover or failover stopped part-way: stop proxies holding requests for
        it (the ordinary failover logic takes the shard from here)."""
        for _ in range(3):
            try:
                snap = await self.platform.read_snapshot()
                if snap.shard.switching is None:
                    return
                record = dataclasses.replace(snap.shard, switching=None)
                await self.platform.publish_topology(record, snap.version)
                return
            except base.PlatformConflict:
                continue
            except base.PlatformError as e:
                self._log.warning("withdrawing the switch announcement failed: %s", e)
                return

    async def _switch(
        self, snap: state.ShardSnapshot, the_plan: switchover.SwitchoverPlan, began: float
    ) -> state.LastFailover:
        old, new = the_plan.old_primary, the_plan.target
        self._log.info("shard %s: switchover from %s to %s: fencing %s", snap.index, old, new, old)
        final = await self.platform.fence(old)
        if final is None:
            raise SwitchoverFailed(
                f"{old} is fenced but its end of WAL is unknown, so {new} cannot be shown to "
                f"hold every write; the automatic failover takes over from here"
            )
        member = snap.member(new)
        deadline = self._clock() + self.policy.switchover_timeout_seconds
        while True:
            t_obs = await self._observer(
                new, member.dsn, self.policy.probe_timeout_seconds, member.process
            )
            if switchover.caught_up(t_obs, final, self.policy.replication.statement):
                break
            if self._clock() >= deadline:
                raise SwitchoverFailed(
                    f"{new} did not replay {old}'s last WAL within "
                    f"{self.policy.switchover_timeout_seconds:g}s (it is at "
                    f"{t_obs.replayed_lsn}, needs > {final}); {old} stays fenced and the "
                    f"automatic failover takes over"
                )
            await asyncio.sleep(0.05)
        snap = await self.platform.read_snapshot()
        obs = await self._observe_all(snap)
        steps = switchover.finish_actions(snap, obs, self.policy, the_plan, self._clock())
        if not await self._execute(snap, steps, began=began):
            raise SwitchoverFailed(
                f"promoting {new} failed after {old} was fenced (see the events); "
                f"the automatic failover takes over"
            )
        published = next(a for a in steps if isinstance(a, actions.PublishTopology))
        assert published.shard.last_failover is not None
        return state.LastFailover.from_dict(published.shard.last_failover)

    def status(self) -> ManagerStatus:
        snap, decision = self._snapshot, self._decision
        last = snap.last_failover if snap else None
        remaining = 0.0
        if last is not None:
            remaining = max(0.0, self.policy.failover.cooldown_seconds - (self._clock() - last.at))
        return ManagerStatus(
            kind=decision.kind if decision else None,
            reason=decision.reason if decision else "no cycle has finished yet",
            epoch=snap.epoch if snap else None,
            primary=snap.primary if snap else None,
            cooldown_remaining=remaining,
            last_failover=last,
            switchover_in_progress=self._switching,
            members=self._member_notes(snap) if snap else {},
        )

    def _member_notes(self, snap: state.ShardSnapshot) -> dict[str, str]:
        """Why each follower that is not ready is not (status ``members``)."""
        notes: dict[str, str] = {}
        now = self._clock()
        sync = snap.shard.sync_standbys
        for m in snap.followers():
            obs = self._observations.get(m.name)
            task = self._rejoins.get(m.name)
            if task is not None and not task.done():
                notes[m.name] = "rejoining as a follower"
            elif m.name in self._rejoin_failures:
                _, at = self._rejoin_retry_at[m.name]
                notes[m.name] = (
                    f"rejoin failed {self._rejoin_failures[m.name]} time(s) in a row "
                    f"({self._rejoin_errors.get(m.name, '?')}); next attempt under the "
                    f"primary then, in {max(0.0, at - now):.0f}s at the latest"
                )
            elif m.bootstrapping:
                notes[m.name] = "bootstrapping (creating its data from the primary)"
            elif obs is None or not obs.ok:
                notes[m.name] = f"not answering ({obs.error if obs else 'not observed'})"
            elif obs.in_recovery is not True:
                notes[m.name] = "writable but not the primary: being fenced and rejoined"
            elif (
                self.policy.replication.required_acks and sync is not None and (m.name not in sync)
            ):
                notes[m.name] = (
                    "not caught up at this epoch yet: acknowledges no commit and cannot "
                    "be promoted until it has"
                )
        return notes
