"""Planned switchover: the pure parts (choose and check the target, the final actions).

The manager drives the steps, because they wait on the world in between:

1. :func:`plan` checks the request against a fresh snapshot and observations
   (refusing with :class:`SwitchoverRefused` and a clear reason);
2. the manager fences the old primary (``Platform.fence``: clean shutdown, so its
   followers receive all its WAL; returns its end of WAL ``P``);
3. it observes the target until :func:`caught_up` (replayed > ``P``) — then the
   target holds every write the old primary ever acknowledged: zero loss. If
   that does not happen within ``switchoverTimeoutSeconds`` the switchover is
   abandoned and the shard is left to the ordinary failover logic (the old
   primary is fenced, so the shard is down until a failover);
4. it runs :func:`finish_actions`: promote at the next epoch, publish, repoint,
   rejoin the old primary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from pgshard_proxy.contract import positions

from . import actions, decide, order, policy, state


class SwitchoverRefused(Exception):
    """The switchover cannot start (or go on); the message says why and what to do."""


class AlreadyPrimary(SwitchoverRefused):
    """The requested target is the primary already: nothing to do (a planned switchover
    the operator repeats after it happened needs no Event)."""


@dataclasses.dataclass(frozen=True)
class SwitchoverPlan:
    old_primary: str
    target: str


def plan(
    snapshot: state.ShardSnapshot,
    observations: Mapping[str, state.MemberObservation],
    target: str | None,
    pol: policy.ShardPolicy,
) -> SwitchoverPlan:
    """Validate a switchover to ``target`` (``None``: the best follower)."""
    primary = snapshot.primary
    if primary is None:
        raise SwitchoverRefused(f"shard {snapshot.index} has no primary yet")
    p_obs = observations.get(primary)
    if p_obs is None or not p_obs.ok or p_obs.in_recovery is not False:
        raise SwitchoverRefused(
            f"primary {primary} is not writable, so a lossless switchover is impossible; "
            f"the automatic failover handles a failed primary"
        )
    names = {m.name for m in snapshot.members}
    # WAL: only a follower streaming from the primary can replay its last WAL once it is
    # fenced; any other would time out with the primary already stopped.
    streaming = {r.name for r in p_obs.replicas if r.state == "streaming"}
    if target is not None:
        if target not in names:
            raise SwitchoverRefused(
                f"shard {snapshot.index} has no member {target!r}; members: "
                f"{', '.join(sorted(names))}"
            )
        if target == primary:
            raise AlreadyPrimary(f"{target} is already the primary")
        obs = observations.get(target)
        if obs is None or not order.promotable(obs):
            detail = obs.error if obs is not None and obs.error else "not a running follower"
            raise SwitchoverRefused(f"{target} cannot be promoted: {detail}")
        if not pol.replication.statement and target not in streaming:
            raise SwitchoverRefused(
                f"{target} does not stream from {primary} now, so it could not receive "
                f"{primary}'s last WAL; wait until status shows it streaming"
            )
        chosen = target
    else:
        followers = [
            observations[n]
            for n in sorted(names - {primary})
            if n in observations and (pol.replication.statement or n in streaming)
        ]
        best = order.best_candidate(followers, pol.failover)
        if best is None:
            raise SwitchoverRefused(
                f"shard {snapshot.index} has no running follower streaming from {primary} "
                "to promote"
            )
        chosen = best.name
    if pol.replication.required_acks:
        # The promoted target must find k followers to confirm commits, or writes block.
        will_have = len(streaming - {chosen}) + 1  # + the old primary once it rejoins
        if will_have < pol.replication.required_acks:
            raise SwitchoverRefused(
                f"after promoting {chosen} only {will_have} follower(s) could confirm commits "
                f"but {pol.replication.mode.value} mode needs {pol.replication.required_acks}; "
                f"bring followers back first"
            )
    return SwitchoverPlan(old_primary=primary, target=chosen)


def caught_up(
    target_obs: state.MemberObservation,
    fence_position: positions.Position | None,
    statement: bool = False,
) -> bool:
    """Whether the target holds everything the fenced primary wrote (see Platform.fence).
    WAL: past the end of WAL (the shutdown checkpoint record); ``statement``: the last
    log entry applied."""
    if fence_position is None or not target_obs.ok or target_obs.replayed_lsn is None:
        return False
    if statement:
        return target_obs.replayed_lsn >= fence_position
    return target_obs.replayed_lsn > fence_position


def finish_actions(
    snapshot: state.ShardSnapshot,
    observations: Mapping[str, state.MemberObservation],
    pol: policy.ShardPolicy,
    the_plan: SwitchoverPlan,
    now: float,
) -> tuple[actions.Action, ...]:
    """Promote the caught-up target (``snapshot`` read after the fence), then rejoin the
    old primary under it."""
    lease = snapshot.lease
    epoch = max(snapshot.epoch, lease.epoch if lease else 0) + 1
    last = state.LastFailover(
        kind=state.FailoverKind.SWITCHOVER,
        at=now,
        old_primary=the_plan.old_primary,
        new_primary=the_plan.target,
        epoch=epoch,
        reason=f"planned switchover from {the_plan.old_primary} to {the_plan.target}",
    )
    promote = decide.promotion_actions(
        snapshot, observations, pol, target=the_plan.target, epoch=epoch, last_failover=last
    )
    return (*promote, actions.Rejoin(the_plan.old_primary, the_plan.target))
