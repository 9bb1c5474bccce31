"""The failover state machine: ``decide(snapshot, observations, now, policy, memory)``.

Pure: no awaits, no clock, no I/O (import-linter forbids asyncio/asyncpg here).
Called by ``manager`` once per cycle; its result says what state the shard is
in, why (one readable sentence), and which actions to run now. ``remember``
folds one cycle's observations into the small :class:`Memory` kept between
cycles.

Transitions, in the order they are checked:

1. no primary in the record → ``NO_PRIMARY``; one that is not a member → ``BLOCKED``;
2. a member other than the recorded primary holds a newer lease and is writable
   (a promotion whose publish was lost) → ``FAILING_OVER``: publish it;
3. primary writable → ``HEALTHY``, with upkeep actions: fence + rejoin stale
   primaries, rejoin the old primary after a failover, members whose last rejoin
   failed, followers that stopped answering for ``STUCK_FOLLOWER_SECONDS`` and (WAL
   mode) followers that answer but neither stream from the primary nor replay for as
   long, repoint followers that stream from elsewhere, publish the sync set (followers
   that caught up at this epoch join it) *then* set ``synchronous_standby_names``
   from it (``replication``), publish other changes;
4. otherwise the primary is down. Failover disabled → ``BLOCKED``. Process not
   known gone nor being stopped: unreachable for less than ``detectionSeconds`` →
   ``PRIMARY_SUSPECT``. Within ``cooldownSeconds`` of the last failover →
   ``COOLDOWN``. Its lease may still be valid → ``WAITING_LEASE``. No
   promotable follower, sync/quorum safety not certain (too few members of the
   published sync set answer; only they are candidates), or (async) the best
   candidate is more than ``maxLagBytes`` behind → ``BLOCKED`` (``force``
   overrides the cooldown and these three, never the lease). Else → ``FAILING_OVER``.
"""

from __future__ import annotations

import dataclasses
import enum
import types
from collections.abc import Collection, Mapping

from pgshard_proxy.contract import positions

from . import actions, order, policy, record, replication, state

STUCK_FOLLOWER_SECONDS = 30.0
"""A follower that answered before and has not for this long, while its process runs, is
rejoined under the current primary (again this long after each rejoin). So is a WAL
follower that answers, points at the primary, is not connected to it and replays
nothing for this long: e.g. one repointed while it held WAL past the new primary's
fork, which PostgreSQL keeps running but never lets stream again."""


class DecisionKind(enum.Enum):
    """The shard's state as the manager sees it (shown in status)."""

    HEALTHY = "healthy"
    """Primary writable; actions, if any, are upkeep (sync standbys, repoint, rejoin)."""
    PRIMARY_SUSPECT = "primary-suspect"
    """Primary unreachable for less than detectionSeconds: keep probing."""
    WAITING_LEASE = "waiting-lease"
    """Primary unreachable long enough, but its lease may still be valid."""
    FAILING_OVER = "failing-over"
    """Promoting a follower (the actions do it)."""
    COOLDOWN = "cooldown"
    """Primary down, but the last failover was less than cooldownSeconds ago."""
    BLOCKED = "blocked"
    """Primary down and no automatic failover is safe or allowed; the reason says why."""
    NO_PRIMARY = "no-primary"
    """The shard record names no primary (not bootstrapped yet)."""


@dataclasses.dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    reason: str
    actions: tuple[actions.Action, ...] = ()
    forceable: bool = False
    """BLOCKED only by a check an operator's forced failover overrides (the manager then
    names the command; the reason says what forcing loses)."""


