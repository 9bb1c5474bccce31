"""``pgshard local up/status/down`` against real PostgreSQL: bootstrap, streaming, resume.

Each test starts a real cluster (instance agents, initdb, pg_basebackup from a
slot) on a random loopback address and always tears it down.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import time
from pathlib import Path

import asyncpg
import pytest

from tests.support import localcluster


async def _wait_rows(dsn: str, table: str, expected: int, timeout: float = 30) -> int:
    """Rows of ``table`` once there are ``expected`` (or at the deadline). A follower may
    be restarted meanwhile (the shard manager's rejoin of a member it saw gone: a
    "restart"), so connection losses and "starting up" are retried until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
            try:
                exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
                n = await conn.fetchval(f"SELECT count(*) FROM {table}") if exists else 0
            finally:
                await conn.close()
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        if n >= expected or time.monotonic() > deadline:
            return int(n)
        await asyncio.sleep(0.05)


async def test_up_streams_to_followers_then_resumes_after_down(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, "--follower-delay-ms=0,3000", shards=2, replicas=2) as c:
        doc = c.status()
        assert [s["index"] for s in doc["shards"]] == [0, 1]
        for s in doc["shards"]:
            assert s["epoch"] == 1
            assert s["primary"]["address"].startswith(c.host + ":")
            assert [f["state"] for f in s["followers"]] == ["streaming", "streaming"]
            assert all(f["lagBytes"] is not None for f in s["followers"])
        # The topology file the proxy follows has the same structure, owner-only.
        on_disk = json.loads((c.dir / "topology.json").read_text())
        assert [s["primary"]["name"] for s in on_disk["shards"]] == ["s0m0", "s1m0"]
        assert stat.S_IMODE(os.stat(c.dir / "topology.json").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(c.dir / "secrets.json").st_mode) == 0o600

        shard = doc["shards"][0]
        primary = await asyncpg.connect(shard["primary"]["dsn"])
        try:
            await primary.execute("CREATE TABLE t (id int PRIMARY KEY)")
            await primary.execute("INSERT INTO t SELECT generate_series(1, 100)")
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                follower = await asyncpg.connect(shard["followers"][0]["dsn"])
                try:
                    await follower.execute("CREATE TABLE written_on_a_follower (x int)")
                finally:
                    await follower.close()
        finally:
            await primary.close()
        # Follower 1 applies at once; follower 2 only after its 3 s apply delay.
        delayed = shard["followers"][1]["dsn"]
        conn = await asyncpg.connect(delayed)
        try:
            exists = await conn.fetchval("SELECT to_regclass('t') IS NOT NULL")
        finally:
            await conn.close()
        assert not exists, "the delayed follower applied the table before its delay"
        assert await _wait_rows(shard["followers"][0]["dsn"], "t", 100) == 100
        assert await _wait_rows(delayed, "t", 100) == 100

        c.down()
        after = c.status()
        assert after["supervisor"]["running"] is False
        assert {f["state"] for s in after["shards"] for f in s["followers"]} == {"down"}

        c.up()  # resume: same data, same primaries, followers streaming again
        resumed = c.shard(0)
        assert resumed["primary"]["name"] == "s0m0"
        assert await _wait_rows(resumed["followers"][0]["dsn"], "t", 100) == 100


def test_up_refuses_busy_dir_used_port_and_foreign_format(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, shards=1, replicas=1) as c:
        again = c.cli("local", "up", f"--dir={c.dir}", check=False)
        assert again.returncode == 1
        assert "in use by a running cluster" in again.stderr

        other = localcluster.LocalCluster(dir=pg_tmp / "other", host=c.host, base_port=0)
        taken = c.cli(
            "local", "up", f"--dir={other.dir}", f"--host={c.host}",
            f"--base-port={c.base_port}", "--shards=1", "--replicas=1", check=False,
        )  # fmt: skip
        assert taken.returncode == 1
        assert f"port {c.base_port} on {c.host}" in taken.stderr
        assert "--base-port" in taken.stderr
        assert not (other.dir / "cluster.json").exists()

        shape = c.cli("local", "up", f"--dir={c.dir}", "--shards=3", check=False)
        assert shape.returncode == 1

    cfg = json.loads((c.dir / "cluster.json").read_text())
    cfg["format"] = 999
    (c.dir / "cluster.json").write_text(json.dumps(cfg))
    foreign = c.cli("local", "up", f"--dir={c.dir}", check=False)
    assert foreign.returncode == 1
    assert "incompatible" in foreign.stderr


def test_kill_of_a_follower_restarts_it_and_it_catches_up(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, shards=1, replicas=1) as c:
        shard = c.shard(0)
        follower = shard["followers"][0]

        async def write(n: int) -> None:
            conn = await asyncpg.connect(shard["primary"]["dsn"])
            try:
                await conn.execute("CREATE TABLE IF NOT EXISTS k (id int)")
                await conn.execute("INSERT INTO k SELECT generate_series(1, $1)", n)
            finally:
                await conn.close()

        asyncio.run(write(10))
        c.kill(0, follower["name"], "KILL")
        asyncio.run(write(10))  # written while the follower is down
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            f = c.shard(0)["followers"][0]
            if f["state"] == "streaming" and f["lagBytes"] == 0:
                break
            time.sleep(0.2)
        assert asyncio.run(_wait_rows(follower["dsn"], "k", 20)) == 20
        # It resumed from its own position: one snapshot ever, never re-cloned (the shard
        # manager may still point it at the primary again: a "restart" rejoin).
        agent_log = (c.dir / "logs" / "s0m1.agent.log").read_text()
        assert agent_log.count("taking a snapshot") == 1
        assert "reclone" not in agent_log


def test_port_probe_helper_finds_free_ranges() -> None:
    host = "127.0.0.1"
    base = localcluster.free_base_port(host, 5)
    with socket.socket() as s:
        s.bind((host, base + 4))
