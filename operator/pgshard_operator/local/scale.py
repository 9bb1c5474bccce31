"""``pgshard local scale``: which members a change of ``--replicas`` adds or removes, and
the PostgreSQL side of removing one.

``plan`` is pure (unit-tested): it refuses what must not happen (too few followers for
the replication mode, removing a primary) with a message saying what to do. The
supervisor (supervisor.py) carries a plan out, asked through its control endpoint:
new members bootstrap from a snapshot of the current primary (the agent's usual path,
slot first); a removed follower first leaves ``synchronous_standby_names``, then
``handed_over`` waits until the remaining followers hold every commit the primary may
have acknowledged with its help, and only then is it stopped, its slot dropped
(``drop_slot``) and its data deleted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Collection, Mapping

import asyncpg

from ..instance import sql
from .layout import ClusterConfig, LayoutError, MemberSpec, ReplicationMode, validate


class ScaleRefused(Exception):
    """The change cannot be made (safely); the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class ScalePlan:
    cfg: ClusterConfig
    """The cluster after the change (written to cluster.json)."""
    added: tuple[MemberSpec, ...]
    removed: tuple[MemberSpec, ...]


def plan(cfg: ClusterConfig, replicas: int, primaries: Mapping[int, str | None]) -> ScalePlan:
    """The members to add or remove so that every shard has ``replicas`` followers.

    Removed are the highest-numbered members; one of them being its shard's primary
    is refused (switch over first), so no primary is ever removed.
    """
    if cfg.mode is not ReplicationMode.ASYNC and replicas < 1:
        raise ScaleRefused(
            f"--replicas {replicas}: replication mode {cfg.mode.value} needs at least 1 follower"
        )
    if cfg.mode is ReplicationMode.QUORUM and replicas < cfg.quorum:
        raise ScaleRefused(
            f"--replicas {replicas}: quorum mode with --quorum {cfg.quorum} needs at least "
            f"{cfg.quorum} followers per shard"
        )
    new = cfg.with_replicas(replicas)
    try:
        validate(new)
    except LayoutError as e:
        raise ScaleRefused(str(e)) from None
    before = {m.name: m for m in cfg.members()}
    after = {m.name: m for m in new.members()}
    removed = tuple(m for n, m in before.items() if n not in after)
    for m in removed:
        if primaries.get(m.shard) == m.name:
            keep = [n.name for n in new.members(m.shard)]
            raise ScaleRefused(
                f"{m.name} is the primary of shard {m.shard} and would be removed; switch "
                f"over first (pgshard switchover --shard {m.shard} --to {keep[0]}), then scale"
            )
    added = tuple(m for n, m in after.items() if n not in before)
    return ScalePlan(cfg=new, added=added, removed=removed)


async def handed_over(
    primary_dsn: str, remaining: Collection[str], required: int, timeout: float
) -> None:
    """Wait until ``required`` of ``remaining`` flushed everything the primary has now.

    Called after the leaving follower was taken out of ``synchronous_standby_names``:
    a commit acknowledged with its help is then on ``required`` of the followers that
    stay, which is what the failover safety check (shard/replication.py) assumes.
    """
    if required == 0:
        return
    conn = await _connect(primary_dsn)
    try:
        cut = await conn.fetchval("SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + timeout
        while True:
            n = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_replication "
                "WHERE application_name = ANY($1::text[]) AND flush_lsn >= $2",
                list(remaining),
                cut,
            )
            if n >= required:
                return
            if time.monotonic() > deadline:
                raise ScaleRefused(
                    f"only {n} of the remaining followers ({', '.join(sorted(remaining))}) "
                    f"flushed the primary's WAL up to {cut} within {timeout:.0f}s, {required} "
                    "needed before a follower can leave safely; bring them back and retry"
                )
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def drop_slot(primary_dsn: str, slot: str, timeout: float) -> None:
    """Drop the replication slot ``slot`` on the primary once its sender is gone."""
    conn = await _connect(primary_dsn)
    try:
        await sql.drop_slot_when_idle(conn, slot, timeout)
    except TimeoutError as e:
        raise ScaleRefused(str(e)) from None
    finally:
        await conn.close()


async def _connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        raise ScaleRefused(f"cannot reach the shard's primary ({e}); retry") from None
