"""Statement replication's follower side on real servers: the log, the applier, bootstrap.

A primary and followers are plain PostgreSQL 15 servers; writes follow the log
writer's protocol (tests/support/statement_writer.py) on direct connections. After
every scenario the followers' tables are compared with the primary's, row by row.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from pgshard_operator.instance import applier as applier_mod
from pgshard_operator.instance import dumpcopy, logtrim, postgres, statement_roles
from pgshard_operator.instance.bootstrap import Upstream
from pgshard_operator.instance.credentials import Credentials
from pgshard_proxy.contract import statement_log as slog
from tests.support import pgserver
from tests.support.statement_writer import Transaction, Write, table_contents, write

DB = "app"
BINS = postgres.Binaries.detect()


def app_dsn(server: pgserver.PgServer) -> str:
    return f"postgresql://{server.user}@{server.host}:{server.port}/{DB}"


def endpoint(server: pgserver.PgServer) -> dumpcopy.Endpoint:
    return dumpcopy.Endpoint(server.host, server.port, server.user, DB)


async def create_app_db(server: pgserver.PgServer, schema: bool) -> None:
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.execute(f"CREATE DATABASE {DB}")
    finally:
        await conn.close()
    if schema:
        conn = await asyncpg.connect(app_dsn(server))
        try:
            await conn.execute(slog.SCHEMA_SQL)
        finally:
            await conn.close()


async def make_read_only(server: pgserver.PgServer) -> None:
    """What the agent does to a statement follower: only the applier writes."""
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


@pytest.fixture
def servers(pg_tmp: Path) -> Iterator[list[pgserver.PgServer]]:
    """Three plain servers (a primary and two followers to be); stopped by pid."""
    made: list[pgserver.PgServer] = []
    try:
        for name in ("p", "f1", "f2"):
            made.append(pgserver.make_server(pg_tmp, name))
        yield made
    finally:
        for s in made:
            s.stop()


@pytest.fixture
async def conn(servers: list[pgserver.PgServer]) -> AsyncIterator[asyncpg.Connection]:
    """A session on the first server's application database (made with the log's schema)."""
    await create_app_db(servers[0], schema=True)
    c = await asyncpg.connect(app_dsn(servers[0]))
    try:
        yield c
    finally:
        await c.close()


@contextlib.asynccontextmanager
async def running(a: applier_mod.Applier) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.ensure_future(a.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def address(server: pgserver.PgServer) -> str:
    return f"{server.host}:{server.port}"


async def bootstrap(
    primary: pgserver.PgServer, follower: pgserver.PgServer, name: str | None = None
) -> int:
    """Copy ``primary`` into ``follower`` (with ``name``: its bookmark set on the primary)."""
    await create_app_db(follower, schema=False)
    pos = await dumpcopy.copy_database(
        postgres.Binaries.detect(),
        endpoint(primary),
        endpoint(follower),
        bookmark=(name, address(follower)) if name else None,
    )
    await make_read_only(follower)
    return pos


async def position(server: pgserver.PgServer) -> int:
    conn = await asyncpg.connect(app_dsn(server))
    try:
        return int(await conn.fetchval(slog.POSITION_SQL))
    finally:
        await conn.close()


async def caught_up(
    a: applier_mod.Applier, primary: pgserver.PgServer, timeout: float = 60
) -> None:
    target = await position(primary)
    async with asyncio.timeout(timeout):
        while a.applied < target:
            assert a.state is not applier_mod.State.DIVERGED, a.status()
            await asyncio.sleep(0.05)


async def assert_identical(primary: pgserver.PgServer, *followers: pgserver.PgServer) -> None:
    conn = await asyncpg.connect(app_dsn(primary))
    try:
        tables = [
            r[0]
            for r in await conn.fetch(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
            )
        ]
    finally:
        await conn.close()
    expected = await table_contents(app_dsn(primary), tables)
    assert any(expected[t] for t in tables if not t.startswith("pgshard."))
    for f in followers:
        own = ("pgshard.followers", "pgshard.promoted")  # each member's own
        got = await table_contents(app_dsn(f), [t for t in tables if t not in own])
        for t, rows in got.items():
            assert rows == expected[t], f"{t} differs on {f.datadir.name}"


async def test_applier_replays_statements_with_their_parameters_and_settings(
    servers: list[pgserver.PgServer],
) -> None:
    primary, follower, _ = servers
    await create_app_db(primary, schema=True)
    conn = await asyncpg.connect(app_dsn(primary))
    try:
        await write(
            conn,
            [Write("CREATE TABLE t (id int PRIMARY KEY, shown text, at timestamptz, n numeric)")],
        )
        assert await bootstrap(primary, follower) == 1
        a = applier_mod.Applier("f1", app_dsn(follower), app_dsn(primary))
        async with running(a):
            # The text of a timestamptz depends on TimeZone and DateStyle: pinned per statement.
            await write(
                conn,
                [
                    Write(
                        "INSERT INTO t VALUES ($1, '2024-01-01 12:00+00'::timestamptz::text, "
                        "'2024-01-01 12:00', 1.5)",
                        (1,),
                        {"TimeZone": "Asia/Tokyo", "DateStyle": "SQL, DMY"},
                    ),
                    Write(
                        "INSERT INTO t VALUES (2, '2024-01-01 12:00+00'::timestamptz::text, "
                        "'2024-01-01 12:00', $1)",
                        (None,),
                        {"TimeZone": "America/New_York"},
                    ),
                    Write("UPDATE t SET n = n * $1 WHERE id = $2", (3, 1)),
                ],
            )
            await write(
                conn, [Write("INSERT INTO t SELECT 3, $1::text, '2020-01-01', 0", ("it's",))]
            )
            await caught_up(a, primary)
            assert a.state is applier_mod.State.APPLYING
        await assert_identical(primary, follower)
        rows = await table_contents(app_dsn(follower), ["t"])
        assert rows["t"][0][1] == "01/01/2024 21:00:00 JST"  # TimeZone + DateStyle replayed
        assert rows["t"][1][1] == "01/01/2024 07:00:00 EST"  # DateStyle stays for the transaction
        assert await position(follower) == await position(primary) == 3
    finally:
        await conn.close()
    # The follower refuses writes from anyone but the applier.
    fconn = await asyncpg.connect(app_dsn(follower))
    try:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await fconn.execute("INSERT INTO t VALUES (9, 'x', now(), 0)")
    finally:
        await fconn.close()


@pytest.mark.parametrize("lock_first", [True, False], ids=["protocol", "lock-at-commit"])
async def test_commit_order_of_dependent_transactions(
    servers: list[pgserver.PgServer], lock_first: bool
) -> None:
    """T2's UPDATE runs before T1 commits an INSERT it would match. Under the protocol
    T1 waits for T2 (the write lock), so T2 is logged first, as it ran. Taking the lock
    only at COMMIT logs T1 first, and the replayed UPDATE also changes T1's row."""
    primary, follower, _ = servers
    await create_app_db(primary, schema=True)
    c1 = await asyncpg.connect(app_dsn(primary))
    c2 = await asyncpg.connect(app_dsn(primary))
    try:
        await write(c1, [Write("CREATE TABLE acc (id int PRIMARY KEY, v int)")])
        await write(c1, [Write("INSERT INTO acc VALUES (1, 10)")])
        await bootstrap(primary, follower)
        t2 = Transaction(c2, lock_first)
        await t2.begin()
        await t2.run(Write("UPDATE acc SET v = v + 1 WHERE id > 0"))
        t1 = asyncio.ensure_future(
            write(c1, [Write("INSERT INTO acc VALUES (2, 20)")], lock_first=lock_first)
        )
        await asyncio.sleep(0.5)  # T1 blocks on the lock (protocol) or commits (broken)
        assert t1.done() is not lock_first
        await t2.commit()
        await t1
        a = applier_mod.Applier("f1", app_dsn(follower), app_dsn(primary))
        async with running(a):
            await caught_up(a, primary)
        if lock_first:
            await assert_identical(primary, follower)
        else:
            with pytest.raises(AssertionError, match="acc differs"):
                await assert_identical(primary, follower)
    finally:
        await c1.close()
        await c2.close()


