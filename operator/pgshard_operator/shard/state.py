"""What the shard manager knows: platform snapshots and member observations.

Pure, immutable values. A :class:`ShardSnapshot` is what the platform stores
(members, the primary's lease, the published shard record with its epoch, a
store version for compare-and-set), read in one go by
``Platform.read_snapshot()``. A :class:`MemberObservation` is what one probe of
one member's PostgreSQL saw (``observe.observe()`` builds it). ``decide`` is a
function of these two plus the clock, so everything here is plain data.

Positions are byte offsets (``pgshard_proxy.contract.positions.Position``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from pgshard_proxy.contract import positions, topology


class ProcessState(enum.Enum):
    """What the platform knows about a member's process (agent + PostgreSQL)."""

    ALIVE = "alive"
    """Running (it may still be hung: SIGSTOP, stuck I/O)."""
    GONE = "gone"
    """Definitely not running, and the platform will not start it again as a primary
    without going through the manager. A primary in this state can acknowledge no
    write, so it is failed over at once, without waiting for its lease."""
    UNKNOWN = "unknown"
    """The platform cannot tell (treated like ALIVE: wait for the lease)."""
    REPLACED = "replaced"
    """Its pod was deleted (and maybe created again; the new one does not answer yet). A
    forced deletion or a lost node removes the pod object with its processes possibly
    still running, so nothing is proven: a primary is failed over without the detection
    wait, but only after its lease expired. A new pod starts held (never primary on its
    own). A follower is left to come back."""
    STOPPING = "stopping"
    """Being stopped on purpose (its pod is terminating). Not a passing fault, so a
    primary in this state that stops answering is failed over without waiting
    ``detectionSeconds``; its lease is still honoured (it may serve until it stops)."""


class RejoinMethod(enum.Enum):
    """How a member became a follower of the current primary again."""

    RESTART = "restart"
    """Its WAL did not diverge: started as a follower, streaming from its own position."""
    REWIND = "rewind"
    """``pg_rewind`` discarded its diverged WAL."""
    RECLONE = "reclone"
    """Rewind was impossible; its data was replaced by a fresh snapshot of the primary."""


@dataclasses.dataclass(frozen=True)
class RejoinResult:
    """What ``Platform.rejoin`` reports back; recorded in the shard's ``lastFailover``."""

    method: RejoinMethod
    fork_lsn: positions.Position | None
    """Where its timeline and the new primary's diverged (the promotion's switch point)."""
    discarded_bytes: int
    """WAL bytes it had past ``fork_lsn`` that no other member had: writes thrown away."""
    discarded_entries: int | None = None
    """Statement mode: log entries it had past the new primary's promotion point."""

    @classmethod
    def from_agent(cls, doc: Mapping[str, Any]) -> RejoinResult:
        """Parse the instance agent's answer to ``POST /rejoin`` (both platforms ask it)."""
        fork = doc.get("forkLsn")
        discarded = doc.get("discardedBytes")
        return cls(
            method=RejoinMethod(doc["method"]),
            fork_lsn=positions.parse_lsn(fork) if fork else None,
            # Unknown only when the old primary's end of WAL could not be read (logged).
            discarded_bytes=int(discarded) if discarded is not None else 0,
            discarded_entries=_int(doc.get("discardedEntries")),
        )


@dataclasses.dataclass(frozen=True)
class MemberInfo:
    """One member as the platform knows it (not as PostgreSQL reports it)."""

    name: str
    """Unique in the shard; also the ``application_name`` it streams under, so it can be
    listed in ``synchronous_standby_names``."""
    address: str
    """``host:port`` clients and the proxy connect to."""
    dsn: str
    """Connection URI the manager uses to observe it: a superuser, or a role with
    ``pg_monitor`` (the probe reads ``primary_conninfo`` and ``pg_stat_replication``)."""
    process: ProcessState = ProcessState.UNKNOWN
    bootstrapping: bool = False
    """The platform is creating its data (initdb, pg_basebackup, re-clone); published as
    state ``bootstrapping`` and not observed."""
    unprobed: str | None = None
    """Why nothing can answer at ``address`` now, so the manager counts it unreachable
    without probing (a probe there would only wait out its timeout and delay the cycle):
    e.g. its pod was re-created and the new pod's agent, which starts PostgreSQL, does
    not answer yet."""
    zone: str | None = None
    """The failure zone it runs in (Kubernetes: its node's ``topology.kubernetes.io/zone``),
    published as the member's ``zone`` in the topology; None when unknown."""