@dataclasses.dataclass(frozen=True)
class Memory:
    """What the manager remembers between cycles (kept in memory; losing it on restart
    is safe: it only makes the manager wait longer or know less about lag)."""

    epoch: int | None = None
    """The epoch these facts are about; a new epoch starts a fresh memory."""
    primary_unreachable_since: float | None = None
    """When the primary was first seen not writable in the current outage."""
    last_primary_position: positions.Position | None = None
    """The primary's write position at the last successful probe (for maxLagBytes)."""
    epoch_start_position: positions.Position | None = None
    """The primary's write position at its first successful probe at this epoch: a
    follower that flushed this far holds everything it inherited (joins the sync set)."""
    followers_down_since: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )
    """Follower that answered once -> since when it has not answered (kept across epochs)."""
    not_streaming_since: Mapping[str, tuple[float, positions.Position | None]] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )
    """Follower that answers, points at the writable primary and is not connected to it ->
    (since when, its position then); a position that moves on starts the time again (it
    is replaying its own WAL before it connects). Reset at each epoch."""
    answered: frozenset[str] = frozenset()
    """Members seen answering since the manager started (a member still being created
    has not: it is never taken for a stuck follower)."""
    rejoin_failed: frozenset[str] = frozenset()
    """Members whose last rejoin failed (the manager keeps this across epochs): rejoined
    again under the current primary, e.g. after the primary they were rejoining failed."""


def remember(
    memory: Memory,
    snapshot: state.ShardSnapshot,
    observations: Mapping[str, state.MemberObservation],
    now: float,
) -> Memory:
    """Memory after this cycle's observations."""
    answered = memory.answered | {n for n, o in observations.items() if o.ok}
    down = {
        m.name: memory.followers_down_since.get(m.name, now)
        for m in snapshot.followers()
        if m.name in answered
        and not m.bootstrapping
        and not (m.name in observations and observations[m.name].ok)
    }
    if memory.epoch != snapshot.epoch:
        memory = Memory(epoch=snapshot.epoch, rejoin_failed=memory.rejoin_failed)
    kept = dataclasses.replace(
        memory, followers_down_since=types.MappingProxyType(down), answered=answered
    )
    obs = observations.get(snapshot.primary) if snapshot.primary else None
    if obs is not None and _writable(obs):
        return dataclasses.replace(
            kept,
            primary_unreachable_since=None,
            last_primary_position=obs.current_lsn or memory.last_primary_position,
            epoch_start_position=obs.current_lsn
            if memory.epoch_start_position is None
            else memory.epoch_start_position,
            not_streaming_since=_not_streaming(memory, snapshot, observations, obs, now),
        )
    since = memory.primary_unreachable_since
    return dataclasses.replace(
        kept,
        primary_unreachable_since=now if since is None else since,
        not_streaming_since=types.MappingProxyType({}),  # not judged without a primary
    )


def _not_streaming(
    memory: Memory,
    snapshot: state.ShardSnapshot,
    observations: Mapping[str, state.MemberObservation],
    p_obs: state.MemberObservation,
    now: float,
) -> Mapping[str, tuple[float, positions.Position | None]]:
    """``Memory.not_streaming_since`` after this cycle (the primary is writable)."""
    primary = snapshot.member(snapshot.primary or "")
    connected = {r.name for r in p_obs.replicas}
    out: dict[str, tuple[float, positions.Position | None]] = {}
    for m in snapshot.followers():
        obs = observations.get(m.name)
        if (
            obs is None
            or m.bootstrapping
            or not obs.ok
            or not obs.in_recovery
            or obs.upstream != primary.address
            or m.name in connected
        ):
            continue
        since, seen = memory.not_streaming_since.get(m.name, (now, obs.position))
        moved = obs.position is not None and (seen is None or obs.position > seen)
        out[m.name] = (now, obs.position) if moved else (since, seen)
    return types.MappingProxyType(out)


def _writable(obs: state.MemberObservation) -> bool:
    return obs.ok and obs.in_recovery is False


