"""The actions a decision asks for: frozen values, carried out by the manager.

``decide`` and ``switchover`` return them; ``manager`` maps each to one
``Platform`` call, in order, stopping at the first failure (the next cycle
decides again from fresh observations, so a half-done sequence is resumed, not
repeated blindly). Every action is safe to repeat.
"""

from __future__ import annotations

import dataclasses

from pgshard_proxy.contract import topology

from . import state


@dataclasses.dataclass(frozen=True)
class SetSyncStandbys:
    """Set ``synchronous_standby_names`` on ``member`` (ALTER SYSTEM + reload). Issued on
    a candidate *before* it is promoted, so it never acknowledges a commit without the
    required follower confirmations."""

    member: str
    value: str


@dataclasses.dataclass(frozen=True)
class Fence:
    """Make ``member`` refuse every write from now on (a stale primary, or the old
    primary at the start of a switchover)."""

    member: str


@dataclasses.dataclass(frozen=True)
class Promote:
    """Make ``member`` the primary at ``epoch``, replacing the lease record ``replaces``
    (compare-and-set: fails if the record changed since the decision)."""

    member: str
    epoch: int
    replaces: state.Lease | None
    """The lease record the decision saw (``None``: there was none)."""


@dataclasses.dataclass(frozen=True)
class PublishTopology:
    """Write the shard record (compare-and-set on the snapshot's version)."""

    shard: topology.Shard


@dataclasses.dataclass(frozen=True)
class Repoint:
    """Make follower ``member`` stream from ``primary`` (primary_conninfo + reload)."""

    member: str
    primary: str


@dataclasses.dataclass(frozen=True)
class Rejoin:
    """Bring ``member`` back as a streaming follower of ``primary`` (restart, pg_rewind or
    re-clone); the result is recorded in ``lastFailover`` when it was the old primary."""

    member: str
    primary: str


Action = SetSyncStandbys | Fence | Promote | PublishTopology | Repoint | Rejoin
"""Every action; ``match`` on it in executors so mypy checks every case is handled."""


def describe(action: Action) -> str:
    """One short human phrase, for log lines and events."""
    match action:
        case SetSyncStandbys(member, value):
            return f"set synchronous_standby_names={value!r} on {member}"
        case Fence(member):
            return f"fence {member}"
        case Promote(member, epoch, _):
            return f"promote {member} at epoch {epoch}"
        case PublishTopology(shard):
            primary = shard.primary.name if shard.primary else None
            return f"publish shard {shard.index} epoch {shard.epoch} primary {primary}"
        case Repoint(member, primary):
            return f"repoint {member} to {primary}"
        case Rejoin(member, primary):
            return f"rejoin {member} as follower of {primary}"
