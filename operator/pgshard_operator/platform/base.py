"""The ``Platform`` interface: how the shard manager reads and changes the world.

The shard manager (``pgshard_operator.shard.manager``) is the only caller. It
decides; a platform acts. Implementations: ``local`` (processes and files in
the cluster directory) and ``kubernetes`` (pods, Lease objects, the
ShardedCluster status). One Platform object serves ONE shard: every method is
about that shard.

Rules every implementation follows (the manager's safety relies on them):

- **Leases.** The primary's instance agent holds the shard's lease record
  (:class:`~pgshard_operator.shard.state.Lease`): it renews it well before
  ``expires_at`` (say every TTL/3) and, if it cannot renew in time, fences its
  own PostgreSQL *before* ``expires_at`` passes (a primary that lost its lease
  acknowledges no write). The agent of a member that holds the lease record
  starts renewing it; an agent whose member is not the holder never writes it.
  ``expires_at`` is Unix time on a clock the manager shares (same machine, or
  NTP-synchronised nodes).
- **Process state.** ``MemberInfo.process`` is ``GONE`` only when the member's
  PostgreSQL is certainly not running and will not be started again as a
  primary except through :meth:`Platform.rejoin`; the manager then fails over
  without waiting for the lease. Report ``UNKNOWN`` when unsure.
- **Names.** Followers stream with ``application_name`` = member name (so
  ``synchronous_standby_names`` can list them) and use
  ``recovery_target_timeline = 'latest'`` (so they follow a promotion).
- **Idempotence.** Every action method may be called again after a failure or
  a manager restart with the same arguments; repeating a completed action is
  harmless. Errors are raised as :class:`PlatformError` (the manager logs them
  and decides again next cycle) or :class:`PlatformConflict`.
- **Bounded.** Each call returns or raises within a bounded time the
  implementation documents; the manager runs the long ones (``rejoin``) as
  background tasks and never awaits two actions on the same member at once.
"""

from __future__ import annotations

import enum
import hashlib
import json
from typing import Protocol

from pgshard_proxy.contract import positions, topology

from ..shard import state


def record_version(shard: topology.Shard) -> str:
    """A compare-and-set version of a shard record: a digest of the fields the manager
    owns (epoch, primary, lastFailover, syncStandbys, switching), so refreshed positions or
    follower states written by others never make a manager's compare-and-set fail."""
    doc: dict[str, object] = {
        "epoch": shard.epoch,
        "primary": shard.primary.name if shard.primary else None,
        "lastFailover": shard.last_failover,
        "syncStandbys": shard.sync_standbys,
    }
    if shard.switching is not None:
        doc["switching"] = topology.switching_to_dict(shard.switching)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


class PlatformError(Exception):
    """An action could not be carried out now; the message says what failed."""


class PlatformConflict(PlatformError):
    """A compare-and-set lost (the stored record changed since it was read), or an agent
    refused a request that does not fit its member's state (HTTP 409)."""


class EventReason(enum.Enum):
    """Why an event was recorded (CamelCase, as Kubernetes Events spell reasons)."""

    FAILING_OVER = "FailingOver"
    PROMOTED = "Promoted"
    FENCED = "Fenced"
    REPOINTED = "Repointed"
    REJOINED = "Rejoined"
    SWITCHOVER = "Switchover"
    SWITCHED_OVER = "SwitchedOver"
    FAILOVER_BLOCKED = "FailoverBlocked"
    COOLDOWN = "Cooldown"
    SYNC_STANDBYS = "SyncStandbysChanged"
    ACTION_FAILED = "ActionFailed"