def decide(
    snapshot: state.ShardSnapshot,
    observations: Mapping[str, state.MemberObservation],
    now: float,
    pol: policy.ShardPolicy,
    memory: Memory,
    *,
    force: bool = False,
) -> Decision:
    """The decision for this cycle. ``observations`` is keyed by member name; ``memory``
    must already include this cycle (:func:`remember`). ``force`` is an operator's
    explicit request to fail over accepting loss (ignores cooldown, maxLagBytes and the
    sync/quorum check; never the lease)."""
    primary = snapshot.primary
    if primary is None:
        return Decision(DecisionKind.NO_PRIMARY, "the shard record names no primary yet")
    names = sorted(m.name for m in snapshot.members)
    if primary not in names:
        return Decision(
            DecisionKind.BLOCKED,
            f"the shard record's primary {primary} is not a member of the shard "
            f"(members: {', '.join(names) or 'none'}); fix the platform's member list",
        )
    lease = snapshot.lease
    if lease is not None and lease.holder != primary and lease.epoch > snapshot.epoch:
        holder = observations.get(lease.holder)
        if holder is not None and _writable(holder):
            return _complete_promotion(snapshot, observations, now, pol, lease)
    p_obs = observations.get(primary)
    if p_obs is not None and _writable(p_obs):
        return _healthy(snapshot, observations, now, pol, memory)
    return _primary_down(snapshot, observations, now, pol, memory, force)


def _complete_promotion(
    snapshot: state.ShardSnapshot,
    observations: Mapping[str, state.MemberObservation],
    now: float,
    pol: policy.ShardPolicy,
    lease: state.Lease,
) -> Decision:
    last = state.LastFailover(
        kind=state.FailoverKind.FAILOVER,
        at=now,
        old_primary=snapshot.primary,
        new_primary=lease.holder,
        epoch=lease.epoch,
        reason=f"{lease.holder} was promoted at epoch {lease.epoch} but not yet published",
    )
    others = [m.name for m in snapshot.members if m.name != lease.holder]
    sync: Collection[str] | None = None
    if pol.replication.required_acks:
        # Whoever its setting lists may have acknowledged commits already.
        named = replication.listed(observations[lease.holder].sync_standby_names)
        sync = others if named is None else named & set(others)
    shard = record.shard_record(
        snapshot,
        observations,
        primary=lease.holder,
        epoch=lease.epoch,
        last_failover=last,
        sync_standbys=sync,
    )
    return Decision(
        DecisionKind.FAILING_OVER,
        f"completing failover: {last.reason}",
        (actions.PublishTopology(shard),),
    )


