"""``synchronous_standby_names``, the published sync set, and whether a failover keeps
every acknowledged commit.

Pure; used by ``decide`` and ``switchover``.

**The sync set (Patroni's ``/sync`` key).** In sync/quorum mode the shard record
carries ``syncStandbys`` (S): the followers that may hold a commit acknowledged at
the record's epoch. ``synchronous_standby_names`` on the primary is ``ANY k (S)``
(``ANY k (pgshard_no_follower)`` while S is empty: commits wait, never silently
async), and S is published *before* a follower is added to the setting, so every
acknowledged commit is flushed on at least k members of S. A follower joins S only
once the primary's ``pg_stat_replication`` shows it ``streaming`` with a flush
position at or past the primary's first position at this epoch, so it holds
everything the primary inherited from earlier epochs too. At a promotion S starts
as the followers that hold as much WAL as the new primary (they have all it has).
A follower that never streamed at this epoch (bootstrapping, rejoining, a failed
rejoin) is not in S and cannot block a failover; one that did and is missing does.

**Safety (R + W > N).** With ``ANY k`` over S, every acknowledged commit is on at
least k members of S. A set of answering members of S is sure to include one
holding it iff it misses at most ``k - 1`` of them, i.e. it has at least
``|S| - k + 1`` (and at least one: with S empty only the failed primary holds what
it inherited). Then the candidate with the highest received (flushed) LSN among
them holds every acknowledged commit; only members of S are candidates.
Records without ``syncStandbys`` (written by an older manager, whose setting listed
every follower) are judged with S = every follower and any answering candidate.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable

from pgshard_proxy.contract import positions

from . import policy, state

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


def listed(value: str | None) -> frozenset[str] | None:
    """The member names in a ``synchronous_standby_names`` value written by
    :func:`standby_names` (``None`` if it is not in that form)."""
    if value is None:
        return None
    text = value.strip()
    if text == "":
        return frozenset()
    m = re.fullmatch(r"ANY \d+ \((.*)\)", text, flags=re.DOTALL)
    if m is None:
        return None
    names = re.findall(r'"((?:[^"]|"")*)"', m.group(1))
    return frozenset(n.replace('""', '"') for n in names) - {NO_FOLLOWER}


def caught_up(
    replicas: Iterable[state.ReplicaStat], since: positions.Position | None
) -> frozenset[str]:
    """Followers the primary's ``pg_stat_replication`` shows streaming with everything up
    to ``since`` (the primary's first known position at this epoch) flushed."""
    if since is None:
        return frozenset()
    return frozenset(
        r.name
        for r in replicas
        if r.state == "streaming" and r.flush_lsn is not None and r.flush_lsn >= since
    )


@dataclasses.dataclass(frozen=True)
class AckSafety:
    safe: bool
    reason: str
    candidates: frozenset[str] = frozenset()
    """The answering followers that may be promoted (the best of them, when safe)."""


def failover_keeps_acks(
    settings: policy.ReplicationSettings,
    sync_set: Collection[str] | None,
    followers: Collection[str],
    answering: Collection[str],
) -> AckSafety:
    """Whether the best of the answering candidates is sure to hold every acknowledged
    commit, and who the candidates are.

    ``sync_set`` is the published S (``None``: an older record, S = ``followers``);
    ``followers`` the members other than the failed primary; ``answering`` the
    promotable ones that answered. Members of S that left the shard do not count
    (scaling down hands their commits over first).
    """
    k = settings.required_acks
    answering_set = frozenset(answering) & frozenset(followers)
    if k == 0:
        return AckSafety(
            True, "async mode: acknowledged commits may be lost (bounded by lag)", answering_set
        )
    legacy = sync_set is None
    s = frozenset(followers) if sync_set is None else frozenset(sync_set) & frozenset(followers)
    present = s & answering_set
    needed = len(s) - k + 1 if legacy else max(1, len(s) - k + 1)
    what = "listed followers" if legacy else "followers that may hold acknowledged commits"
    if len(present) >= needed:
        return AckSafety(
            True,
            f"{len(present)} of {len(s)} {what} answer, at least {needed} needed for "
            f"ANY {k}: the most advanced holds every acknowledged commit",
            answering_set if legacy else present,
        )
    if not s:
        return AckSafety(
            False,
            "no follower has caught up with the failed primary at this epoch, so it alone "
            "may hold acknowledged commits; bring it back, or force a failover: that loses "
            "whatever it acknowledged that the promoted follower had not received",
        )
    missing = sorted(s - present)
    return AckSafety(
        False,
        f"cannot be sure the candidates hold every acknowledged commit: with ANY {k} over "
        f"the {len(s)} {what} ({', '.join(sorted(s))}) at least {needed} must answer, "
        f"only {len(present)} do (missing: {', '.join(missing)}); bring them back, or force "
        f"a failover: that loses the commits only {', '.join(missing)} may hold (acknowledged "
        f"by them alone while the answering ones lagged)",
    )
