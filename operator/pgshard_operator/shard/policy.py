"""Replication and failover settings of one shard (the ``ShardPolicy`` tree).

Owned here, read by :mod:`.decide`, :mod:`.replication` and :mod:`.manager`.
Built by the local CLI from its flags and by the operator from the
ShardedCluster spec (:meth:`ShardPolicy.from_spec`, camelCase keys of DESIGN
§2). Every constructor validates, so a policy that exists is a valid one;
:class:`PolicyInvalid` messages name the field, the bad value and what to do.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
from collections.abc import Mapping
from typing import Any


class PolicyInvalid(ValueError):
    """A replication/failover setting that cannot be used; the message says which and why."""


class ReplicationMode(enum.Enum):
    """How many followers confirm a commit before the primary acknowledges it."""

    ASYNC = "async"
    """No follower confirms; a crash may lose the last commits (bounded by ``maxLagBytes``)."""
    SYNC = "sync"
    """At least one follower has flushed every acknowledged commit (``ANY 1 (...)``)."""
    QUORUM = "quorum"
    """At least ``quorum`` followers have flushed every acknowledged commit (``ANY k``)."""


@dataclasses.dataclass(frozen=True)
class ReplicationSettings:
    mode: ReplicationMode = ReplicationMode.ASYNC
    quorum: int = 1
    """k, the number of follower confirmations per commit in ``quorum`` mode."""
    statement: bool = False
    """``statement`` replication: positions are log sequence numbers (a fenced primary
    reports its last entry, which a caught-up follower has applied: ``>=``, not ``>``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.mode, ReplicationMode):
            raise PolicyInvalid(f"replication.mode must be a ReplicationMode, got {self.mode!r}")
        if isinstance(self.quorum, bool) or not isinstance(self.quorum, int) or self.quorum < 1:
            raise PolicyInvalid(
                f"replication.quorum must be a whole number >= 1, got {self.quorum!r}"
            )

    @property
    def required_acks(self) -> int:
        """Follower confirmations each commit needs: 0 (async), 1 (sync) or k (quorum)."""
        if self.mode is ReplicationMode.ASYNC:
            return 0
        if self.mode is ReplicationMode.SYNC:
            return 1
        return self.quorum

    def check_followers(self, followers: int) -> None:
        """Refuse a quorum that this many followers could never reach."""
        if self.required_acks > followers:
            raise PolicyInvalid(
                f"replication.{'quorum' if self.mode is ReplicationMode.QUORUM else 'mode'} "
                f"needs {self.required_acks} follower confirmation(s) per commit but the shard "
                f"has only {followers} follower(s); add replicas or lower the quorum"
            )


@dataclasses.dataclass(frozen=True)
class FailoverSettings:
    enabled: bool = True
    """False: never fail over automatically (planned switchovers still work)."""
    detection_seconds: float = 10.0
    """An unreachable (but not provably dead) primary is failed over only after this long."""
    cooldown_seconds: float = 60.0
    """No second automatic failover of the shard within this long after the last one."""
    max_lag_bytes: int | None = None
    """Async mode: refuse to promote a candidate further behind the last known primary
    position than this (``None``: no limit). A forced failover ignores it."""
    lease_ttl_seconds: float = 10.0
    """Lifetime of the primary's lease; the agent renews it well before, the manager never
    promotes while it may still be valid."""
    max_clock_skew_seconds: float = 1.0
    """How far the clocks of the manager and of the lease holder may disagree: a lease
    counts as valid until this long after the expiry written in it (the holder, for its
    part, fences a margin before expiry on its own monotonic clock). 0 when all parties
    share one clock (the local platform)."""
    priorities: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )
    """Member name -> priority; higher is preferred when positions tie (default 0)."""

    def __post_init__(self) -> None:
        for name in ("detection_seconds", "lease_ttl_seconds"):
            _positive(f"failover.{_camel(name)}", getattr(self, name), allow_zero=False)
        _positive("failover.cooldownSeconds", self.cooldown_seconds, allow_zero=True)
        _positive("failover.maxClockSkewSeconds", self.max_clock_skew_seconds, allow_zero=True)
        if self.max_lag_bytes is not None and (
            isinstance(self.max_lag_bytes, bool)
            or not isinstance(self.max_lag_bytes, int)
            or self.max_lag_bytes < 0
        ):
            raise PolicyInvalid(
                f"failover.maxLagBytes must be a whole number of bytes >= 0 or unset, "
                f"got {self.max_lag_bytes!r}"
            )
        for member, prio in self.priorities.items():
            if isinstance(prio, bool) or not isinstance(prio, int):
                raise PolicyInvalid(
                    f"failover.priorities[{member!r}] must be a whole number, got {prio!r}"
                )
        # Frozen means frozen: do not keep a reference to a caller's mutable dict.
        object.__setattr__(self, "priorities", types.MappingProxyType(dict(self.priorities)))

    def priority(self, member: str) -> int:
        return self.priorities.get(member, 0)