def _healthy(
    snapshot: state.ShardSnapshot,
    observations: Mapping[str, state.MemberObservation],
    now: float,
    pol: policy.ShardPolicy,
    memory: Memory,
) -> Decision:
    primary = snapshot.member(snapshot.primary or "")
    p_obs = observations[primary.name]
    todo: list[actions.Action] = []
    notes: list[str] = []
    last = snapshot.last_failover
    rejoining: set[str] = set()
    for m in snapshot.followers():
        obs = observations.get(m.name)
        if obs is not None and _writable(obs):
            # A second writable member: an old primary that came back (SIGCONT, restart
            # from old data). Its lease is gone, so it acknowledges nothing; make sure.
            todo += [actions.Fence(m.name), actions.Rejoin(m.name, primary.name)]
            notes.append(f"{m.name} is writable but not the primary: fencing and rejoining")
            rejoining.add(m.name)
        elif (
            last is not None
            and last.old_primary == m.name
            and last.rejoin is None
            and last.epoch == snapshot.epoch
            and not m.bootstrapping
        ):
            todo.append(actions.Rejoin(m.name, primary.name))
            notes.append(f"old primary {m.name} rejoins")
            rejoining.add(m.name)
        elif m.process is state.ProcessState.GONE and not m.bootstrapping:
            todo.append(actions.Rejoin(m.name, primary.name))
            notes.append(f"{m.name} is gone: restarting it as a follower")
            rejoining.add(m.name)
        elif m.name in memory.rejoin_failed and not m.bootstrapping and not (obs and obs.ok):
            # E.g. the primary it was rejoining failed; the manager spaces the attempts.
            todo.append(actions.Rejoin(m.name, primary.name))
            notes.append(f"{m.name}'s last rejoin failed: rejoining it under {primary.name}")
            rejoining.add(m.name)
        elif (
            m.process is state.ProcessState.ALIVE
            and now - memory.followers_down_since.get(m.name, now) >= STUCK_FOLLOWER_SECONDS
        ):
            # E.g. it rejoined under a primary that failed before it was consistent: it
            # cannot open for connections, so it cannot be repointed either.
            todo.append(actions.Rejoin(m.name, primary.name))
            notes.append(
                f"{m.name} has not answered for "
                f"{now - memory.followers_down_since[m.name]:.0f}s: restarting it as a "
                f"follower of {primary.name}"
            )
            rejoining.add(m.name)
        elif (
            m.process is state.ProcessState.ALIVE
            and not pol.replication.statement
            and now - memory.not_streaming_since.get(m.name, (now, None))[0]
            >= STUCK_FOLLOWER_SECONDS
        ):
            todo.append(actions.Rejoin(m.name, primary.name))
            notes.append(
                f"{m.name} answers but has neither streamed from {primary.name} nor "
                f"replayed for {now - memory.not_streaming_since[m.name][0]:.0f}s: "
                "rejoining it (rewound if it holds WAL past the fork)"
            )
            rejoining.add(m.name)
    for m in snapshot.followers():
        obs = observations.get(m.name)
        if (
            m.name not in rejoining
            and obs is not None
            and obs.ok
            and obs.in_recovery
            and obs.upstream != primary.address
        ):
            todo.append(actions.Repoint(m.name, primary.name))
            notes.append(f"{m.name} streams from {obs.upstream or 'nowhere'}")
    sync = _sync_set(snapshot, p_obs, pol, memory)
    shard = record.shard_record(
        snapshot,
        observations,
        primary=primary.name,
        epoch=snapshot.epoch,
        last_failover=last,
        sync_standbys=sync,
    )
    if not record.same_structure(shard, snapshot.shard):
        # Before the setting below: a follower is in the published sync set before
        # it can acknowledge a commit.
        todo.append(actions.PublishTopology(shard))
    if sync is not None:
        added = sorted(set(sync) - set(snapshot.shard.sync_standbys or ()))
        if added and snapshot.shard.sync_standbys is not None:
            notes.append(f"{', '.join(added)} caught up: may acknowledge commits")
    wanted = replication.standby_names(pol.replication, sync or ())
    if p_obs.sync_standby_names is not None and p_obs.sync_standby_names != wanted:
        todo.append(actions.SetSyncStandbys(primary.name, wanted))
        notes.append(f"synchronous_standby_names should be {wanted!r}")
    reason = f"primary {primary.name} is writable at epoch {snapshot.epoch}"
    if notes:
        reason += "; " + "; ".join(notes)
    return Decision(DecisionKind.HEALTHY, reason, tuple(todo))


def _sync_set(
    snapshot: state.ShardSnapshot,
    p_obs: state.MemberObservation,
    pol: policy.ShardPolicy,
    memory: Memory,
) -> tuple[str, ...] | None:
    """The sync set to publish: the published one, plus whatever the primary's setting
    lists now (it may have acknowledged through them), plus followers that caught up at
    this epoch; only current followers. ``None`` in async mode."""
    if not pol.replication.required_acks:
        return None
    followers = {m.name for m in snapshot.followers()}
    named = replication.listed(p_obs.sync_standby_names)
    sync = (
        set(snapshot.shard.sync_standbys or ())
        | (followers if named is None else set(named))
        | replication.caught_up(p_obs.replicas, memory.epoch_start_position)
    )
    return tuple(sorted(sync & followers))


