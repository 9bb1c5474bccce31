"""``synchronous_standby_names`` for a shard, and whether a failover keeps every ack.

Pure; used by ``decide`` and ``switchover``.

**Our choice: the list names every follower of the shard, up or down.** Sync
mode is ``ANY 1 (all followers)`` and quorum mode ``ANY k (all followers)``, so
a commit is acknowledged only after 1 (resp. k) followers flushed it, and
commits *block* while fewer than that are streaming (quorum mode must; for sync
mode we prefer blocking to silently acknowledging commits no follower has).
The list changes only when the shard's membership changes (a member added, or
a failover turning the old primary into a follower), never when a follower
merely goes down. That keeps the set of possible acknowledgers stable, which
is what makes the safety check below sound after the primary is gone: listing
only the streaming followers would make it depend on a history nobody stores.

**Safety (R + W > N).** With ``ANY k`` over the N listed followers, every
acknowledged commit is on at least k of them. A set of answering followers is
sure to include one holding it iff it meets every k-subset, i.e. it has at
least ``N - k + 1`` of the listed followers. Then the follower with the
highest received (flushed) LSN holds every acknowledged commit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable

from . import policy

NO_FOLLOWER = "pgshard_no_follower"
"""Listed when a sync/quorum shard has no follower at all: commits wait (never silently
async) until one is added."""


def quote(name: str) -> str:
    """A member name as a quoted identifier for ``synchronous_standby_names``."""
    return '"' + name.replace('"', '""') + '"'


def standby_names(settings: policy.ReplicationSettings, followers: Iterable[str]) -> str:
    """The setting for a primary whose followers are ``followers`` ('' in async mode)."""
    k = settings.required_acks
    if k == 0:
        return ""
    names = sorted(set(followers)) or [NO_FOLLOWER]
    return f"ANY {k} ({', '.join(quote(n) for n in names)})"


@dataclasses.dataclass(frozen=True)
class AckSafety:
    safe: bool
    reason: str


def failover_keeps_acks(
    settings: policy.ReplicationSettings, listed: Collection[str], answering: Collection[str]
) -> AckSafety:
    """Whether the best of ``answering`` is sure to hold every acknowledged commit.

    ``listed`` are the followers named in the failed primary's setting (all its
    followers, see the module docstring); ``answering`` the promotable ones that answered.
    """
    k = settings.required_acks
    if k == 0:
        return AckSafety(True, "async mode: acknowledged commits may be lost (bounded by lag)")
    present = set(listed) & set(answering)
    needed = len(set(listed)) - k + 1
    if len(present) >= needed:
        return AckSafety(
            True,
            f"{len(present)} of {len(set(listed))} listed followers answer, at least {needed} "
            f"needed for ANY {k}: the most advanced holds every acknowledged commit",
        )
    missing = sorted(set(listed) - present)
    return AckSafety(
        False,
        f"cannot be sure the candidates hold every acknowledged commit: with ANY {k} over "
        f"{len(set(listed))} followers at least {needed} must answer, only {len(present)} do "
        f"(missing: {', '.join(missing)}); bring them back or force a failover accepting loss",
    )