@dataclasses.dataclass(frozen=True)
class ShardPolicy:
    """Everything the shard manager needs to know about how to run one shard."""

    replication: ReplicationSettings = dataclasses.field(default_factory=ReplicationSettings)
    failover: FailoverSettings = dataclasses.field(default_factory=FailoverSettings)
    probe_timeout_seconds: float = 2.0
    """Bound on one observation of one member (connect + query)."""
    cycle_seconds: float = 1.0
    """Pause between two manager cycles."""
    switchover_timeout_seconds: float = 30.0
    """How long a switchover waits for the target to replay the old primary's last WAL."""
    status_refresh_seconds: float = 5.0
    """How often positions and lag are re-published while nothing else changes."""
    switchover_drain_seconds: float = 0.5
    """How long a switchover waits between publishing the shard as ``switching`` and
    fencing its primary: proxies see the announcement (the local proxy polls its file
    every 0.2 s) and hold new requests, and statements already sent finish."""
    failover_buffer_seconds: float = 0.0
    """``proxy.bufferOnFailover``: when > 0, an automatic failover is announced like a
    switchover (the shard published as ``switching``, until now + this) as soon as it is
    decided, so that proxies hold the shard's new requests for the new primary instead of
    sending them to the dead one; 0 (the default): not announced."""

    def __post_init__(self) -> None:
        _positive("probeTimeoutSeconds", self.probe_timeout_seconds, allow_zero=False)
        _positive("cycleSeconds", self.cycle_seconds, allow_zero=False)
        _positive("switchoverTimeoutSeconds", self.switchover_timeout_seconds, allow_zero=False)
        _positive("statusRefreshSeconds", self.status_refresh_seconds, allow_zero=False)
        _positive("switchoverDrainSeconds", self.switchover_drain_seconds, allow_zero=True)
        _positive("failoverBufferSeconds", self.failover_buffer_seconds, allow_zero=True)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ShardPolicy:
        """Build from the camelCase cluster spec (only ``replication`` and ``failover`` are
        read; other keys belong to other parts). Unknown keys inside those are refused so
        that a typo is not silently ignored."""
        repl = _section(spec, "replication", {"method", "mode", "quorum"})
        fo = _section(
            spec,
            "failover",
            {
                "enabled",
                "detectionSeconds",
                "cooldownSeconds",
                "maxLagBytes",
                "leaseTtlSeconds",
                "maxClockSkewSeconds",
                "priorities",
            },
        )
        mode_text = repl.get("mode", ReplicationMode.ASYNC.value)
        try:
            mode = ReplicationMode(mode_text)
        except ValueError:
            choices = "|".join(m.value for m in ReplicationMode)
            raise PolicyInvalid(
                f"replication.mode must be one of {choices}, got {mode_text!r}"
            ) from None
        enabled = fo.get("enabled", True)
        if not isinstance(enabled, bool):
            raise PolicyInvalid(f"failover.enabled must be true or false, got {enabled!r}")
        priorities = fo.get("priorities", {})
        if not isinstance(priorities, Mapping):
            raise PolicyInvalid(
                f"failover.priorities must be a mapping of member name to number, "
                f"got {priorities!r}"
            )
        defaults = FailoverSettings()
        return cls(
            replication=ReplicationSettings(mode=mode, quorum=repl.get("quorum", 1)),
            failover=FailoverSettings(
                enabled=enabled,
                detection_seconds=fo.get("detectionSeconds", defaults.detection_seconds),
                cooldown_seconds=fo.get("cooldownSeconds", defaults.cooldown_seconds),
                max_lag_bytes=fo.get("maxLagBytes"),
                lease_ttl_seconds=fo.get("leaseTtlSeconds", defaults.lease_ttl_seconds),
                max_clock_skew_seconds=fo.get(
                    "maxClockSkewSeconds", defaults.max_clock_skew_seconds
                ),
                priorities={str(k): v for k, v in priorities.items()},
            ),
        )


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(w.title() for w in rest)


def _positive(field: str, value: object, *, allow_zero: bool) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise PolicyInvalid(f"{field} must be a number of seconds {bound}, got {value!r}")


def _section(spec: Mapping[str, Any], key: str, known: set[str]) -> Mapping[str, Any]:
    section = spec.get(key) or {}
    if not isinstance(section, Mapping):
        raise PolicyInvalid(f"{key} must be a mapping, got {section!r}")
    unknown = sorted(set(section) - known)
    if unknown:
        raise PolicyInvalid(
            f"{key}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return section