def _primary_down(
    snapshot: state.ShardSnapshot,
    observations: Mapping[str, state.MemberObservation],
    now: float,
    pol: policy.ShardPolicy,
    memory: Memory,
    force: bool,
) -> Decision:
    primary = snapshot.member(snapshot.primary or "")
    p_obs = observations.get(primary.name)
    gone = primary.process in (state.ProcessState.GONE, state.ProcessState.REPLACED)
    if p_obs is None:
        what = "was not observed"
    elif p_obs.ok:
        what = "answers but is read-only"
    else:
        what = f"does not answer ({p_obs.error})"
    if gone:
        replaced = primary.process is state.ProcessState.REPLACED
        what = "was replaced by a new pod" if replaced else "process is gone"
    stopping = primary.process is state.ProcessState.STOPPING
    if stopping:
        what += " and is being stopped"
    fo = pol.failover
    if not fo.enabled and not force:
        return Decision(
            DecisionKind.BLOCKED,
            f"primary {primary.name} {what}; automatic failover is disabled "
            f"(failover.enabled=false): switch over or fail over by hand",
            forceable=True,
        )
    since = memory.primary_unreachable_since
    down_for = 0.0 if since is None else now - since
    if not gone and not stopping and down_for < fo.detection_seconds:
        return Decision(
            DecisionKind.PRIMARY_SUSPECT,
            f"primary {primary.name} {what} for {down_for:.1f}s; failing over after "
            f"{fo.detection_seconds:g}s",
        )
    lease = snapshot.lease
    # A holder proven gone (GONE: the platform saw its processes exit) cannot acknowledge
    # any write, so its lease protects nothing; any other lease may (REPLACED: its pod
    # object went away, which a forced deletion or a lost node does with processes still
    # running). The lease counts as valid for maxClockSkew past its written expiry.
    skew = fo.max_clock_skew_seconds
    holder_gone = (
        primary.process is state.ProcessState.GONE
        and lease is not None
        and lease.holder == primary.name
    )
    lease_wait = lease is not None and lease.may_be_valid(now - skew) and not holder_gone
    last = snapshot.last_failover
    # Cooldown is reported before the lease wait: it is the user-visible reason the
    # shard stays down, and it usually outlasts the lease (the lease is still honoured
    # when it ends).
    if last is not None and not force and now - last.at < fo.cooldown_seconds:
        lease_note = (
            f"; the lease also has {lease.seconds_left(now - skew):.1f}s left"
            if lease is not None and lease_wait
            else ""
        )
        return Decision(
            DecisionKind.COOLDOWN,
            f"primary {primary.name} {what}; last failover was {now - last.at:.0f}s ago, "
            f"no automatic failover for {fo.cooldown_seconds - (now - last.at):.0f}s more "
            f"(cooldownSeconds={fo.cooldown_seconds:g}){lease_note}",
        )
    if lease is not None and lease_wait:
        return Decision(
            DecisionKind.WAITING_LEASE,
            f"primary {primary.name} {what}; waiting for lease expiry, "
            f"{lease.seconds_left(now - skew):.1f}s left (held by {lease.holder}"
            + (f"; {skew:g}s allowed for clock skew)" if skew else ")"),
        )
    followers = snapshot.followers()
    seen = [observations[m.name] for m in followers if m.name in observations]
    answering = [o.name for o in seen if order.promotable(o)]
    if not answering:
        return Decision(
            DecisionKind.BLOCKED,
            f"primary {primary.name} {what}; no follower can be promoted "
            f"(none answers in recovery)",
        )
    safety = replication.failover_keeps_acks(
        pol.replication, snapshot.shard.sync_standbys, [m.name for m in followers], answering
    )
    if not safety.safe and not force:
        return Decision(
            DecisionKind.BLOCKED, f"primary {primary.name} {what}; {safety.reason}", forceable=True
        )
    pool = safety.candidates if safety.safe else frozenset(answering)
    best = order.best_candidate([observations[n] for n in sorted(pool)], fo)
    assert best is not None  # every name in pool answers in recovery
    behind = _bytes_behind(best, memory.last_primary_position)
    if (
        fo.max_lag_bytes is not None
        and behind is not None
        and behind > fo.max_lag_bytes
        and pol.replication.required_acks == 0
        and not force
    ):
        return Decision(
            DecisionKind.BLOCKED,
            f"primary {primary.name} {what}; best candidate {best.name} is {behind} bytes "
            f"behind the last known primary position (maxLagBytes={fo.max_lag_bytes}): "
            f"refusing to lose that much; forcing a failover loses up to that much",
            forceable=True,
        )
    epoch = max(snapshot.epoch, lease.epoch if lease else 0) + 1
    why = "" if gone else " (lease expired)" if lease else " (no lease held)"
    lag_note = f"{behind} bytes behind" if behind is not None else "lag unknown"
    reason = (
        f"primary {primary.name} {what}{why}; promoting {best.name} at epoch {epoch} "
        f"({lag_note}{', forced' if force else ''})"
    )
    return Decision(
        DecisionKind.FAILING_OVER,
        reason,
        promotion_actions(
            snapshot,
            observations,
            pol,
            target=best.name,
            epoch=epoch,
            last_failover=state.LastFailover(
                kind=state.FailoverKind.FAILOVER,
                at=now,
                old_primary=primary.name,
                new_primary=best.name,
                epoch=epoch,
                reason=reason,
            ),
        ),
    )


