"""``pgshard local up --replication-method statement``: followers copied by dump, applying
the primary's statement log; positions are log sequence numbers; a follower whose data
was changed by hand is stopped ``diverged`` and copied again.

Writes follow the log writer's protocol on a direct connection to the primary
(tests/support/statement_writer.py), as the application role the proxy uses; writes
through the proxy are tested in test_proxy_statement_log.py.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import asyncpg

from pgshard_proxy.contract import statement_log as slog
from tests.support import localcluster
from tests.support.statement_writer import Write, table_contents, write


async def _settled(c: localcluster.LocalCluster, timeout: float = 60) -> dict[str, Any]:
    """The shard once every follower is at the primary's position (or diverged)."""
    async with asyncio.timeout(timeout):
        while True:
            shard = await asyncio.to_thread(c.shard, 0)
            target = shard["primary"]["position"]
            if all(
                f["state"] == "diverged" or (f["state"] == "streaming" and f["position"] == target)
                for f in shard["followers"]
            ):
                return shard
            await asyncio.sleep(0.2)


async def _log_range(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(f"SELECT min(seq), max(seq) FROM {slog.TABLE}")
        return row[0], row[1]
    finally:
        await conn.close()


async def test_statement_cluster_applies_the_log_reports_seq_and_divergence(
    pg_tmp: Path,
) -> None:
    with localcluster.running(pg_tmp, "--replication-method=statement", shards=1, replicas=2) as c:
        doc = c.status()
        assert doc["method"] == "statement"
        shard = doc["shards"][0]
        assert shard["primary"]["position"] == 0
        assert [f["state"] for f in shard["followers"]] == ["streaming", "streaming"]
        assert "statement replication" in c.cli("local", "status", f"--dir={c.dir}").stdout

        conn = await asyncpg.connect(shard["primary"]["dsn"])
        try:
            await write(conn, [Write("CREATE TABLE t (id int PRIMARY KEY, v text)")])
            for i in range(20):
                await write(
                    conn, [Write("INSERT INTO t VALUES ($1::int, md5($1::int::text))", (i,))]
                )
            await write(conn, [Write("UPDATE t SET v = upper(v) WHERE id % 3 = 0")])
        finally:
            await conn.close()
        shard = await _settled(c)
        assert shard["primary"]["position"] == 22
        assert [f["position"] for f in shard["followers"]] == [22, 22]
        expected = await table_contents(shard["primary"]["dsn"], ["t"])
        for f in shard["followers"]:
            assert await table_contents(f["dsn"], ["t"]) == expected
        # A write straight to the primary (psql), not through the proxy: reported. And
        # the primary's agent trims what every follower applied (both every 5 s). The
        # watch sees what commits after it began (its first check, 5 s after the start):
        # a cluster ready sooner wrote before it and waited in vain.
        async with asyncio.timeout(30):
            while True:
                if (await asyncio.to_thread(c.agent_status, "s0m0"))["bypass"]["checks"]:
                    break
                await asyncio.sleep(0.2)
        await asyncio.to_thread(
            subprocess.run,
            ["psql", "-X", "-v", "ON_ERROR_STOP=1", shard["primary"]["dsn"],
             "-c", "UPDATE t SET v = 'direct' WHERE id = 1"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        async with asyncio.timeout(30):
            while True:
                found = (await asyncio.to_thread(c.agent_status, "s0m0"))["bypass"]
                assert found["error"] is None, found
                if found["transactions"]:
                    break
                await asyncio.sleep(0.2)
            while (oldest_newest := await _log_range(shard["primary"]["dsn"])) != (22, 22):
                assert oldest_newest[1] == 22
                await asyncio.sleep(0.2)
        assert found["transactions"] == 1 and found["lastTables"] == ["public.t"]
        text = c.cli("local", "status", f"--dir={c.dir}").stdout
        assert "1 write transaction(s) BYPASSED THE PROXY on primary s0m0" in " ".join(text.split())

        # Through the proxy: reads are answered (writes: test_proxy_statement_log.py).
        via_proxy = await asyncpg.connect(doc["proxy"]["dsn"])
        try:
            assert await via_proxy.fetchval("SELECT count(*) FROM t") == 20
        finally:
            await via_proxy.close()

        # Resuming keeps the method; another one is refused.
        c.down()
        refused = c.cli("local", "up", f"--dir={c.dir}", "--replication-method=wal", check=False)
        assert refused.returncode != 0
        assert "--replication-method wal contradicts" in refused.stderr
        c.up()

        # Someone writes on a follower by hand (read-only turned off), a row no entry
        # touches: its agent sees a write that did not come from the applier, stops it as
        # diverged and copies the primary again. Then a hand write that the next entry
        # collides with: the same, whichever of the two notices first.
        doc = c.status()
        assert doc["bypass"]["0"]["member"] == "s0m0"  # counted since the agent started
        shard = doc["shards"][0]
        name = shard["followers"][0]["name"]
        expected = await table_contents(shard["primary"]["dsn"], ["t"])
        await _by_hand(shard["followers"][0]["dsn"], "INSERT INTO t VALUES (101, 'by hand')")
        await _copied_again(c, name, expected, writes=1)
        await _by_hand(shard["followers"][0]["dsn"], "INSERT INTO t VALUES (100, 'by hand')")
        conn = await asyncpg.connect(shard["primary"]["dsn"])
        try:
            await write(conn, [Write("INSERT INTO t VALUES (100, 'logged')")])
        finally:
            await conn.close()
        expected = await table_contents(shard["primary"]["dsn"], ["t"])
        await _copied_again(c, name, expected, writes=2)
        shard = await _settled(c)
        assert [f["state"] for f in shard["followers"]] == ["streaming", "streaming"]
        assert [f["position"] for f in shard["followers"]] == [23, 23]


async def _by_hand(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, server_settings={"default_transaction_read_only": "off"})
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _copied_again(
    c: localcluster.LocalCluster, name: str, expected: Any, writes: int, timeout: float = 60
) -> None:
    """Until follower ``name``'s agent counted ``writes`` foreign writes and the follower,
    copied again, has the primary's ``t`` (``expected``), applies the log and watches
    its new copy (a check done since: the copy's slot exists, nothing goes unseen)."""
    async with asyncio.timeout(timeout):
        checks = None
        while True:
            doc = await asyncio.to_thread(c.agent_status, name)
            watch = doc.get("foreignWrites") or {}
            if checks is not None and watch.get("checks", 0) > checks:
                return
            seen = watch.get("transactions", 0)
            if (
                checks is None
                and seen >= writes
                and (doc.get("applier") or {}).get("state") == "applying"
            ):
                member = next(f for f in c.shard(0)["followers"] if f["name"] == name)
                if await table_contents(member["dsn"], ["t"]) == expected:
                    assert seen == writes, doc
                    checks = watch.get("checks", 0)
            await asyncio.sleep(0.3)


async def test_statement_failover_promotes_the_most_applied_follower_and_rejoins(
    pg_tmp: Path,
) -> None:
    """kill -9 of the primary: the follower with the highest applied seq is promoted and
    continues the sequence, the other follows it, the old primary rejoins by a fresh copy;
    every acknowledged entry is on all three afterwards. Then a switchover back."""
    with localcluster.running(
        pg_tmp,
        "--replication-method=statement",
        "--lease-ttl=2",
        "--detection-seconds=1",
        "--cooldown-seconds=0",
        shards=1,
        replicas=2,
    ) as c:
        shard = c.shard(0)
        conn = await asyncpg.connect(shard["primary"]["dsn"])
        try:
            await write(conn, [Write("CREATE TABLE t (id int PRIMARY KEY, v int)")])
            for i in range(30):
                await write(conn, [Write("INSERT INTO t VALUES ($1::int, $1::int)", (i,))])
        finally:
            await conn.close()
        await _settled(c)
        c.kill(0, "s0m0")
        async with asyncio.timeout(90):
            while True:
                shard = await asyncio.to_thread(c.shard, 0)
                if shard["epoch"] >= 2 and shard["primary"]["name"] != "s0m0":
                    break
                await asyncio.sleep(0.3)
        new_primary = shard["primary"]
        conn = await asyncpg.connect(new_primary["dsn"])
        try:
            seq = await write(conn, [Write("UPDATE t SET v = v + 1 WHERE id < 10")])
            assert seq == 32  # continues after the 31 entries every follower applied
        finally:
            await conn.close()
        async with asyncio.timeout(180):
            while True:
                shard = await asyncio.to_thread(c.shard, 0)
                states = {f["name"]: (f["state"], f["position"]) for f in shard["followers"]}
                if len(states) == 2 and all(st == ("streaming", 32) for st in states.values()):
                    break
                await asyncio.sleep(0.5)
        assert "s0m0" in states  # the old primary is a follower again
        expected = await table_contents(new_primary["dsn"], ["t"])
        assert len(expected["t"]) == 30
        for f in shard["followers"]:
            assert await table_contents(f["dsn"], ["t"]) == expected
        assert shard["lastFailover"]["to"] == new_primary["name"]
        async with asyncio.timeout(60):  # recorded once the rejoin is reported
            while True:
                last = (await asyncio.to_thread(c.shard, 0))["lastFailover"]
                if last.get("discardedEntries") is not None:
                    break
                await asyncio.sleep(0.5)
        assert last["discardedEntries"] == 0  # every entry was applied before the kill

        # A switchover back to the old primary: the target applies every entry first.
        done = c.cli("switchover", f"--dir={c.dir}", "--shard=0", "--to=s0m0", timeout=300)
        assert "s0m0" in done.stdout
        async with asyncio.timeout(180):
            while True:
                shard = await asyncio.to_thread(c.shard, 0)
                states = [(f["state"], f["position"]) for f in shard["followers"]]
                if shard["primary"]["name"] == "s0m0" and states == [("streaming", 32)] * 2:
                    break
                await asyncio.sleep(0.5)
        conn = await asyncpg.connect(shard["primary"]["dsn"])
        try:
            assert await write(conn, [Write("DELETE FROM t WHERE id = 0")]) == 33
        finally:
            await conn.close()
        shard = await _settled(c)
        expected = await table_contents(shard["primary"]["dsn"], ["t"])
        assert len(expected["t"]) == 29
        for f in shard["followers"]:
            assert f["position"] == 33
            assert await table_contents(f["dsn"], ["t"]) == expected