async def test_concurrent_dependent_workload_replays_to_the_same_state(
    servers: list[pgserver.PgServer],
) -> None:
    """Several sessions whose statements read what the others write (INSERT … SELECT,
    UPDATE by range, sums), with rollbacks, while a follower applies; random seed."""
    primary, follower, _ = servers
    seed = random.randrange(1 << 30)
    await create_app_db(primary, schema=True)
    conns = [await asyncpg.connect(app_dsn(primary)) for _ in range(4)]
    try:
        await write(conns[0], [Write("CREATE TABLE w (id int PRIMARY KEY, v bigint)")])
        await write(conns[0], [Write("CREATE TABLE s (k int, total bigint)")])
        await bootstrap(primary, follower)
        a = applier_mod.Applier("f1", app_dsn(follower), app_dsn(primary))

        async def session(i: int) -> None:
            rnd = random.Random(seed + i)
            for n in range(25):
                key = i * 1000 + n
                writes = [Write("INSERT INTO w VALUES ($1, (SELECT count(*) FROM w))", (key,))]
                if rnd.random() < 0.5:
                    lo = rnd.randrange(4) * 1000
                    writes.append(
                        Write("UPDATE w SET v = v + 1 WHERE id BETWEEN $1 AND $2", (lo, lo + 500))
                    )
                if rnd.random() < 0.3:
                    writes.append(Write("INSERT INTO s SELECT $1, sum(v) FROM w", (key,)))
                tx = Transaction(conns[i])
                await tx.begin()
                for w in writes:
                    await tx.run(w)
                    await asyncio.sleep(rnd.random() * 0.002)
                if rnd.random() < 0.15:
                    await tx.rollback()
                else:
                    await tx.commit()

        async with running(a):
            await asyncio.gather(*(session(i) for i in range(4)))
            await caught_up(a, primary)
        await assert_identical(primary, follower)
    finally:
        for c in conns:
            await c.close()