def _bytes_behind(
    obs: state.MemberObservation, primary_position: positions.Position | None
) -> int | None:
    held = obs.position
    if primary_position is None or held is None:
        return None
    return max(0, primary_position - held)


def promotion_actions(
    snapshot: state.ShardSnapshot,
    observations: Mapping[str, state.MemberObservation],
    pol: policy.ShardPolicy,
    *,
    target: str,
    epoch: int,
    last_failover: state.LastFailover,
) -> tuple[actions.Action, ...]:
    """Promote ``target`` at ``epoch``: sync standbys first (so it never acknowledges an
    unconfirmed commit), promote with the lease compare-and-set, publish, repoint the
    followers that answer. The old primary rejoins later, as upkeep. Shared with
    ``switchover``."""
    todo: list[actions.Action] = []
    others = [m.name for m in snapshot.members if m.name != target]
    sync: tuple[str, ...] | None = None
    if pol.replication.required_acks:
        sync = first_sync_set(snapshot, observations, target)
        todo.append(
            actions.SetSyncStandbys(target, replication.standby_names(pol.replication, sync))
        )
    todo.append(actions.Promote(target, epoch, snapshot.lease))
    todo.append(
        actions.PublishTopology(
            record.shard_record(
                snapshot,
                observations,
                primary=target,
                epoch=epoch,
                last_failover=last_failover,
                sync_standbys=sync,
            )
        )
    )
    for name in others:
        obs = observations.get(name)
        if name != snapshot.primary and obs is not None and order.promotable(obs):
            todo.append(actions.Repoint(name, target))
    return tuple(todo)


def first_sync_set(
    snapshot: state.ShardSnapshot,
    observations: Mapping[str, state.MemberObservation],
    target: str,
) -> tuple[str, ...]:
    """The sync set ``target`` starts its epoch with: the followers that hold as much WAL
    as it does, on its timeline (so they hold everything it does). The rest join once
    they have caught up under it (:func:`_sync_set`)."""
    t_obs = observations.get(target)
    if t_obs is None or t_obs.position is None:
        return ()
    return tuple(
        sorted(
            name
            for name, obs in observations.items()
            if name not in (target, snapshot.primary)
            and order.promotable(obs)
            and obs.timeline == t_obs.timeline
            and obs.position is not None
            and obs.position >= t_obs.position
        )
    )