@dataclasses.dataclass(frozen=True)
class Lease:
    """The primary's lease record, as stored by the platform.

    The primary's instance agent renews it (``expires_at`` = renewal time + TTL, on a
    clock shared with the manager); if it cannot renew before ``expires_at`` it fences
    its PostgreSQL first. So once ``now >= expires_at`` the holder acknowledges no write.
    """

    holder: str
    epoch: int
    """The epoch the holder became primary at."""
    expires_at: float
    """Unix time (seconds)."""

    def may_be_valid(self, now: float) -> bool:
        return now < self.expires_at

    def seconds_left(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


class FailoverKind(enum.Enum):
    FAILOVER = "failover"
    SWITCHOVER = "switchover"


@dataclasses.dataclass(frozen=True)
class LastFailover:
    """The shard's last change of primary; JSON form is the topology's ``lastFailover``."""

    kind: FailoverKind
    at: float
    """Unix time the manager decided to promote (JSON ``at``); the cooldown counts from
    here."""
    old_primary: str | None
    new_primary: str
    epoch: int
    reason: str
    rejoin: RejoinMethod | None = None
    """How the old primary came back; ``None`` while it has not (yet)."""
    fork_lsn: positions.Position | None = None
    discarded_bytes: int | None = None
    discarded_entries: int | None = None
    """Statement mode: the old primary's log entries no other member had (discarded)."""
    detected_at: float | None = None
    """Failover: when the old primary's probes first failed; switchover: when it was
    requested. Filled in when the new primary is published (``shard.history``)."""
    promoted_at: float | None = None
    """When the new primary accepted writes."""
    published_at: float | None = None
    """When the topology named the new primary (proxies route writes there from then)."""
    write_unavailable_seconds: float | None = None
    """Failover: from the first failed probe to the publication; switchover: from the
    announcement (proxies hold writes) to the publication."""
    requests_failed: int | None = None
    requests_buffered: int | None = None
    """Client requests the proxies failed / held and then ran, from the start of the
    change until the old primary rejoined (None: the proxies' counts were not read)."""
    first_write_at: float | None = None
    """When a proxy first completed a request on the new primary (the earliest over the
    proxies, read when the old primary rejoined; None: none had, or none was read)."""
    first_write_seconds: float | None = None
    """``first_write_at`` minus ``detected_at``: how long clients could not write."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "at": self.at,
            "from": self.old_primary,
            "to": self.new_primary,
            "epoch": self.epoch,
            "reason": self.reason,
            "rejoin": self.rejoin.value if self.rejoin else None,
            "forkLsn": positions.format_lsn(self.fork_lsn) if self.fork_lsn is not None else None,
            "discardedBytes": self.discarded_bytes,
            "discardedEntries": self.discarded_entries,
            "detectedAt": self.detected_at,
            "promotedAt": self.promoted_at,
            "publishedAt": self.published_at,
            "writeUnavailableSeconds": self.write_unavailable_seconds,
            "requestsFailed": self.requests_failed,
            "requestsBuffered": self.requests_buffered,
            "firstWriteAt": self.first_write_at,
            "firstWriteSeconds": self.first_write_seconds,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LastFailover:
        rejoin = d.get("rejoin")
        discarded = d.get("discardedBytes")
        return cls(
            kind=FailoverKind(d.get("kind", FailoverKind.FAILOVER.value)),
            at=float(d["at"]),
            old_primary=d.get("from"),
            new_primary=str(d["to"]),
            epoch=int(d["epoch"]),
            reason=str(d.get("reason", "")),
            rejoin=RejoinMethod(rejoin) if rejoin else None,
            fork_lsn=positions.parse(d.get("forkLsn")),
            discarded_bytes=int(discarded) if discarded is not None else None,
            discarded_entries=_int(d.get("discardedEntries")),
            detected_at=_float(d.get("detectedAt")),
            promoted_at=_float(d.get("promotedAt")),
            published_at=_float(d.get("publishedAt")),
            write_unavailable_seconds=_float(d.get("writeUnavailableSeconds")),
            requests_failed=_int(d.get("requestsFailed")),
            requests_buffered=_int(d.get("requestsBuffered")),
            first_write_at=_float(d.get("firstWriteAt")),
            first_write_seconds=_float(d.get("firstWriteSeconds")),
        )


def _float(value: object) -> float | None:
    return None if value is None else float(str(value))


def _int(value: object) -> int | None:
    return None if value is None else int(str(value))


@dataclasses.dataclass(frozen=True)
class ShardSnapshot:
    """One consistent read of a shard's platform state."""

    members: tuple[MemberInfo, ...]
    shard: topology.Shard
    """The shard record as currently published (epoch, primary, followers, hash range,
    lastFailover). The platform creates the first one when it bootstraps the shard."""
    version: str
    """Opaque store version of ``shard``; ``publish_topology`` compares-and-sets on it."""
    lease: Lease | None = None

    @property
    def index(self) -> int:
        return self.shard.index

    @property
    def epoch(self) -> int:
        return self.shard.epoch

    @property
    def primary(self) -> str | None:
        return self.shard.primary.name if self.shard.primary else None

    @property
    def last_failover(self) -> LastFailover | None:
        raw = self.shard.last_failover
        return LastFailover.from_dict(raw) if raw else None

    def member(self, name: str) -> MemberInfo:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"shard {self.index} has no member {name!r}")

    def followers(self) -> tuple[MemberInfo, ...]:
        """Every member but the published primary (down ones included)."""
        return tuple(m for m in self.members if m.name != self.primary)


