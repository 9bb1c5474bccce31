"""The shard manager against real PostgreSQL: kill -9 of a sync primary; a switchover;
quorum mode blocking commits while fewer than k followers are up.

Three real servers (a primary and two streaming followers), the real probe, the real
decision code and real SQL actions (``tests/support/miniplatform.py``). Checks what a
fake cannot: that PostgreSQL accepts our synchronous_standby_names and reports it back
unchanged, that a repointed follower streams from the new primary on the new timeline,
and that every commit acknowledged in sync mode survives the failover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from pgshard_operator.instance import postgres
from pgshard_operator.shard import actions, decide, manager, policy
from tests.support import miniplatform, pgserver

K = decide.DecisionKind
POLICY = policy.ShardPolicy(
    replication=policy.ReplicationSettings(policy.ReplicationMode.SYNC),
    failover=policy.FailoverSettings(detection_seconds=1, cooldown_seconds=0),
    probe_timeout_seconds=3,
)


@pytest.fixture
def shard(pg_server: pgserver.PgServer, pg_tmp: Path) -> Iterator[dict[str, pgserver.PgServer]]:
    servers = {"p": pg_server}
    try:
        for name in ("a", "b"):
            servers[name] = pgserver.make_follower(pg_server, pg_tmp, name)
        yield servers
    finally:
        for name in ("a", "b"):
            if name in servers:
                servers[name].stop()


async def cycle_until(
    m: manager.ShardManager, kind: decide.DecisionKind, limit: int = 40
) -> list[decide.Decision]:
    seen = []
    for _ in range(limit):
        d = await m.run_cycle()
        assert d is not None
        seen.append(d)
        if d.kind is kind and not [a for a in d.actions if not isinstance(a, actions.Rejoin)]:
            return seen
        await asyncio.sleep(0.25)
    raise AssertionError(f"no quiet {kind} after {limit} cycles: {[x.reason for x in seen]}")


async def both_streaming(primary: pgserver.PgServer, timeout: float = 60) -> None:
    """Until followers a and b stream and have replayed all the primary wrote (they were
    just started; the first cycle names only caught-up followers as sync standbys)."""
    conn = await asyncpg.connect(primary.dsn)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        query = (
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' "
            "AND replay_lsn >= pg_current_wal_lsn()"
        )
        while await conn.fetchval(query) < 2:
            assert asyncio.get_running_loop().time() < deadline, "followers do not stream"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def test_sync_shard_survives_kill_of_its_primary(
    shard: dict[str, pgserver.PgServer],
) -> None:
    world = miniplatform.MiniPlatform(shard, "p", ttl=5)
    m = manager.ShardManager(world, POLICY)
    try:
        await both_streaming(shard["p"])
        first = await m.run_cycle()
        assert first is not None and first.kind is K.HEALTHY
        assert actions.SetSyncStandbys("p", 'ANY 1 ("a", "b")') in first.actions
        # Once set, PostgreSQL reports the value back verbatim: nothing more to do.
        await cycle_until(m, K.HEALTHY)

        conn = await asyncpg.connect(shard["p"].dsn)
        try:
            await conn.execute("CREATE TABLE acked (id int PRIMARY KEY)")
            for i in range(200):
                await conn.execute("INSERT INTO acked VALUES ($1)", i)  # each one acknowledged
        finally:
            await conn.close()

        world.kill("p")
        history = await cycle_until(m, K.HEALTHY)
        failover = next(d for d in history if d.kind is K.FAILING_OVER)
        assert "process is gone" in failover.reason
        (new,) = world.promoted
        other = "b" if new == "a" else "a"
        assert world.shard.epoch == 2
        assert world.shard.primary is not None and world.shard.primary.name == new
        assert world.lease is not None and world.lease.holder == new
        # The new primary starts with the followers that hold as much WAL as it does (the
        # old primary p is not one); the others join once they have caught up under it.
        assert failover.actions[0] in (
            actions.SetSyncStandbys(new, f'ANY 1 ("{other}")'),
            actions.SetSyncStandbys(new, 'ANY 1 ("pgshard_no_follower")'),
        )
        assert world.shard.sync_standbys == (other,)

        conn = await asyncpg.connect(shard[new].dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM acked") == 200
            assert await conn.fetchval("SHOW synchronous_standby_names") == (f'ANY 1 ("{other}")')
            # A sync commit on the new primary needs the repointed follower to confirm it.
            await conn.execute("INSERT INTO acked VALUES (1000)", timeout=30)
        finally:
            await conn.close()
        obs = (await m.run_cycle(), m.status())[1]
        assert obs.kind is K.HEALTHY and obs.epoch == 2
        follower = next(f for f in world.shard.followers if f.name == other)
        assert follower.state == "streaming"
        old = next(f for f in world.shard.followers if f.name == "p")
        assert old.state == "down"
        assert world.shard.last_failover is not None
        assert world.shard.last_failover["from"] == "p"
    finally:
        await m.close()


async def test_switchover_under_writes_loses_nothing(shard: dict[str, pgserver.PgServer]) -> None:
    world = miniplatform.MiniPlatform(shard, "p", ttl=5)
    m = manager.ShardManager(world, policy.ShardPolicy())  # async: only the fence protects
    acked: list[int] = []
    conn = await asyncpg.connect(shard["p"].dsn)
    await conn.execute("CREATE TABLE acked (id int PRIMARY KEY)")
    await cycle_until(m, K.HEALTHY)

    async def write() -> None:
        i = 0
        try:
            while True:
                await conn.execute("INSERT INTO acked VALUES ($1)", i)
                acked.append(i)
                i += 1
        except Exception:
            # The fence stopped the primary: nothing is acknowledged from here on. asyncpg
            # reports that variously (AdminShutdown, connection lost, or an internal state
            # error when the shutdown notice arrives between two queries).
            return

    writer = asyncio.create_task(write())
    try:
        await asyncio.sleep(1)
        last = await m.request_switchover("a")
        await asyncio.wait_for(writer, 30)
    finally:
        writer.cancel()
        conn.terminate()
        await m.close()
    assert last.new_primary == "a" and last.kind.value == "switchover" and last.epoch == 2
    assert world.promoted == ["a"]
    assert len(acked) > 10
    new = await asyncpg.connect(shard["a"].dsn)
    try:
        rows = {r["id"] for r in await new.fetch("SELECT id FROM acked")}
        assert set(acked) <= rows, f"lost {sorted(set(acked) - rows)[:10]}"
        await new.execute("INSERT INTO acked VALUES (-1)")  # a is writable
    finally:
        await new.close()


async def test_quorum_blocks_commits_below_k_and_resumes(
    shard: dict[str, pgserver.PgServer],
) -> None:
    world = miniplatform.MiniPlatform(shard, "p", ttl=5)
    pol = policy.ShardPolicy(
        replication=policy.ReplicationSettings(policy.ReplicationMode.QUORUM, quorum=2)
    )
    m = manager.ShardManager(world, pol)
    conn = await asyncpg.connect(shard["p"].dsn)
    try:
        await cycle_until(m, K.HEALTHY)
        assert await conn.fetchval("SHOW synchronous_standby_names") == 'ANY 2 ("a", "b")'
        await conn.execute("CREATE TABLE q (id int)")  # both followers up: commits
        shard["b"].stop()
        pending = asyncio.create_task(conn.execute("INSERT INTO q VALUES (1)"))
        done, _ = await asyncio.wait({pending}, timeout=3)
        assert not done, "a commit was acknowledged with only 1 of 2 required followers"
        # The list did not shrink because b went away: it still names every follower.
        decision = await m.run_cycle()
        assert decision is not None
        assert not [a for a in decision.actions if isinstance(a, actions.SetSyncStandbys)]
        shard["b"].start(postgres.Binaries.detect())
        await asyncio.wait_for(pending, 60)  # b is back: the commit is confirmed
        assert await conn.fetchval("SELECT count(*) FROM q") == 1
    finally:
        conn.terminate()
        await m.close()
