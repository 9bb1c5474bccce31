"""Statement followers on another PostgreSQL major version, and ``pgshard local upgrade``.

A cluster (one shard, one follower) whose primary runs PostgreSQL 15 and follower
PostgreSQL 18 (``--follower-bindir``, the binaries of scripts/install-postgres18):
random concurrent writes through the real proxy (asyncpg and psycopg, the workload of
test_proxy_statement_log.py) leave the 18 follower identical to the 15 primary.

A PostgreSQL 15 cluster (one shard, one follower): the switchover the upgrade relies
on hands the stopping primary's last entries to a target that is behind (a follower's
applier held back until the primary is fenced); then ``local upgrade`` to 18 under a
writer through the proxy loses no acknowledged insert.

Tests skip when the PostgreSQL 18 binaries are absent (the handover part runs first).
Those binaries are built without SSL: a TLS cluster (the default) is refused with
them before anything starts, so these clusters run ``--no-tls``.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import asyncpg

from pgshard_operator.instance import postgres
from tests.integration.test_proxy_statement_log import (
    SCHEMA,
    asyncpg_session,
    psycopg_session,
    settled,
    snapshot,
)
from tests.support import localcluster, pg18, writer
from tests.support.statement_writer import Write, table_contents, write


async def test_a_pg18_follower_of_a_pg15_primary_stays_identical(pg_tmp: Path) -> None:
    new = pg18.required()
    seed = random.randrange(1 << 30)
    if not postgres.ssl_library(postgres.Binaries(new, postgres.RunAs.detect())):
        c = localcluster.new(pg_tmp, shards=1, replicas=1)
        flags = ("--replication-method=statement", f"--follower-bindir={new}")
        refused = c.cli("local", "up", f"--dir={c.dir}", *c.create_args(1, 1), *flags, check=False)
        assert refused.returncode != 0 and "built without SSL support" in refused.stderr
        assert not c.dir.exists(), "refused before anything starts"
    with localcluster.running(
        pg_tmp,
        "--replication-method=statement",
        f"--follower-bindir={new}",
        "--no-tls",
        "--cooldown-seconds=0",
        shards=1,
        replicas=1,
    ) as c:
        doc = c.status()
        assert doc["serverVersions"] == {"s0m0": "15", "s0m1": "18"}
        dsn = doc["proxy"]["dsn"]
        conn = await asyncpg.connect(dsn)
        try:
            for sql in SCHEMA:
                await conn.execute(sql)
        finally:
            await conn.close()
        rounds = 10
        done = await asyncio.gather(
            *(asyncpg_session(dsn, random.Random(seed + i), i, rounds) for i in range(2)),
            psycopg_session(dsn, random.Random(seed + 2), 2, rounds),
        )
        assert sum(done) > 0
        conn = await asyncpg.connect(dsn)
        try:
            # Last writes of each sequence (a rolled-back nextval is not logged).
            await conn.execute("INSERT INTO items (k, v) VALUES (99, 99)")
            await conn.execute("INSERT INTO ident (v) VALUES (99)")
        finally:
            await conn.close()
        shard = await settled(c)
        expected = await snapshot(shard["primary"]["dsn"])
        assert len(expected["items"]) > 5
        follower = shard["followers"][0]
        assert follower["name"] == "s0m1"
        assert await snapshot(follower["dsn"]) == expected, f"seed {seed}"

        # Refused before anything changes: not PostgreSQL binaries.
        bad = c.cli("local", "upgrade", f"--dir={c.dir}", f"--bindir={pg_tmp}", check=False)
        assert bad.returncode != 0
        assert "is not a PostgreSQL bin directory" in bad.stderr


async def test_switchover_hands_over_the_last_entries_then_upgrade_under_a_writer(
    pg_tmp: Path,
) -> None:
    """The target's applier waits on a table lock taken on it by hand while entries are
    logged; the lock is released only once the primary is fenced (holding the shard's
    write lock for good). The primary must stay up until the target pulled what it
    misses: it stopped at once before, and the switchover failed after 30 s.

    Then ``local upgrade`` to PostgreSQL 18 under a writer through the proxy: the
    follower (s0m0) is rebuilt on 18, the shard switches over to it, the old primary
    is rebuilt; every acknowledged insert is on both members afterwards."""
    with localcluster.running(
        pg_tmp,
        "--replication-method=statement",
        "--cooldown-seconds=0",
        "--no-tls",  # upgraded to the PostgreSQL 18 binaries, built without SSL
        shards=1,
        replicas=1,
    ) as c:
        shard = c.shard(0)
        primary = await asyncpg.connect(shard["primary"]["dsn"])
        try:
            await write(primary, [Write("CREATE TABLE t (id int PRIMARY KEY)")])
            await settled(c)
            hand = await asyncpg.connect(
                shard["followers"][0]["dsn"],
                server_settings={"default_transaction_read_only": "off"},
            )
            try:
                await hand.execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
                for i in range(5):
                    await write(primary, [Write("INSERT INTO t VALUES ($1::int)", (i,))])
                switching = asyncio.ensure_future(
                    asyncio.to_thread(
                        c.cli, "switchover", f"--dir={c.dir}", "--shard=0", "--to=s0m1",
                        check=False,
                    )
                )  # fmt: skip
                async with asyncio.timeout(60):
                    while not switching.done():
                        try:
                            fenced = await primary.fetchval(
                                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                "AND granted AND pid <> pg_backend_pid()"
                            )
                        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                            break  # the primary stopped
                        if fenced:
                            break
                        await asyncio.sleep(0.05)
                await hand.execute("ROLLBACK")
            finally:
                await hand.close()
        finally:
            primary.terminate()  # the fence stops its server
        done = await asyncio.wait_for(switching, 120)
        assert done.returncode == 0, done.stderr
        shard = await settled(c)
        assert shard["primary"]["name"] == "s0m1"
        assert await table_contents(shard["primary"]["dsn"], ["t"]) == {
            "t": [(i,) for i in range(5)]
        }

        new = pg18.required()  # the handover above needs PostgreSQL 15 only
        dsn = c.status()["proxy"]["dsn"]
        async with writer.running(dsn, timeout=10) as w:
            await w.wait_acked(20)
            up = await asyncio.to_thread(
                c.cli, "local", "upgrade", f"--dir={c.dir}", f"--bindir={new}", "--timeout=300"
            )
            await w.wait_acked(20)
        assert "every member runs PostgreSQL 18" in up.stdout
        assert "rebuilt: s0m0, s0m1" in up.stdout
        assert "switching from s0m1 to s0m0" in up.stderr  # progress lines
        shard = await settled(c)
        assert shard["primary"]["name"] == "s0m0"
        assert c.status()["serverVersions"] == {"s0m0": "18", "s0m1": "18"}
        acked = set(w.acked)
        for member in (shard["primary"], *shard["followers"]):
            assert acked <= await writer.ids_on(member["dsn"]), member["name"]

        # Older binaries than the members' now: refused.
        old = c.cli(
            "local", "upgrade", f"--dir={c.dir}", "--bindir=/usr/lib/postgresql/15/bin",
            check=False,
        )  # fmt: skip
        assert old.returncode != 0
        assert "older than members already running PostgreSQL 18" in old.stderr