async def test_bootstrap_from_a_snapshot_while_writes_go_on(
    servers: list[pgserver.PgServer],
) -> None:
    primary, follower, _ = servers
    await create_app_db(primary, schema=True)
    conn = await asyncpg.connect(app_dsn(primary))
    stop = asyncio.Event()
    written = 0

    async def writer() -> None:
        nonlocal written
        wconn = await asyncpg.connect(app_dsn(primary))
        try:
            while not stop.is_set():
                written += 1
                await write(
                    wconn,
                    [Write(
                        "INSERT INTO b VALUES ($1::int, md5($1::int::text), "
                        "(SELECT count(*) FROM b))",
                        (written,),
                    )],
                )  # fmt: skip
        finally:
            await wconn.close()

    try:
        await write(conn, [Write("CREATE TABLE b (id int PRIMARY KEY, h text, seen bigint)")])
        await write(conn, [Write("INSERT INTO b SELECT g, md5(g::text), 0 FROM "
                                 "generate_series(100000, 150000) g")])  # fmt: skip
        task = asyncio.ensure_future(writer())
        await asyncio.sleep(0.3)
        pos = await bootstrap(primary, follower)
        assert pos >= 2
        a = applier_mod.Applier("f1", app_dsn(follower), app_dsn(primary))
        async with running(a):
            await asyncio.sleep(0.5)
            stop.set()
            await task
            assert await position(primary) > pos, "no write landed after the snapshot"
            await caught_up(a, primary)
        await assert_identical(primary, follower)
        assert written > 0
    finally:
        stop.set()
        await conn.close()


@pytest.mark.parametrize("params", [False, True], ids=["simple", "parameters"])
async def test_an_entry_that_fails_stops_the_applier_and_is_never_skipped(
    servers: list[pgserver.PgServer],
    conn: asyncpg.Connection,
    params: bool,
) -> None:
    """The batch fails, is applied again entry by entry, and stops at the failing entry;
    with parameters the failed EXECUTE must not leave its prepared statement behind."""
    primary, follower, _ = servers

    def insert(n: int) -> Write:
        return (
            Write("INSERT INTO t VALUES ($1::int)", (n,))
            if params
            else Write(f"INSERT INTO t VALUES ({n})")
        )

    await write(conn, [Write("CREATE TABLE t (id int PRIMARY KEY)")])
    await bootstrap(primary, follower)
    # Someone changes the follower's table by hand (bypassing read-only).
    fconn = await asyncpg.connect(
        app_dsn(follower), server_settings={"default_transaction_read_only": "off"}
    )
    try:
        await fconn.execute("INSERT INTO t VALUES (7)")
    finally:
        await fconn.close()
    await write(conn, [insert(1)])
    bad = await write(conn, [insert(7)])
    await write(conn, [insert(8)])
    a = applier_mod.Applier("f1", app_dsn(follower), app_dsn(primary))
    async with running(a) as task:
        async with asyncio.timeout(30):
            await asyncio.shield(task)
    assert a.state is applier_mod.State.DIVERGED
    st = a.status()
    assert st["divergedAt"] == bad and "UniqueViolation" in st["error"]
    assert a.applied == bad - 1 == await position(follower)
    rows = await table_contents(app_dsn(follower), ["t"])
    assert rows["t"] == [(1,), (7,)]  # 8 was not applied past the failed entry