@dataclasses.dataclass(frozen=True)
class ReplicaStat:
    """One row of the primary's ``pg_stat_replication``."""

    name: str
    """``application_name``: the follower's member name."""
    state: str
    """``streaming``, ``catchup``, ``startup``, ``backup`` or ``stopping``."""
    flush_lsn: positions.Position | None
    replay_lsn: positions.Position | None
    sync_state: str
    """``async``, ``potential``, ``sync`` or ``quorum``."""


@dataclasses.dataclass(frozen=True)
class MemberObservation:
    """What one probe saw. ``reachable=False`` (with ``error``) when the probe failed."""

    name: str
    process: ProcessState
    """As the platform reported it in the snapshot."""
    reachable: bool
    in_recovery: bool | None = None
    """True on a follower, False on a (possibly stale) primary."""
    timeline: int | None = None
    received_lsn: positions.Position | None = None
    """Follower: WAL received and flushed (``pg_last_wal_receive_lsn``)."""
    replayed_lsn: positions.Position | None = None
    """Follower: WAL replayed (``pg_last_wal_replay_lsn``)."""
    current_lsn: positions.Position | None = None
    """Primary: ``pg_current_wal_lsn``."""
    upstream: str | None = None
    """Follower: ``host:port`` its ``primary_conninfo`` points at."""
    sync_standby_names: str | None = None
    """Primary: its ``synchronous_standby_names`` setting."""
    replicas: tuple[ReplicaStat, ...] = ()
    """Primary: followers connected to it."""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.reachable and self.error is None

    @property
    def position(self) -> positions.Position | None:
        """Primary: write position. Follower: how much WAL it holds, the larger of received
        and replayed (after a restart the receive position can start behind replay)."""
        if self.in_recovery is False:
            return self.current_lsn
        held = [p for p in (self.received_lsn, self.replayed_lsn) if p is not None]
        return max(held) if held else None

    @classmethod
    def unreachable(cls, name: str, process: ProcessState, error: str) -> MemberObservation:
        return cls(name=name, process=process, reachable=False, error=error)
