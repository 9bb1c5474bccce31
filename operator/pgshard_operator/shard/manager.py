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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from ..platform import base
from . import actions, decide, observe, policy, record, state, switchover

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
"""After a failed rejoin, wait this long before trying that member again."""


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.kind.value if self.kind else None,
            "reason": self.reason,
            "epoch": self.epoch,
            "primary": self.primary,
            "cooldownRemainingSeconds": round(self.cooldown_remaining, 1),
            "lastFailover": self.last_failover.to_dict() if self.last_failover else None,
            "switchoverInProgress": self.switchover_in_progress,
        }


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
    ) -> None:
        self.platform = platform
        self.policy = pol
        self._clock = clock
        self._observer = observer
        self._log = logger or logging.getLogger(__name__)
        self._on_status = on_status
        # Cycles and switchovers must not interleave: a switchover fences the primary,
        # which a cycle would otherwise take for a failure.
        self._lock = asyncio.Lock()
        self._memory = decide.Memory()
        self._decision: decide.Decision | None = None
        self._snapshot: state.ShardSnapshot | None = None
        self._logged: tuple[object, ...] | None = None
        self._force = False
        self._switching = False
        self._rejoins: dict[str, asyncio.Task[None]] = {}
        self._rejoin_retry_at: dict[str, float] = {}
        self._last_refresh = float("-inf")

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run cycles until cancelled; then stop the background rejoins."""
        try:
            while True:
                await self.run_cycle()
                await asyncio.sleep(self.policy.cycle_seconds)
        finally:
            await self.close()

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
        self._memory = decide.remember(self._memory, snap, obs, now)
        force, self._force = self._force, False
        decision = decide.decide(snap, obs, now, self.policy, self._memory, force=force)
        self._snapshot, self._decision = snap, decision
        await self._report(snap, decision)
        done = await self._execute(snap, decision.actions)
        if done and decision.kind is decide.DecisionKind.HEALTHY:
            await self._refresh_positions(snap, obs, decision, now)
        return decision

    async def _observe_all(self, snap: state.ShardSnapshot) -> dict[str, state.MemberObservation]:
        timeout = self.policy.probe_timeout_seconds
        members = [m for m in snap.members if not m.bootstrapping]

        async def one(m: state.MemberInfo) -> state.MemberObservation:
            try:
                # observe() bounds itself; this guards against an observer that does not.
                async with asyncio.timeout(timeout + 1):
                    return await self._observer(m.name, m.dsn, timeout, m.process)
            except TimeoutError:
                return state.MemberObservation.unreachable(m.name, m.process, "probe hung")

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
        if key == self._logged:
            return
        previous = self._logged[1] if self._logged else None
        self._logged = key
        acts = "; ".join(actions.describe(a) for a in decision.actions) or "nothing to do"
        self._log.info(
            "shard %s: %s: %s -> %s", snap.index, decision.kind.value, decision.reason, acts
        )
        event = _EVENT_KINDS.get(decision.kind)
        if event is not None and decision.kind != previous:
            await self.platform.record_event(event, decision.reason)

    # -- actions -------------------------------------------------------------------------

    async def _execute(self, snap: state.ShardSnapshot, todo: tuple[actions.Action, ...]) -> bool:
        """Run ``todo`` in order; ``False`` after the first failure (logged + event)."""
        version = snap.version
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
                        await self._event(base.EventReason.PROMOTED, action)
                    case actions.PublishTopology(shard):
                        version = await self.platform.publish_topology(shard, version)
                        self._last_refresh = self._clock()
                    case actions.Repoint(member, primary):
                        await self.platform.repoint(member, primary)
                        await self._event(base.EventReason.REPOINTED, action)
                    case actions.Rejoin(member, primary):
                        self._start_rejoin(member, primary)
            except Exception as e:
                what = actions.describe(action)
                self._log.warning("shard %s: %s failed: %s", snap.index, what, e)
                await self.platform.record_event(
                    base.EventReason.ACTION_FAILED, f"{what} failed: {e}"
                )
                return False
        return True

    async def _event(self, reason: base.EventReason, action: actions.Action) -> None:
        await self.platform.record_event(reason, actions.describe(action))

    def _start_rejoin(self, member: str, primary: str) -> None:
        running = self._rejoins.get(member)
        if running is not None and not running.done():
            return
        if self._clock() < self._rejoin_retry_at.get(member, float("-inf")):
            return
        task = asyncio.create_task(self._rejoin(member, primary), name=f"rejoin-{member}")
        self._rejoins[member] = task

    async def _rejoin(self, member: str, primary: str) -> None:
        try:
            result = await self.platform.rejoin(member, primary)
        except Exception as e:
            self._rejoin_retry_at[member] = self._clock() + _REJOIN_RETRY_SECONDS
            self._log.warning("rejoin of %s as follower of %s failed: %s", member, primary, e)
            await self.platform.record_event(
                base.EventReason.ACTION_FAILED, f"rejoin {member} failed: {e}"
            )
            return
        message = (
            f"{member} rejoined as follower of {primary} by {result.method.value}; "
            f"discarded {result.discarded_bytes} bytes of WAL"
        )
        self._log.info(message)
        await self.platform.record_event(base.EventReason.REJOINED, message)
        async with self._lock:
            await self._record_rejoin(member, result)

    async def _record_rejoin(self, member: str, result: state.RejoinResult) -> None:
        """Put the rejoin's outcome into ``lastFailover`` if ``member`` was the old primary."""
        for _ in range(3):
            snap = await self.platform.read_snapshot()
            last = snap.last_failover
            if last is None or last.old_primary != member or last.rejoin is not None:
                return
            done = dataclasses.replace(
                last,
                rejoin=result.method,
                fork_lsn=result.fork_lsn,
                discarded_bytes=result.discarded_bytes,
            )
            shard = dataclasses.replace(snap.shard, last_failover=done.to_dict())
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
            snap, obs, primary=snap.primary, epoch=snap.epoch, last_failover=snap.last_failover
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
            try:
                return await self._switchover(target)
            finally:
                self._switching = False

    async def _switchover(self, target: str | None) -> state.LastFailover:
        snap = await self.platform.read_snapshot()
        obs = await self._observe_all(snap)
        the_plan = switchover.plan(snap, obs, target, self.policy)
        old, new = the_plan.old_primary, the_plan.target
        await self.platform.record_event(
            base.EventReason.SWITCHOVER, f"switching over from {old} to {new}"
        )
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
            if switchover.caught_up(t_obs, final):
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
        if not await self._execute(snap, steps):
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
        )
