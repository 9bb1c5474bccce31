"""``pgshard local upgrade``: move every member of a statement-method cluster onto other
PostgreSQL binaries (a newer major version) while it keeps serving.

``plan`` is pure (unit-tested): per shard, the followers still on other binaries, then
the primary. The supervisor (supervisor.py) carries it out, asked through its control
endpoint, one member at a time: a follower is *rebuilt* (its agent stopped, its data
deleted, a new agent on the new binaries bootstraps it from a snapshot dump of the
primary, as ``scale`` adds one); once every follower of a shard runs the new binaries,
and one of them applied the log the primary had written by then (``caught_up``),
the shard switches over to the best of them (the existing switchover: it waits until
the target applied every entry, so no acknowledged write is lost, and its pause is the
only one), and the old primary is rebuilt last. A shard whose members all run the new
binaries is left alone, so a failed upgrade is continued by running it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Collection, Mapping

import asyncpg

from pgshard_proxy.contract import statement_log as slog

from ..model import spec as specs
from .layout import ClusterConfig, MemberSpec


class UpgradeRefused(Exception):
    """The upgrade cannot start or stopped; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    shard: int
    followers: tuple[MemberSpec, ...]
    """Followers to rebuild on the new binaries, in order, before the switchover."""
    primary: MemberSpec | None
    """The primary, switched away from and rebuilt last; None if it runs them already."""


def plan(
    cfg: ClusterConfig, bindir: str, default_bindir: str, primaries: Mapping[int, str | None]
) -> list[ShardPlan]:
    """What to rebuild so that every member runs ``bindir`` (members without a recorded
    bindir run ``default_bindir``); refuses what cannot be done without losing writes
    or availability."""
    if cfg.method is not specs.ReplicationMethod.STATEMENT:
        raise UpgradeRefused(
            "upgrade needs --replication-method statement: WAL streaming (the wal method) "
            "cannot cross PostgreSQL major versions; create a statement-method cluster"
        )
    if cfg.replicas < 1:
        raise UpgradeRefused(
            "upgrade switches each shard over to a follower on the new binaries, but the "
            "shards have none: add one first (pgshard local scale --replicas 1)"
        )
    out = []
    for shard in range(cfg.shards):
        primary = primaries.get(shard)
        if primary is None:
            raise UpgradeRefused(f"shard {shard} has no primary now; retry once it has one")
        old = [m for m in cfg.members(shard) if (m.bindir or default_bindir) != bindir]
        out.append(
            ShardPlan(
                shard=shard,
                followers=tuple(m for m in old if m.name != primary),
                primary=next((m for m in old if m.name == primary), None),
            )
        )
    return out


async def caught_up(primary_dsn: str, followers: Collection[str], deadline: float) -> None:
    """Until one of ``followers`` applied every entry the primary had logged when called
    (its bookmark in ``pgshard.followers``): the backlog of a freshly rebuilt follower
    is applied before the switchover, whose pause would otherwise include it."""
    try:
        conn = await asyncpg.connect(primary_dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        raise UpgradeRefused(f"cannot reach the shard's primary ({e}); retry") from None
    try:
        cut = int(await conn.fetchval(slog.POSITION_SQL))
        query = f"SELECT coalesce(max(seq), 0) FROM {slog.SCHEMA}.followers WHERE name = ANY($1)"
        while True:
            applied = int(await conn.fetchval(query, list(followers)))
            if applied >= cut:
                return
            if time.monotonic() > deadline:
                raise UpgradeRefused(
                    f"{', '.join(sorted(followers))} applied the log up to {applied} only, "
                    f"{cut} needed, before the timeout; run the upgrade again (it continues)"
                )
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