class Platform(Protocol):
    """Primitives for one shard. Docstrings state what an implementation guarantees."""

    async def read_snapshot(self) -> state.ShardSnapshot:
        """One consistent read of the shard: members (name, address, dsn, process state),
        the lease record (or ``None``), and the published shard record with its store
        version. Must not return a record with a version older than one this object
        has already returned or written (monotonic reads)."""
        ...

    async def promote(self, member: str, epoch: int, replaces: state.Lease | None) -> None:
        """Make follower ``member`` the writable primary at ``epoch``.

        Atomically (compare-and-set) replace the lease record with
        ``Lease(holder=member, epoch=epoch, expires_at=now + TTL)`` — only if the stored
        record still equals ``replaces`` (else :class:`PlatformConflict`, and nothing was
        promoted). Then ``pg_promote(wait => true)`` and return once ``member`` accepts
        writes; its agent renews the lease from then on. If ``member`` is already the
        writable lease holder at ``epoch``, return at once (repeat after a crash). Does not
        publish the topology: the manager does that next."""
        ...

    async def fence(self, member: str) -> positions.Position | None:
        """Make ``member`` acknowledge no write from now on, and keep it that way until
        :meth:`rejoin` turns it into a follower.

        Stop its PostgreSQL with a clean (``fast``) shutdown, so that connected
        walsenders deliver all of its WAL to the followers first; if it does not stop
        within the bound, kill it. Release its lease if it holds it. Return its end of
        WAL (e.g. ``pg_controldata``'s "Latest checkpoint location" after a clean
        shutdown): a follower whose replayed LSN is *greater than* that position holds
        every write ``member`` ever acknowledged. Return ``None`` when the end of WAL is
        unknown (the member was unreachable or did not stop cleanly). A no-op on a
        member that is already stopped (then the position, if known)."""
        ...

    async def repoint(self, member: str, primary: str) -> None:
        """Make follower ``member`` stream from ``primary``: ``ALTER SYSTEM SET
        primary_conninfo`` to ``primary``'s address (application_name = member) and
        ``pg_reload_conf()``, no restart. If followers use replication slots, create
        ``member``'s slot on ``primary`` first. Return once the setting is reloaded
        (streaming may resume a moment later). Write ``host`` and ``port`` exactly as in
        ``primary``'s ``MemberInfo.address``: the manager compares them (via
        ``SHOW primary_conninfo``) to tell whether a follower still needs repointing."""
        ...

    async def rejoin(self, member: str, primary: str) -> state.RejoinResult:
        """Make ``member`` a streaming follower of ``primary``, whatever state it is in.

        Stop it if it runs (it must already be fenced). If its WAL diverged from
        ``primary``'s timeline, run ``pg_rewind`` against ``primary``; if rewind fails
        (or is impossible), replace its data with a fresh snapshot (``pg_basebackup``
        with a slot) — automatically, without asking. Configure it as a follower of
        ``primary`` and start it. Report the method, the fork LSN (the switch point in
        ``primary``'s timeline history) and the bytes of WAL it had past the fork that
        were discarded (0 when nothing diverged). May take long (re-clone); bounded by
        the implementation. The manager asks for the old primary's rejoin right after a
        failover, even if it is hung (SIGSTOP) or gone: the implementation may wait for it
        within its bound, or raise :class:`PlatformError`; the manager retries (5 s, doubling
        to 60 s; at once under a new primary) until it succeeds."""
        ...

    async def set_sync_standbys(self, member: str, value: str) -> None:
        """``ALTER SYSTEM SET synchronous_standby_names = value`` on ``member`` and reload.
        Works on a follower too (takes effect when it is promoted)."""
        ...

    async def publish_topology(self, shard: topology.Shard, expected_version: str) -> str:
        """Store ``shard`` as this shard's record if the stored version still equals
        ``expected_version``; return the new version. The version is that of *this
        shard's* record (as in the snapshot), so managers of different shards sharing one
        file do not conflict with each other. Otherwise raise
        :class:`PlatformConflict` and store nothing. Local: rewrite the topology file
        atomically (tmp + rename) leaving other shards' records intact; Kubernetes: patch
        the ShardedCluster status with the resourceVersion."""
        ...

    async def record_event(self, reason: EventReason, message: str) -> None:
        """Record a human-readable event about the shard (Kubernetes Event, local log).
        Best effort: must not raise."""
        ...