async def test_settings_reverted_by_rollback_to_savepoint_are_set_again(
    servers: list[pgserver.PgServer],
    conn: asyncpg.Connection,
) -> None:
    """ROLLBACK TO SAVEPOINT also undoes ``set_config(…, true)`` made after the savepoint:
    the applier must not think a setting is still pinned (the proxy logs SAVEPOINT and
    ROLLBACK TO as they ran)."""
    primary, follower, _ = servers
    await write(conn, [Write("CREATE TABLE t (id int PRIMARY KEY, shown text)")])
    await bootstrap(primary, follower)
    tokyo = {"TimeZone": "Asia/Tokyo"}
    shown = "'2024-01-01 12:00+00'::timestamptz::text"
    await write(
        conn,
        [
            Write("SAVEPOINT a"),
            Write(f"INSERT INTO t VALUES (1, {shown})", settings=tokyo),
            Write("ROLLBACK TO SAVEPOINT a"),
            Write(f"INSERT INTO t VALUES (2, {shown})", settings=tokyo),
        ],
    )
    a = applier_mod.Applier("f1", app_dsn(follower), app_dsn(primary))
    async with running(a):
        await caught_up(a, primary)
    await assert_identical(primary, follower)
    rows = await table_contents(app_dsn(follower), ["t"])
    assert rows["t"] == [(2, "2024-01-01 21:00:00+09")]


async def test_settings_of_one_entry_do_not_reach_the_next_in_the_same_batch(
    servers: list[pgserver.PgServer],
    conn: asyncpg.Connection,
) -> None:
    """The applier replays a batch of entries in one local transaction: a setting the
    first entry pinned must be back to the session's value for an entry that does not
    name it, as in the separate transactions the primary ran."""
    primary, follower, _ = servers
    await write(conn, [Write("CREATE TABLE t (id int PRIMARY KEY, shown text)")])
    await bootstrap(primary, follower)
    shown = "'2024-01-01 12:00+00'::timestamptz::text"
    await write(
        conn, [Write(f"INSERT INTO t VALUES (1, {shown})", settings={"TimeZone": "Asia/Tokyo"})]
    )
    await write(conn, [Write(f"INSERT INTO t VALUES (2, {shown})")])
    await write(conn, [Write(f"INSERT INTO t VALUES (3, {shown})", settings={"TimeZone": "UTC"})])
    a = applier_mod.Applier("f1", app_dsn(follower), app_dsn(primary))
    async with running(a):
        await caught_up(a, primary)
    await assert_identical(primary, follower)
    rows = await table_contents(app_dsn(follower), ["t"])
    assert rows["t"][0] == (1, "2024-01-01 21:00:00+09")
    assert "+09" not in rows["t"][1][1]


async def log_range(server: pgserver.PgServer) -> tuple[int, int]:
    """The oldest and newest ``seq`` in ``server``'s log."""
    c = await asyncpg.connect(app_dsn(server))
    try:
        row = await c.fetchrow(f"SELECT min(seq), max(seq) FROM {slog.TABLE}")
        return int(row[0]), int(row[1])
    finally:
        await c.close()


async def trimmed_to(server: pgserver.PgServer, oldest: int, timeout: float = 30) -> None:
    """Wait until ``server``'s applier trimmed its own log to start at ``oldest``."""
    async with asyncio.timeout(timeout):
        while (got := await log_range(server))[0] != oldest:
            assert got[0] < oldest, f"trimmed past {oldest}: {got}"
            await asyncio.sleep(0.1)


