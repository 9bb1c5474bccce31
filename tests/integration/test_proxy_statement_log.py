"""The proxy writes the statement log: writes through it reach statement-mode followers.

A local cluster replicating by statement (one shard, two followers); clients write
through the real proxy only (asyncpg and psycopg, simple and extended protocol), with
values PostgreSQL would choose differently on every server (serial and identity
keys, ``now()``, ``random()``, ``gen_random_uuid()`` defaults and values). Afterwards
each follower's tables and sequences equal the primary's, row by row.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.support import localcluster, pipeline
from tests.support.proxy_writers import kill_primary_under_writers
from tests.support.statement_writer import table_contents

SCHEMA = [
    "CREATE TABLE items (id serial PRIMARY KEY, u uuid NOT NULL DEFAULT gen_random_uuid(), "
    "at timestamptz NOT NULL DEFAULT now(), rnd float8, k int NOT NULL, v int NOT NULL)",
    "CREATE TABLE ident (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int, "
    "at timestamptz)",
    "CREATE TABLE acc (k int PRIMARY KEY, v bigint NOT NULL)",
    "CREATE TABLE snap (k int, n int, total bigint, at timestamptz, PRIMARY KEY (k, n))",
    "CREATE TABLE nokey (a int, r float8)",
    "CREATE SEQUENCE tick",
    "CREATE TABLE par (id int PRIMARY KEY)",
    "CREATE TABLE chi (id int PRIMARY KEY, p int REFERENCES par ON DELETE CASCADE)",
]
TABLES = ["items", "ident", "acc", "snap", "par", "chi"]
SEQUENCES = ["items_id_seq", "ident_id_seq", "tick"]


async def settled(c: localcluster.LocalCluster, timeout: float = 90) -> dict[str, Any]:
    """The shard once every follower applied everything the primary logged."""
    async with asyncio.timeout(timeout):
        while True:
            shard = await asyncio.to_thread(c.shard, 0)
            target = shard["primary"]["position"]
            states = [(f["state"], f["position"]) for f in shard["followers"]]
            assert all(st != "diverged" for st, _ in states), shard
            if all(st == ("streaming", target) for st in states):
                return shard
            await asyncio.sleep(0.3)


async def snapshot(dsn: str) -> dict[str, Any]:
    rows = await table_contents(dsn, TABLES)
    conn = await asyncpg.connect(dsn)
    try:
        for s in SEQUENCES:
            rows[s] = await conn.fetchval("SELECT pg_sequence_last_value($1::regclass)", s)
    finally:
        await conn.close()
    return rows


def statements(rnd: random.Random, i: int, n: int) -> list[str]:
    """One random write (or a few, for a transaction) of session ``i``."""
    k = rnd.randrange(20)
    choice = rnd.randrange(11)
    if choice == 0:
        return [f"INSERT INTO items (rnd, k, v) VALUES (random(), {i}, {n}), (0.5, {k}, {n})"]
    if choice == 1:
        return [f"INSERT INTO ident (v, at) VALUES ({n}, now()) RETURNING id"]
    if choice == 2:
        return [
            f"INSERT INTO acc VALUES ({k}, {n}) ON CONFLICT (k) DO UPDATE "
            "SET v = acc.v + excluded.v"
        ]
    if choice == 3:
        return [f"UPDATE items SET v = v + 1, at = now() WHERE k = {k}"]
    if choice == 4:
        lo = rnd.randrange(200)
        return [f"UPDATE items SET v = v * 2 WHERE id BETWEEN {lo} AND {lo + 15}"]
    if choice == 5:
        return [f"DELETE FROM items WHERE k = {k} AND id % 3 = {n % 3}"]
    if choice == 6:
        return [f"INSERT INTO snap SELECT {i}, {n}, coalesce(sum(v), 0), now() FROM acc"]
    if choice == 7:
        return [f"UPDATE items SET u = gen_random_uuid() WHERE id = {rnd.randrange(200)}"]
    if choice == 8:  # row images (the rewriter refuses these three)
        return [f"UPDATE items SET rnd = random(), at = clock_timestamp() WHERE k = {k}"]
    if choice == 9:
        return [f"DELETE FROM items WHERE k = {k} AND random() < 0.3"]
    if choice == 10:
        return [
            f"INSERT INTO items (rnd, k, v) SELECT random(), {k}, g FROM generate_series(1, 3) g"
        ]
    return [f"INSERT INTO items (k, v) VALUES ({k}, (SELECT count(*) FROM items))"]


def with_parameters(rnd: random.Random, i: int, n: int) -> tuple[str, tuple[Any, ...]]:
    """A write of the extended protocol: its values as parameters ($n)."""
    k = rnd.randrange(20)
    return rnd.choice(
        [
            ("INSERT INTO items (rnd, k, v) VALUES (random(), $1, $2)", (k, n)),
            ("INSERT INTO ident (v, at) VALUES ($1, now())", (n,)),
            ("UPDATE items SET v = v + $1 WHERE k = $2", (i, k)),
            ("INSERT INTO acc VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = acc.v + $2",
             (k, n)),
            ("DELETE FROM items WHERE id = $1", (rnd.randrange(200),)),
            # Row images with parameters.
            ("UPDATE items SET rnd = random() * $1 WHERE k = $2", (n, k)),
            ("DELETE FROM items WHERE k = $1 AND random() < $2", (k, 0.3)),
        ]
    )  # fmt: skip


async def row_images(conn: asyncpg.Connection) -> None:
    """The row-image fallback: statements the rewriter refuses (volatile SET values and
    row choice) run on the primary and are logged as upserts / deletes by key."""
    rows = ", ".join(f"({g % 20}, {g})" for g in range(1, 121))
    await conn.execute(f"INSERT INTO items (k, v) VALUES {rows}")
    assert await conn.execute("UPDATE items SET rnd = random() WHERE id < 50") == "UPDATE 49"
    await conn.execute("BEGIN")
    await conn.execute("UPDATE items SET rnd = random() * v, at = clock_timestamp() WHERE v < 60")
    deleted = await conn.execute("DELETE FROM items WHERE random() < 0.5")
    assert deleted.startswith("DELETE ")
    await conn.execute("COMMIT")
    # A sequence the statement advanced is set on the followers too.
    await conn.execute("UPDATE items SET v = nextval('tick') WHERE random() < 2")
    await conn.execute("BEGIN")
    await conn.execute("DELETE FROM items WHERE random() < 0.9")
    await conn.execute("UPDATE items SET rnd = -1 WHERE random() < 2")
    await conn.execute("ROLLBACK")
    assert await conn.fetchval("SELECT count(*) FROM items WHERE rnd = -1") == 0
    # INSERTs: a volatile value per row; an upsert; one that would move a key; no key.
    got = await conn.execute(
        "INSERT INTO items (k, v, rnd) SELECT g % 20, g, random() FROM generate_series(1, 5) g"
    )
    assert got == "INSERT 0 5"
    await conn.execute(
        "INSERT INTO ident (v, at) SELECT g, clock_timestamp() FROM generate_series(1, 3) g"
    )
    got = await conn.execute(
        "INSERT INTO acc SELECT g, (random() * 100)::int FROM generate_series(1, 3) g "
        "ON CONFLICT (k) DO UPDATE SET v = acc.v + excluded.v"
    )
    assert got == "INSERT 0 3"
    with pytest.raises(asyncpg.FeatureNotSupportedError, match="may change the primary key"):
        await conn.execute(
            "INSERT INTO acc VALUES (1, 1) ON CONFLICT (k) DO UPDATE SET k = (random() * 1e6)::int"
        )
    with pytest.raises(asyncpg.FeatureNotSupportedError, match="nokey has no primary key") as e:
        await conn.execute("INSERT INTO nokey SELECT g, random() FROM generate_series(1, 2) g")
    assert "ADD PRIMARY KEY" in str(e.value.hint)
    # A cascade writes another table, which row images of one table do not carry.
    await conn.execute("INSERT INTO par VALUES (1), (2)")
    await conn.execute("INSERT INTO chi VALUES (1, 1), (2, 2)")
    with pytest.raises(asyncpg.FeatureNotSupportedError, match="wrote rows of other tables"):
        await conn.execute("DELETE FROM par WHERE random() < 2")
    assert await conn.fetchval("SELECT count(*) FROM chi") == 2
    # Prepared (extended protocol): the client's parameters, its statement prepared once
    # and run again, inside a transaction and out, refusals as by the simple protocol.
    for below in (300, 200):
        n = await conn.fetchval("SELECT count(*) FROM items WHERE id < $1", below)
        got = await conn.execute("UPDATE items SET rnd = random() WHERE id < $1", below)
        assert got == f"UPDATE {n}" and n > 0
    async with conn.transaction():
        got = await conn.execute(
            "INSERT INTO items (k, v, rnd) SELECT $1::int, g, random() "
            "FROM generate_series(1, $2) g",
            77,
            3,
        )
        assert got == "INSERT 0 3"
        assert (await conn.execute("DELETE FROM items WHERE k = $1 AND random() < 2", 77)) == (
            "DELETE 3"
        )
    with pytest.raises(asyncpg.FeatureNotSupportedError, match="nokey has no primary key"):
        await conn.execute("UPDATE nokey SET r = random() WHERE a > $1", 0)
    with pytest.raises(asyncpg.UndefinedColumnError):  # the statement's own error
        await conn.execute("UPDATE items SET nothere = random() WHERE id < $1", 3)
    # What the client gets is PostgreSQL's answer to its statement, not to the capture.
    assert await conn.execute("UPDATE items AS i SET rnd = random() WHERE i.id < 0") == "UPDATE 0"


async def asyncpg_session(dsn: str, rnd: random.Random, i: int, rounds: int) -> int:
    """Writes by asyncpg: ``execute`` without arguments (simple protocol) and with them
    (extended protocol, prepared statements)."""
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    committed = 0
    try:
        for n in range(rounds):
            kind = rnd.random()
            if kind < 0.3:
                for sql in statements(rnd, i, n):
                    await conn.execute(sql)
                committed += 1
                continue
            if kind < 0.5:
                sql, args = with_parameters(rnd, i, n)
                await conn.execute(sql, *args)
                committed += 1
                continue
            await conn.execute("BEGIN")
            for sql in statements(rnd, i, n) + statements(rnd, i, n + 1000):
                await conn.execute(sql)
            sql, args = with_parameters(rnd, i, n + 3000)
            await conn.execute(sql, *args)
            if rnd.random() < 0.4:
                await conn.execute("SAVEPOINT s1")
                await conn.execute(statements(rnd, i, n + 2000)[0])
                await conn.execute("ROLLBACK TO SAVEPOINT s1" if rnd.random() < 0.5 else
                                   "RELEASE SAVEPOINT s1")  # fmt: skip
            if kind < 0.6:
                await conn.execute("ROLLBACK")
            else:
                await conn.execute("COMMIT")
                committed += 1
            await asyncio.sleep(rnd.random() * 0.005)
    finally:
        await conn.close()
    return committed


async def psycopg_session(dsn: str, rnd: random.Random, i: int, rounds: int) -> int:
    """Writes by psycopg: without parameters (the simple protocol) and with them (the
    extended protocol, also pipelined by executemany)."""
    committed = 0
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for n in range(rounds):
            kind = rnd.random()
            if kind < 0.3:
                await conn.execute(statements(rnd, i, n)[0])
                committed += 1
                continue
            if kind < 0.4:
                sql, args = with_parameters(rnd, i, n)
                await conn.execute(sql.replace("$1", "%(a)s").replace("$2", "%(b)s"),
                                   dict(zip("ab", args, strict=False)))  # fmt: skip
                committed += 1
                continue
            if kind < 0.5:
                # Pipelined: Bind/Execute pairs of one statement before one Sync, row
                # images among them (each runs after the pairs before it).
                sql = rnd.choice(
                    [
                        "INSERT INTO items (k, v) VALUES (%s, %s)",
                        "UPDATE items SET rnd = random() WHERE k = %s AND v > %s",
                    ]
                )
                async with conn.cursor() as cur:
                    await cur.executemany(sql, [(i, n), (i, n + 1), (rnd.randrange(20), 0)])
                committed += 1
                continue
            await conn.execute("BEGIN")
            for sql in statements(rnd, i, n) + statements(rnd, i, n + 1000):
                await conn.execute(sql)
            if rnd.random() < 0.2:
                # An error aborts the transaction; its COMMIT rolls back.
                with pytest.raises(psycopg.errors.FeatureNotSupported, match="nowhere"):
                    await conn.execute("INSERT INTO nowhere VALUES (1)")
                await conn.execute("COMMIT")
            else:
                await conn.execute("COMMIT")
                committed += 1
    return committed


@pytest.mark.parametrize("seed", [random.randrange(1 << 30)])
async def test_random_concurrent_writes_through_the_proxy_replay_identically(
    pg_tmp: Path, seed: int
) -> None:
    with localcluster.running(pg_tmp, "--replication-method=statement", shards=1, replicas=2) as c:
        dsn = c.status()["proxy"]["dsn"]
        conn = await asyncpg.connect(dsn)
        try:
            for sql in SCHEMA:
                await conn.execute(sql)
            # Refused, with the construct, the table and the fix named and nothing run.
            await conn.execute("INSERT INTO items (k, v) VALUES (0, 0)")
            nokey = r"random.*table public.nokey has no primary key"
            with pytest.raises(asyncpg.FeatureNotSupportedError, match=nokey) as e:
                await conn.execute("UPDATE nokey SET r = random()")
            assert "ALTER TABLE public.nokey ADD PRIMARY KEY" in str(e.value.hint)
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO acc VALUES (-1, 0)")
            with pytest.raises(asyncpg.FeatureNotSupportedError, match=nokey):
                await conn.execute("UPDATE nokey SET r = random() WHERE a > 0")
            # The refusal aborted the transaction, as a PostgreSQL error does.
            with pytest.raises(asyncpg.InFailedSQLTransactionError):
                await conn.execute("SELECT 1")
            await conn.execute("COMMIT")
            await row_images(conn)
        finally:
            await conn.close()

        rounds = 25
        done = await asyncio.gather(
            *(asyncpg_session(dsn, random.Random(seed + i), i, rounds) for i in range(3)),
            *(psycopg_session(dsn, random.Random(seed + i), i, rounds) for i in range(3, 5)),
        )
        assert sum(done) > 0
        conn = await asyncpg.connect(dsn)
        try:
            # Last writes of each sequence (a rolled-back nextval is not logged).
            await conn.execute("INSERT INTO items (k, v) VALUES (99, 99)")
            await conn.execute("INSERT INTO ident (v) VALUES (99)")
            assert await conn.fetchval("SELECT count(*) FROM acc WHERE k = -1") == 0
        finally:
            await conn.close()
        shard = await settled(c)
        print(f"seed {seed}: {sum(done)} committed client transactions, "
              f"{shard['primary']['position']} log entries")  # fmt: skip
        expected = await snapshot(shard["primary"]["dsn"])
        assert len(expected["items"]) > 10
        for f in shard["followers"]:
            got = await snapshot(f["dsn"])
            for name, rows in expected.items():
                if isinstance(rows, list):
                    missing = sorted(set(rows) - set(got[name]))[:5]
                    extra = sorted(set(got[name]) - set(rows))[:5]
                    assert got[name] == rows, (
                        f"{name} differs on {f['name']} (seed {seed}): "
                        f"missing there {missing}, extra there {extra}"
                    )
                else:
                    assert got[name] == rows, f"sequence {name} on {f['name']} (seed {seed})"
        # None of it counts as a write that bypassed the proxy (two checks later, all of
        # it was decoded: one check every 5 s).
        primary = shard["primary"]["name"]
        first = c.agent_status(primary)["bypass"]["checks"]
        async with asyncio.timeout(60):
            while (found := c.agent_status(primary)["bypass"])["checks"] < first + 2:
                assert found["error"] is None, found
                await asyncio.sleep(0.3)
        assert found["transactions"] == 0, found


def _pipelined(dsn: str, statements: list[tuple[bytes, list[bytes]]]) -> list[Any]:
    """``statements`` sent in one libpq pipeline, one Sync at its end: each one's
    ``(status, command tag or error)``."""
    with psycopg.connect(dsn, autocommit=True) as c:
        pg = c.pgconn
        pg.enter_pipeline_mode()
        for sql, args in statements:
            pg.send_query_params(sql, args)
        pg.pipeline_sync()
        assert pg.flush() == 0
        got = pipeline.results(pg)[:-1]  # without the sync's
        pg.exit_pipeline_mode()
    return [
        (
            psycopg.pq.ExecStatus(r.status).name,
            (r.error_message or r.command_status or b"").decode(),
        )
        for r in got
    ]


async def test_row_images_in_a_pipelined_batch_run_after_what_came_before(
    pg_tmp: Path,
) -> None:
    """Extended protocol, one Sync for several statements: a row image runs after the
    statements before it (the proxy sends those first), answers as PostgreSQL would,
    and an error before it skips the rest and rolls the implicit transaction back."""
    with localcluster.running(pg_tmp, "--replication-method=statement", shards=1, replicas=1) as c:
        dsn = c.status()["proxy"]["dsn"]
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE p (id int PRIMARY KEY, r float8 NOT NULL)")
        finally:
            await conn.close()
        insert, image = b"INSERT INTO p VALUES ($1, 0)", b"UPDATE p SET r = random() + $1"
        got = await asyncio.to_thread(
            _pipelined, dsn, [(insert, [b"1"]), (image, [b"1"]), (insert, [b"2"])]
        )
        assert got == [("COMMAND_OK", "INSERT 0 1"), ("COMMAND_OK", "UPDATE 1"),
                       ("COMMAND_OK", "INSERT 0 1")]  # fmt: skip
        got = await asyncio.to_thread(
            _pipelined,
            dsn,
            [(insert, [b"3"]), (insert, [b"3"]), (image, [b"5"]), (insert, [b"4"])],
        )
        assert [s for s, _ in got] == ["COMMAND_OK", "FATAL_ERROR", "PIPELINE_ABORTED",
                                       "PIPELINE_ABORTED"]  # fmt: skip
        assert "duplicate key" in got[1][1]
        shard = await settled(c)
        primary = await table_contents(shard["primary"]["dsn"], ["p"])
        assert sorted((i, r >= 1) for i, r in primary["p"]) == [(1, True), (2, False)]
        assert await table_contents(shard["followers"][0]["dsn"], ["p"]) == primary


async def test_dependent_transactions_through_the_proxy_replay_in_commit_order(
    pg_tmp: Path,
) -> None:
    """T2's UPDATE (open transaction) matches rows by range; T1, autocommit, inserts a row
    in that range meanwhile. T1 must wait for T2 (the shard's write lock, taken before
    T2's first write), so the log holds T2 before T1, as they took effect: replaying T1
    first would also update T1's row (tests/integration/test_statement_log.py shows that
    divergence with the lock taken only at COMMIT)."""
    with localcluster.running(pg_tmp, "--replication-method=statement", shards=1, replicas=1) as c:
        dsn = c.status()["proxy"]["dsn"]
        c1 = await asyncpg.connect(dsn)
        c2 = await asyncpg.connect(dsn)
        try:
            await c1.execute("CREATE TABLE acc (id int PRIMARY KEY, v int)")
            await c1.execute("INSERT INTO acc VALUES (1, 10)")
            await c2.execute("BEGIN")
            await c2.execute("UPDATE acc SET v = v + 1 WHERE id > 0")
            t1 = asyncio.ensure_future(c1.execute("INSERT INTO acc VALUES ($1, 20)", 2))
            await asyncio.sleep(1.0)
            assert not t1.done(), "T1 committed while T2 held the shard's write lock"
            await c2.execute("COMMIT")
            await asyncio.wait_for(t1, 30)
            assert await c1.fetch("SELECT * FROM acc ORDER BY id") == [(1, 11), (2, 20)]
        finally:
            await c1.close()
            await c2.close()
        shard = await settled(c)
        expected = await table_contents(shard["primary"]["dsn"], ["acc"])
        assert expected["acc"] == [(1, 11), (2, 20)]
        for f in shard["followers"]:
            assert await table_contents(f["dsn"], ["acc"]) == expected


async def test_kill_9_of_the_primary_under_writes_through_the_proxy(pg_tmp: Path) -> None:
    """Writers through the proxy while the primary is killed (kill -9): the follower with
    the highest applied seq is promoted and continues the log, the writers reconnect and
    go on, the old primary rejoins; every member ends identical. Async mode: acknowledged
    writes the follower had not applied are lost, and counted (printed)."""
    with localcluster.running(
        pg_tmp,
        "--replication-method=statement",
        "--lease-ttl=2",
        "--detection-seconds=1",
        "--cooldown-seconds=0",
        shards=1,
        replicas=2,
    ) as c:
        dsn = c.status()["proxy"]["dsn"]
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(SCHEMA[0])
        finally:
            await conn.close()
        acked, old, before = await kill_primary_under_writers(
            c, dsn, lambda i, n: (f"INSERT INTO items (k, v) VALUES ({i * 100000 + n}, {n})",
                                  i * 100000 + n), writers=3, after=20,
        )  # fmt: skip
        async with asyncio.timeout(180):
            while True:
                shard = await asyncio.to_thread(c.shard, 0)
                target = shard["primary"]["position"]
                states = {f["name"]: (f["state"], f["position"]) for f in shard["followers"]}
                if len(states) == 2 and all(s == ("streaming", target) for s in states.values()):
                    break
                await asyncio.sleep(0.5)
        assert old in states  # rejoined
        expected = await table_contents(shard["primary"]["dsn"], ["items"])
        for f in shard["followers"]:
            assert await table_contents(f["dsn"], ["items"]) == expected
        present = {row[4] for row in expected["items"]}
        lost = [k for k in acked if k not in present]
        print(f"{len(acked)} acknowledged writes, {len(lost)} lost in the failover (async)")
        assert len(acked) > before
