"""Which follower to promote: a total order over candidates (CloudNativePG style).

Pure; used by ``decide`` (failover) and ``switchover`` (best target). Members
that cannot be promoted (unreachable, erroring, not in recovery) sort last;
then the most WAL received, then the most replayed, then the configured
priority (higher first), then the name, so the order is total and stable.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import policy, state


def promotable(obs: state.MemberObservation) -> bool:
    """A follower that answered and is in recovery (a writable member is no candidate)."""
    return obs.ok and obs.in_recovery is True


def _key(
    obs: state.MemberObservation, failover: policy.FailoverSettings
) -> tuple[int, int, int, int, str]:
    held = obs.position if obs.position is not None else -1
    replayed = obs.replayed_lsn if obs.replayed_lsn is not None else -1
    return (
        0 if promotable(obs) else 1,
        -held,
        -replayed,
        -failover.priority(obs.name),
        obs.name,
    )


def candidate_order(
    observations: Iterable[state.MemberObservation], failover: policy.FailoverSettings
) -> list[state.MemberObservation]:
    """All given observations, best candidate first (unpromotable ones at the end)."""
    return sorted(observations, key=lambda o: _key(o, failover))


def best_candidate(
    observations: Iterable[state.MemberObservation], failover: policy.FailoverSettings
) -> state.MemberObservation | None:
    """The first promotable observation in :func:`candidate_order`, if any."""
    ordered = candidate_order(observations, failover)
    return ordered[0] if ordered and promotable(ordered[0]) else None