async def test_log_trimmed_once_applied_and_a_promoted_follower_serves_a_lagging_one(
    servers: list[pgserver.PgServer],
    conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The primary trims what every follower applied (a bookmark holds it for a copy
    not yet applying, a stopped applier for its follower), followers trim no further
    than their primary. Failover's log mechanics: f1 applied more than f2; f1 becomes
    the writer (continuing the sequence) and f2, repointed, pulls the rest from f1's
    own log. Then f2 leaves the shard: its bookmark stops counting, and its applier
    stops (diverged) rather than skip what was trimmed."""
    monkeypatch.setattr(logtrim, "PERIOD_SECONDS", 0.0)
    primary, f1, f2 = servers
    await write(conn, [Write("CREATE TABLE t (id int PRIMARY KEY, v int)")])
    pos = await bootstrap(primary, f1, "f1")
    await bootstrap(primary, f2, "f2")
    for i in range(5):
        await write(conn, [Write("INSERT INTO t VALUES ($1, 0)", (i,))])
    await logtrim.trim_primary(conn, "p", None)
    assert await log_range(primary) == (pos, pos + 5), "entries the copies need were trimmed"
    a1 = applier_mod.Applier("f1", app_dsn(f1), app_dsn(primary), address=address(f1))
    a2 = applier_mod.Applier("f2", app_dsn(f2), app_dsn(primary), address=address(f2))
    async with running(a1):
        async with running(a2):
            await caught_up(a1, primary)
            await caught_up(a2, primary)
            # A member without a bookmark holds everything (a follower that has not told
            # a just-promoted primary its position yet).
            before = await log_range(primary)
            members = {address(primary), address(f1), address(f2), "127.0.0.1:1"}
            assert await logtrim.trim_primary(conn, "p", members, address(primary)) == 0
            assert await log_range(primary) == before
            await logtrim.trim_primary(conn, "p", members - {"127.0.0.1:1"}, address(primary))
            last = (await log_range(primary))[1]
            assert await log_range(primary) == (last, last)  # only the position stays
            await trimmed_to(f1, last)
            await trimmed_to(f2, last)
        lagging = a2.applied  # f2's applier is stopped from here on: f2 is behind
        for i in range(5, 10):
            await write(conn, [Write("UPDATE t SET v = v + $1", (i,))])
        await caught_up(a1, primary)
        # f2 left, within grace
        await logtrim.trim_primary(conn, "p", {address(primary)}, address(primary))
        assert (await log_range(primary))[0] == lagging, "f2's entries were trimmed"
        await asyncio.sleep(1.5)  # f1 polls (and trims) at least once more
        assert (await log_range(f1))[0] == lagging
    for i in (200, 201):  # committed on the primary only: discarded with it below
        await write(conn, [Write("INSERT INTO t VALUES ($1, 0)", (i,))])
    primary.stop()
    # Promote f1: writable, the sequence continues after the last entry it applied.
    # (The reload reaches open sessions asynchronously: this one sets it itself.)
    c1 = await asyncpg.connect(app_dsn(f1), server_settings={
        "default_transaction_read_only": "off"})  # fmt: skip
    try:
        await c1.execute("ALTER SYSTEM RESET default_transaction_read_only")
        await c1.execute("SELECT pg_reload_conf()")
        await c1.execute(slog.CONTINUE_SQL)
        await c1.execute(slog.PROMOTED_SQL, await position(f1))
        seq = await write(c1, [Write("INSERT INTO t VALUES (100, 1)")])
        assert seq == 12  # after CREATE, 5 inserts, 5 updates
        # The old primary's two entries past f1's promotion point are what it discards.
        creds = Credentials("", "", "", "", "", DB, superuser=primary.user)
        up = Upstream(f1.host, f1.port)
        assert await statement_roles._discarded(BINS, primary.datadir, creds, up) == 2
        a2.repoint(app_dsn(f1))
        async with running(a2):
            await caught_up(a2, f1)
        await assert_identical(f1, f2)
        # f1's own bookmark (from the dump) never counts; f2 leaves the shard.
        for i in (101, 102):
            await write(c1, [Write("INSERT INTO t VALUES ($1, 1)", (i,))])
        await logtrim.trim_primary(c1, "f1", {address(f1)}, address(f1), grace=0)
        assert await log_range(f1) == (seq + 2, seq + 2)
        async with running(a2) as task:
            async with asyncio.timeout(30):
                await asyncio.shield(task)
        assert a2.state is applier_mod.State.DIVERGED
        assert a2.status()["divergedAt"] == seq + 1 and "trimmed" in a2.status()["error"]
    finally:
        await c1.close()


async def test_stopped_writes_stay_stopped_until_released(
    servers: list[pgserver.PgServer],
    conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``stop_writes`` (a switchover, a clean stop of a primary) holds the shard's write
    lock until its caller releases it, after the server stopped. It used to return with
    its session dropped: a writer waiting for the lock committed one more entry before
    the stop, acknowledged, that the promoted follower never had."""
    monkeypatch.setattr(statement_roles, "HANDOVER_SECONDS", 0.1)  # no follower here
    primary = servers[0]
    await write(conn, [Write("CREATE TABLE t (id int PRIMARY KEY)")])
    creds = Credentials("", "", "", "", "", DB, superuser=primary.user)
    held = await statement_roles.stop_writes(primary.host, primary.port, creds)
    assert held.position == await position(primary)
    other = await asyncpg.connect(app_dsn(primary))
    try:
        await other.execute("SET lock_timeout = '300ms'")
        with pytest.raises(asyncpg.LockNotAvailableError):
            await other.execute(slog.LOCK_SQL)  # what a writer takes before its first write
        held.release()
        async with asyncio.timeout(10):  # the released session's backend ends shortly
            while True:
                with contextlib.suppress(asyncpg.LockNotAvailableError):
                    await other.execute(slog.LOCK_SQL)
                    break
    finally:
        await other.close()


async def test_a_follower_left_ahead_of_the_promoted_one_stops_to_be_copied_again(
    servers: list[pgserver.PgServer], conn: asyncpg.Connection
) -> None:
    """The race a failover leaves: f2 applied entries f1 never did (f2's applier was
    still applying a batch from the dying primary when f1, then the furthest, was
    elected). f1 writes its own entries under the same numbers; f2, repointed, must not
    pull on past them as if nothing happened (its data would silently differ): its
    applier stops as diverged and asks for a new copy (AheadOfSource)."""
    primary, f1, f2 = servers
    await write(conn, [Write("CREATE TABLE t (id int PRIMARY KEY, v int)")])
    await bootstrap(primary, f1, "f1")
    await bootstrap(primary, f2, "f2")
    a1 = applier_mod.Applier("f1", app_dsn(f1), app_dsn(primary), address=address(f1))
    a2 = applier_mod.Applier("f2", app_dsn(f2), app_dsn(primary), address=address(f2))
    async with running(a1):
        await caught_up(a1, primary)
    async with running(a2):
        for i in range(3):  # applied by f2 only: f1's applier is stopped
            await write(conn, [Write("INSERT INTO t VALUES ($1, 0)", (i,))])
        await caught_up(a2, primary)
    primary.stop()
    c1 = await asyncpg.connect(app_dsn(f1), server_settings={
        "default_transaction_read_only": "off"})  # fmt: skip
    try:  # promoted as the other test does it
        await c1.execute("ALTER SYSTEM RESET default_transaction_read_only")
        await c1.execute("SELECT pg_reload_conf()")
        await c1.execute(slog.CONTINUE_SQL)
        await c1.execute(slog.PROMOTED_SQL, await position(f1))
        for i in (100, 101):  # f1's own entries, numbered as two of f2's
            await write(c1, [Write("INSERT INTO t VALUES ($1, 1)", (i,))])
    finally:
        await c1.close()
    assert await position(f1) < a2.applied  # f1's log ends below f2's position
    a2.repoint(app_dsn(f1))
    async with running(a2) as task:
        async with asyncio.timeout(15):  # without the check: applying on, forever
            await asyncio.shield(task)
    assert a2.state is applier_mod.State.DIVERGED and a2.divergence is not None
    assert a2.divergence.recopy and a2.status()["divergedAt"] == a2.applied
    assert "never had" in a2.status()["error"]
    c1 = await asyncpg.connect(app_dsn(f1), server_settings={
        "default_transaction_read_only": "off"})  # fmt: skip
    try:  # f1 writes on past f2's position: now f2's last entry is another one there
        for i in (102, 103):
            await write(c1, [Write("INSERT INTO t VALUES ($1, 1)", (i,))])
    finally:
        await c1.close()
    a3 = applier_mod.Applier("f2", app_dsn(f2), app_dsn(f1), address=address(f2))
    async with running(a3) as task:
        async with asyncio.timeout(30):
            await asyncio.shield(task)
    assert a3.divergence is not None and a3.divergence.recopy
    assert "another entry" in a3.status()["error"]
