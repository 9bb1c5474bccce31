"""``pgshard local scale`` on a running sync-mode cluster under a write load.

A follower added while writes run bootstraps from a snapshot of the primary and ends
with every acknowledged row; scaled back, it is gone (status, replication slot, data,
``synchronous_standby_names``, cluster.json) and commits still succeed.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import asyncpg

from tests.integration.test_local_failover import eventually
from tests.support import localcluster, writer


async def _fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval(sql, timeout=10)
    finally:
        await conn.close()


async def test_a_follower_added_under_writes_misses_no_row_and_leaves_cleanly(
    pg_tmp: Path,
) -> None:
    with localcluster.running(
        pg_tmp, "--replication-mode=sync", *localcluster.FAST, replicas=1
    ) as c:
        async with writer.running(c.dir / "topology.json") as w:
            await w.wait_acked(30)
            out = await asyncio.to_thread(
                c.cli, "local", "scale", f"--dir={c.dir}", "--replicas=2", timeout=120
            )
            # The summary alone on stdout; progress (not a terminal: plain lines) on stderr.
            assert out.stdout == "2 followers per shard: added s0m2\n"
            progress = out.stderr.splitlines()
            assert progress[0] == "scaling to 2 followers per shard …"
            assert all(re.match(r"\[ *\d+\.\ds\] ", line) for line in progress[1:]), progress
            assert any("] s0m2: " in line for line in progress), progress
            await w.wait_acked(30)  # commits go on with the new member listed
        shard = c.shard(0)
        primary = shard["primary"]
        new = next(f for f in shard["followers"] if f["name"] == "s0m2")
        assert new["state"] == "streaming"
        assert json.loads((c.dir / "cluster.json").read_text())["replicas"] == 2
        assert "taking a snapshot" in (c.dir / "logs" / "s0m2.agent.log").read_text()

        async def has_every_ack() -> bool:
            return set(w.acked) <= await writer.ids_on(new["dsn"])

        await eventually(lambda: asyncio.run(has_every_ack()) or None, what="every ack on s0m2")
        standbys = await _fetchval(primary["dsn"], "SHOW synchronous_standby_names")
        assert standbys == 'ANY 1 ("s0m1", "s0m2")'

        refused = await asyncio.to_thread(
            c.cli, "local", "scale", f"--dir={c.dir}", "--replicas=0", check=False
        )
        assert refused.returncode != 0
        assert "needs at least 1 follower" in refused.stderr

        out = await asyncio.to_thread(
            c.cli, "local", "scale", f"--dir={c.dir}", "--replicas=1", timeout=120
        )
        assert "removed s0m2" in out.stdout
        shard = c.shard(0)
        assert [f["name"] for f in shard["followers"]] == ["s0m1"]
        assert shard["primary"]["name"] == primary["name"]
        assert not (c.dir / "members" / "s0m2").exists()
        assert json.loads((c.dir / "cluster.json").read_text())["replicas"] == 1
        slots = await _fetchval(
            primary["dsn"],
            "SELECT array_agg(slot_name ORDER BY slot_name) FROM pg_replication_slots",
        )
        assert slots == ["s0m1"]
        assert await _fetchval(primary["dsn"], "SHOW synchronous_standby_names") == 'ANY 1 ("s0m1")'
        # Still a sync cluster that commits: s0m1 confirms.
        conn = await asyncpg.connect(primary["dsn"], timeout=10)
        try:
            await conn.execute("INSERT INTO acked VALUES (-1)", timeout=15)
        finally:
            await conn.close()

        c.down()
        stopped = await asyncio.to_thread(
            c.cli, "local", "scale", f"--dir={c.dir}", "--replicas=2", check=False
        )
        assert stopped.returncode != 0
        assert "no cluster running" in stopped.stderr


async def test_quorum_shards_grow_and_shrink_together(pg_tmp: Path) -> None:
    with localcluster.running(
        pg_tmp, "--replication-mode=quorum", "--quorum=2", *localcluster.FAST, shards=2, replicas=2
    ) as c:
        refused = await asyncio.to_thread(
            c.cli, "local", "scale", f"--dir={c.dir}", "--replicas=1", check=False
        )
        assert "--quorum 2 needs at least 2 followers" in refused.stderr
        # At a terminal: rich's live display (rows per new member, bars), then the summary.
        shown = await asyncio.to_thread(
            c.cli_in_terminal, "local", "scale", f"--dir={c.dir}", "--replicas=3", timeout=180
        )
        assert "added s0m3, s1m3" in shown
        assert "s0m3: " in shown and "s1m3: " in shown
        assert "━" in shown and "100%" in shown  # a bar, and the wait done
        assert "\x1b[" in shown  # drawn for a terminal, not plain lines
        for shard in c.status()["shards"]:
            i = shard["index"]
            states = {f["name"]: f["state"] for f in shard["followers"]}
            assert states[f"s{i}m3"] == "streaming"
            standbys = await _fetchval(shard["primary"]["dsn"], "SHOW synchronous_standby_names")
            assert standbys == f'ANY 2 ("s{i}m1", "s{i}m2", "s{i}m3")'
        out = await asyncio.to_thread(
            c.cli, "local", "scale", f"--dir={c.dir}", "--replicas=2", timeout=180
        )
        assert "removed s0m3, s1m3" in out.stdout
        for shard in c.status()["shards"]:
            i = shard["index"]
            assert [f["name"] for f in shard["followers"]] == [f"s{i}m1", f"s{i}m2"]
            dsn = shard["primary"]["dsn"]
            assert await _fetchval(dsn, "SHOW synchronous_standby_names") == (
                f'ANY 2 ("s{i}m1", "s{i}m2")'
            )
            assert await _fetchval(dsn, "SELECT count(*) FROM pg_replication_slots") == 2
            # Commits still gather their two confirmations.
            await _fetchval(dsn, "CREATE TABLE IF NOT EXISTS after_scale (id int)")
