"""The ShardedCluster ``status`` the operator writes (pure; handlers patch it).

Owns the phase, the conditions (Kubernetes convention: ``type``, ``status``,
``reason``, ``message``, ``lastTransitionTime``, ``observedGeneration``), the
``ready`` printer column and the pod views they are computed from. ``shards``
(the topology: epoch, primary, followers, positions, lastFailover) is written by
the shard managers only (``platform/kubernetes.py``).
Event reasons are CamelCase (:class:`Reason`).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Mapping, Sequence
from typing import Any

from .. import naming
from ..shard import history


class Phase(enum.Enum):
    CREATING = "Creating"
    READY = "Ready"
    DEGRADED = "Degraded"
    UPDATING = "Updating"
    INVALID = "Invalid"
    """The spec cannot be used (malformed or impossible); nothing was changed."""


class Reason(enum.Enum):
    """Reasons of conditions and Events."""

    SPEC_INVALID = "SpecInvalid"
    SPEC_IMPOSSIBLE = "SpecImpossible"
    APPLY_FAILED = "ApplyFailed"
    RECONCILED = "Reconciled"
    MEMBERS_READY = "MembersReady"
    MEMBERS_NOT_READY = "MembersNotReady"
    RESTARTING = "RestartingMember"
    SWITCHOVER_NEEDED = "SwitchoverNeeded"
    SCALE_DOWN_BLOCKED = "ScaleDownBlocked"
    PRIMARIES_AVAILABLE = "PrimariesAvailable"
    FAILOVER_BLOCKED = "FailoverBlocked"
    CERTIFICATES_ISSUED = "CertificatesIssued"
    TLS_KEPT = "TlsKept"


class ConditionType(enum.Enum):
    SPEC_VALID = "SpecValid"
    """The spec can be carried out (False: see reason/message, nothing was changed)."""
    RECONCILED = "Reconciled"
    """Every owned object matches the spec."""
    READY = "Ready"
    """Every member of every shard and every proxy pod is ready."""
    PRIMARIES_AVAILABLE = "PrimariesAvailable"
    """No shard manager refuses to give its shard a primary (False: which, why, and the
    command that forces a failover; from ``status.managers``)."""


@dataclasses.dataclass(frozen=True)
class Condition:
    type: ConditionType
    status: bool
    reason: Reason
    message: str


def merge_conditions(
    existing: Sequence[Mapping[str, Any]],
    updates: Sequence[Condition],
    now: datetime.datetime,
    generation: int,
) -> list[dict[str, Any]]:
    """Conditions with ``updates`` applied; ``lastTransitionTime`` moves only when a
    condition's status changes. Types not updated are kept as they were."""
    by_type = {str(c.get("type")): dict(c) for c in existing}
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for u in updates:
        status = "True" if u.status else "False"
        old = by_type.get(u.type.value)
        changed = old is None or old.get("status") != status
        by_type[u.type.value] = {
            "type": u.type.value,
            "status": status,
            "reason": u.reason.value,
            "message": u.message,
            "lastTransitionTime": stamp if changed or old is None else old["lastTransitionTime"],
            "observedGeneration": generation,
        }
    order = [t.value for t in ConditionType]
    return sorted(
        by_type.values(), key=lambda c: order.index(c["type"]) if c["type"] in order else 99
    )


@dataclasses.dataclass(frozen=True)
class PodView:
    """What the status needs from one shard pod."""

    name: str
    shard: int
    role: naming.Role | None
    ip: str | None
    ready: bool


def pod_view(pod: Mapping[str, Any]) -> PodView | None:
    """From a Pod object as the API returns it; None for pods that are not shard members."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        shard = int(labels[naming.SHARD_LABEL])
    except (KeyError, ValueError):
        return None
    role_text = labels.get(naming.ROLE_LABEL)
    role = naming.Role(role_text) if role_text in {r.value for r in naming.Role} else None
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    deleting = meta.get("deletionTimestamp") is not None
    return PodView(str(meta.get("name")), shard, role, status.get("podIP"), ready and not deleting)


BLOCKED_STATES = ("blocked", "no-primary")
"""Shard manager states (``status.managers[i].state``) in which a shard has no primary
and the manager will not give it one by itself."""


def primaries_condition(managers: Mapping[str, Mapping[str, Any]]) -> Condition:
    """From ``status.managers`` (shard index -> the manager's status, written by the shard
    managers): False while any shard is blocked, naming each with its reason."""
    blocked = sorted(
        (int(i), str(m.get("reason", "")))
        for i, m in managers.items()
        if str(i).isdigit() and m.get("state") in BLOCKED_STATES
    )
    if not blocked:
        return Condition(
            ConditionType.PRIMARIES_AVAILABLE,
            True,
            Reason.PRIMARIES_AVAILABLE,
            "no shard manager refuses to give its shard a primary",
        )
    return Condition(
        ConditionType.PRIMARIES_AVAILABLE,
        False,
        Reason.FAILOVER_BLOCKED,
        "; ".join(f"shard {i}: {why}" for i, why in blocked),
    )


def last_failover_column(shards: Sequence[Mapping[str, Any]]) -> str | None:
    """The latest ``lastFailover`` of any shard as one line (``history.summary``)."""
    records = [
        (float(lf.get("at", 0)), int(s.get("index", 0)), lf)
        for s in shards
        if isinstance(lf := s.get("lastFailover"), Mapping)
    ]
    if not records:
        return None
    _, index, last = max(records, key=lambda r: r[0])
    return f"shard {index}: {history.summary(last)}"


def ready_column(ready: int, desired: int) -> str:
    return f"{ready}/{desired}"


def phase(
    *,
    spec_valid: bool,
    ready_members: int,
    desired_members: int,
    rolling: bool,
    ever_ready: bool,
) -> Phase:
    if not spec_valid:
        return Phase.INVALID
    if rolling:
        return Phase.UPDATING
    if ready_members >= desired_members:
        return Phase.READY
    return Phase.DEGRADED if ever_ready else Phase.CREATING
