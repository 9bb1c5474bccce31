"""The failover state machine: ``decide(snapshot, observations, now, policy, memory)``.

Pure: no awaits, no clock, no I/O (import-linter forbids asyncio/asyncpg here).
Called by ``manager`` once per cycle; its result says what state the shard is
in, why (one readable sentence), and which actions to run now.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from pgshard_proxy.contract import positions

from . import actions, policy, state


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


@dataclasses.dataclass(frozen=True)
class Memory:
    """What the manager remembers between cycles (kept in memory; losing it on restart
    is safe: it only makes the manager wait longer or know less about lag)."""

    primary_unreachable_since: float | None = None
    """When the primary was first seen unreachable in the current outage."""
    last_primary_position: positions.Position | None = None
    """The primary's write position at the last successful probe (for maxLagBytes)."""


def decide(
    snapshot: state.ShardSnapshot,
    observations: Mapping[str, state.MemberObservation],
    now: float,
    pol: policy.ShardPolicy,
    memory: Memory,
) -> Decision:
    """The decision for this cycle. ``observations`` is keyed by member name."""
    primary = snapshot.primary
    if primary is None:
        return Decision(DecisionKind.NO_PRIMARY, "the shard record names no primary yet")
    obs = observations.get(primary)
    if obs is not None and obs.ok and obs.in_recovery is False:
        return Decision(DecisionKind.HEALTHY, f"primary {primary} is writable")
    return Decision(DecisionKind.PRIMARY_SUSPECT, f"primary {primary} is not answering")
