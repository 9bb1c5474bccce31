"""Safe roll-out of spec changes to a shard's pods (pure decisions).

StatefulSets use ``updateStrategy: OnDelete``, so pods keep their old template
until the operator deletes them. The handlers' per-cluster daemon calls
:func:`next_step` for each shard with what it read from the API and carries out
the answer: restart outdated followers one at a time, each only while every
other member is ready (an outdated member that is not ready, while another serves as
primary, is restarted at once: it serves nothing, and waiting for it could last
forever, e.g. after a spec reverted from an image it cannot start on); then move the
primary role to an up-to-date follower (planned switchover, no acknowledged write
lost); the old primary is then an outdated follower and is restarted like the others.
:func:`scale_plan` keeps a lowered ``replicasPerShard`` from deleting the pod that is
the primary (the StatefulSet removes the highest ordinals).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

from .. import naming


@dataclasses.dataclass(frozen=True)
class MemberPod:
    """One shard pod as read from the API."""

    name: str
    ordinal: int
    role: naming.Role | None
    """From the ``pgshard.io/role`` label; None before the control plane set it."""
    revision: str
    """The pod's ``controller-revision-hash`` label."""
    ready: bool
    deleting: bool = False


class StepKind(enum.Enum):
    DONE = "Done"
    WAIT = "Wait"
    RESTART = "Restart"
    SWITCHOVER = "Switchover"


@dataclasses.dataclass(frozen=True)
class Step:
    kind: StepKind
    reason: str
    pod: str | None = None
    """RESTART: the pod to delete. SWITCHOVER: the follower to promote."""


def next_step(pods: Sequence[MemberPod], update_revision: str, expected: int) -> Step:
    """The one next action that brings a shard's pods to ``update_revision``."""
    outdated = [p for p in pods if p.revision != update_revision]
    if not outdated:
        return Step(StepKind.DONE, "every member runs the current template")
    busy = [p for p in pods if p.deleting or not p.ready]
    serving = [p for p in pods if p.role is naming.Role.PRIMARY and p.ready and not p.deleting]
    stuck = [p for p in outdated if not p.ready and p.role is not naming.Role.PRIMARY]
    if serving and stuck and not any(p.deleting for p in pods):
        # A member that cannot come up on its template (a spec reverted after a bad
        # image, say) would hold the roll-out forever: it serves nothing, so it may go.
        pod = max(stuck, key=lambda p: p.ordinal)
        return Step(
            StepKind.RESTART,
            f"restarting {pod.name}: not ready on an outdated template while "
            f"{serving[0].name} serves as primary",
            pod.name,
        )
    if busy or len(pods) < expected:
        names = ", ".join(sorted(p.name for p in busy)) or "a missing member"
        return Step(StepKind.WAIT, f"waiting for {names} to be ready before the next restart")
    followers = [p for p in outdated if p.role is not naming.Role.PRIMARY]
    if followers:
        # Highest ordinal first: the members most recently added are the least
        # likely to be anyone's switchover target.
        pod = max(followers, key=lambda p: p.ordinal)
        return Step(
            StepKind.RESTART, f"restarting follower {pod.name} on the new template", pod.name
        )
    (primary,) = outdated
    targets = sorted(
        (p for p in pods if p.role is naming.Role.REPLICA and p.revision == update_revision),
        key=lambda p: p.ordinal,
    )
    if not targets:
        return Step(
            StepKind.RESTART,
            f"restarting primary {primary.name}: the shard has no follower to switch over to "
            "(writes pause until it is back)",
            primary.name,
        )
    return Step(
        StepKind.SWITCHOVER,
        f"switching over from {primary.name} to {targets[0].name} before restarting it",
        targets[0].name,
    )


@dataclasses.dataclass(frozen=True)
class ScalePlan:
    replicas: int
    """What to set on the StatefulSet now."""
    switchover_to: str | None = None
    """A follower that must become primary first, so that scaling down keeps it."""
    reason: str = ""


def scale_plan(
    cluster: str, shard: int, desired: int, current: int, pods: Sequence[MemberPod]
) -> ScalePlan:
    """StatefulSet replicas to set now for ``desired`` members per shard."""
    if desired >= current:
        return ScalePlan(desired)
    primary = next((p for p in pods if p.role is naming.Role.PRIMARY), None)
    if primary is None or primary.ordinal < desired:
        return ScalePlan(desired)
    target = next(
        (
            p
            for p in sorted(pods, key=lambda p: p.ordinal)
            if p.ordinal < desired and p.role is naming.Role.REPLICA and p.ready
        ),
        None,
    )
    if target is None:
        return ScalePlan(
            current,
            reason=f"not scaling {naming.shard_statefulset(cluster, shard)} down yet: its "
            f"primary {primary.name} would be removed and no ready follower can take over",
        )
    return ScalePlan(
        current,
        switchover_to=target.name,
        reason=f"switching over from {primary.name} to {target.name} before scaling down",
    )
