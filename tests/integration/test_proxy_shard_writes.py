"""Writes whose rows fall on several shards, through the real proxy on two shards.

A multi-row INSERT is split by key: each shard gets its rows in its own
transaction, all committed only when every shard succeeded, so a failure on one
shard leaves no row anywhere; inside a client transaction the rows must all fall on
the transaction's shard. ``COPY … FROM STDIN`` (text and CSV) is split the same way.
Placement is checked with the SQL check on each shard. A transaction's BEGIN, held
back by the proxy, reaches the shard of its first one-shard statement intact (also
after asyncpg's prepare round trip, with an isolation level); reads before it choose
no shard.
"""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

from pgshard_operator import placement_check
from tests.integration.test_proxy_sharding import DDL, Setup, sharded  # noqa: F401
from tests.support import shardsim

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""


def _keys(setup: Setup, shard: int, n: int) -> list[int]:
    return [k for k in range(1, 1000) if shardsim.shard_of(k, setup.topo.shards) == shard][:n]


async def _placed(setup: Setup) -> dict[int, int]:
    found = await placement_check.check(setup.topo)
    assert sum(t.misplaced for t in found) == 0
    return {t.shard: t.rows for t in found if t.table == "orders"}


async def test_multi_row_insert_is_split_by_key(sharded: Setup) -> None:  # noqa: F811
    a, b = _keys(sharded, 0, 3), _keys(sharded, 1, 3)
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        await conn.execute(DDL[0])
        # Simple protocol, literals; rows of both shards interleaved.
        status = await conn.execute(
            "INSERT INTO orders (customer_id, id, note) VALUES "
            f"({a[0]}, 1, 'x, (y)'), ({b[0]}, 2, 'b'), ({a[1]}, 3, NULL)"
        )
        assert status == "INSERT 0 3"
        # Extended protocol: parameters renumbered per shard (binary values).
        status = await conn.execute(
            "INSERT INTO orders (customer_id, id, qty) VALUES ($1, 4, $2), ($3, 5, $2), "
            "($4, $5, 7)",
            b[1], 9, a[2], b[2], 6,
        )  # fmt: skip
        assert status == "INSERT 0 3"
        assert await _placed(sharded) == {0: 3, 1: 3}
        rows = await conn.fetch("SELECT id, qty, note FROM orders ORDER BY id")
        assert [tuple(r) for r in rows] == [
            (1, None, "x, (y)"), (2, None, "b"), (3, None, None),
            (4, 9, None), (5, 9, None), (6, 7, None),
        ]  # fmt: skip
        # psycopg: text parameters, extended protocol.
        with psycopg.connect(sharded.proxy.dsn, autocommit=True) as pc:
            cur = pc.execute(
                "INSERT INTO orders (customer_id, id) VALUES (%s, 7), (%s, 8)", (a[0], b[0])
            )
            assert cur.rowcount == 2
        assert await _placed(sharded) == {0: 4, 1: 4}
    finally:
        await conn.close()


async def test_a_split_insert_failing_on_one_shard_leaves_no_row(sharded: Setup) -> None:  # noqa: F811
    a, b = _keys(sharded, 0, 2), _keys(sharded, 1, 2)
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        await conn.execute(DDL[0])
        await conn.execute(f"INSERT INTO orders (customer_id, id) VALUES ({b[0]}, 10)")
        for sql in (  # the duplicate id 10 fails on shard 1 only
            f"INSERT INTO orders (customer_id, id) VALUES ({a[0]}, 1), ({b[1]}, 10)",
            f"INSERT INTO orders (customer_id, id) VALUES ({b[1]}, 10), ({a[0]}, 1)",
        ):
            with pytest.raises(asyncpg.UniqueViolationError) as e:
                await conn.execute(sql)
            assert "shard 1" in str(e.value)
            assert "nothing was changed on any shard" in (e.value.hint or "")
        assert await conn.fetchval("SELECT count(*) FROM orders") == 1
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="RETURNING"):
            await conn.fetch(
                "INSERT INTO orders (customer_id, id) VALUES ($1, 2), ($2, 3) RETURNING id",
                a[1], b[1],
            )  # fmt: skip
        assert await conn.fetchval("SELECT count(*) FROM orders") == 1
    finally:
        await conn.close()


async def test_a_split_insert_inside_a_transaction_stays_on_its_shard(sharded: Setup) -> None:  # noqa: F811
    a, b = _keys(sharded, 0, 2), _keys(sharded, 1, 2)
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        await conn.execute(DDL[0])
        for first in (  # the transaction's first statement, or after it is pinned
            [],
            [f"INSERT INTO orders (customer_id, id) VALUES ({b[0]}, 1)"],
        ):
            tx = conn.transaction()
            await tx.start()
            for sql in first:
                await conn.execute(sql)
            with pytest.raises(asyncpg.FeatureNotSupportedError, match="one shard"):
                await conn.execute(
                    f"INSERT INTO orders (customer_id, id) VALUES ({a[0]}, 2), ({b[1]}, 3)"
                )
            await tx.rollback()
            assert await conn.fetchval("SELECT count(*) FROM orders") == 0
        async with conn.transaction():  # all rows on one shard: one INSERT there
            await conn.execute(
                "INSERT INTO orders (customer_id, id) VALUES ($1, 4), ($2, 5)", b[0], b[1]
            )
        assert await _placed(sharded) == {0: 0, 1: 2}
    finally:
        await conn.close()


def _copy_rows(n: int) -> list[tuple[int, int, str | None]]:
    notes = ["plain", "tab\there", "line\nbreak", 'quote "q", comma', "back\\slash", None, ""]
    return [((i * 7919) % 100_003 + 1, i, notes[i % len(notes)]) for i in range(1, n + 1)]


async def test_copy_from_stdin_is_split_by_key(sharded: Setup) -> None:  # noqa: F811
    rows = _copy_rows(100_000)
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        await conn.execute(DDL[0])
        await conn.execute("CREATE TABLE countries (code text PRIMARY KEY)")  # a home table
    finally:
        await conn.close()
    with psycopg.connect(sharded.proxy.dsn, autocommit=True) as pc:
        cur = pc.cursor()
        # Text format, psycopg's rows (escapes for tab, newline, backslash), big chunks.
        with cur.copy("COPY orders (customer_id, id, note) FROM STDIN") as copy:
            for row in rows[:60_000]:
                copy.write_row(row)
        assert cur.rowcount == 60_000
        # CSV with a header, quoted newlines and quotes, written in small odd pieces.
        data = "note;id;customer_id\n" + "".join(
            ('' if n is None else '"' + n.replace('"', '""') + '"') + f";{i};{k}\n"
            for k, i, n in rows[60_000:]
        )  # fmt: skip
        sql = "COPY orders (note, id, customer_id) FROM STDIN (FORMAT csv, HEADER, DELIMITER ';')"
        with cur.copy(sql) as copy:
            for pos in range(0, len(data), 997):
                copy.write(data[pos : pos + 997])
        assert cur.rowcount == 40_000
        # A home table's COPY is not split.
        with cur.copy("COPY countries FROM STDIN") as copy:
            copy.write_row(("de",))
        # Rows whose key cannot be read fail the whole COPY: nothing is copied.
        with (
            pytest.raises(psycopg.errors.BadCopyFileFormat, match="row 2"),
            cur.copy("COPY orders (customer_id, id) FROM STDIN") as copy,
        ):
            copy.write("5\t200001\nnot-a-number\t200002\n")
        # A row refused by one shard (duplicate id) fails the COPY on every shard.
        with (
            pytest.raises(psycopg.errors.UniqueViolation, match="shard"),
            cur.copy("COPY orders (customer_id, id) FROM STDIN") as copy,
        ):
            copy.write("1\t300001\n2\t300002\n3\t300003\n4\t300004\n5\t1\n6\t2\n")
        assert pc.execute("SELECT count(*) FROM orders WHERE id > 100000").fetchone() == (0,)
    found = await placement_check.check(sharded.topo)
    assert sum(t.misplaced for t in found) == 0
    per_shard = {t.shard: t.rows for t in found if t.table == "orders"}
    assert sum(per_shard.values()) == 100_000 and min(per_shard.values()) > 40_000
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        got = {(r["customer_id"], r["id"], r["note"]) for r in await conn.fetch(
            "SELECT customer_id, id, note FROM orders")}  # fmt: skip
        assert got == set(rows)
        # asyncpg copies in the binary format.
        more = [(k, i + 100_000, None) for k, i, _ in rows[:1000]]
        status = await conn.copy_records_to_table(
            "orders", records=more, columns=["customer_id", "id", "note"]
        )
        assert status == "COPY 1000"
        assert await conn.fetchval("SELECT count(*) FROM orders") == 101_000
    finally:
        await conn.close()
    found = await placement_check.check(sharded.topo)
    assert sum(t.misplaced for t in found) == 0


async def test_copy_without_columns_finds_the_key_and_transactions_refuse(
    sharded: Setup,  # noqa: F811
) -> None:
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:  # the key is the third column COPY reads (a dropped and a generated one skipped)
        await conn.execute(
            "CREATE TABLE items (gone int, sku text, n int, twice int GENERATED ALWAYS AS "
            "(n * 2) STORED, customer_id bigint NOT NULL)"
        )
        await conn.execute("ALTER TABLE items DROP COLUMN gone")
    finally:
        await conn.close()
    with psycopg.connect(sharded.proxy.dsn, autocommit=True) as pc:
        cur = pc.cursor()
        with cur.copy("COPY items FROM STDIN (FORMAT csv)") as copy:
            copy.write("".join(f"x{k},{k},{k}\n" for k in range(1, 501)))
        assert cur.rowcount == 500
        refused = pytest.raises(psycopg.errors.FeatureNotSupported, match="one shard")
        with pc.transaction(), refused, cur.copy("COPY items FROM STDIN (FORMAT csv)") as copy:
            copy.write("y,1,1\n")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="simple query"):
            pc.execute("COPY items FROM STDIN WHERE n > %s", (1,))
        assert pc.execute("SELECT count(*), sum(n) FROM items").fetchone() == (500, 125250)
    found = await placement_check.check(sharded.topo)
    assert sum(t.misplaced for t in found) == 0
    assert min(t.rows for t in found if t.table == "items") > 150


async def test_an_extended_protocol_begin_waits_for_the_first_keyed_statement(
    sharded: Setup,  # noqa: F811
) -> None:
    """BEGIN/COMMIT/ROLLBACK prepared and executed in the extended protocol (asyncpg's
    fetch; JDBC and pgx send every statement so) do not pin shard 0."""
    b = _keys(sharded, 1, 3)
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        await conn.execute(DDL[0])
        for end in ("COMMIT", "ROLLBACK", "END"):
            await conn.fetch("BEGIN")
            await conn.fetch("INSERT INTO orders (customer_id, id) VALUES ($1, $2)", b[0], len(end))
            await conn.fetch("UPDATE orders SET qty = 5 WHERE customer_id = $1", b[0])
            await conn.fetch(end)
        await conn.fetch("START TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await conn.fetch("SELECT 1")  # constants only: no shard yet
        await conn.fetch("INSERT INTO orders (customer_id, id) VALUES ($1, 10)", b[1])
        isolation = "SELECT current_setting('transaction_isolation')"
        assert await conn.fetchval(isolation) == "repeatable read"  # a real transaction
        await conn.fetch("COMMIT")
        await conn.fetch("BEGIN")
        await conn.fetch("COMMIT")  # an empty transaction
        rows = await conn.fetch("SELECT id, qty FROM orders ORDER BY id")
        assert [tuple(r) for r in rows] == [(3, 5), (6, 5), (10, None)]
    finally:
        await conn.close()
    assert await _placed(sharded) == {0: 0, 1: 3}


async def test_a_held_back_begin_with_an_isolation_level_follows_a_prepare(
    sharded: Setup,  # noqa: F811
) -> None:
    """asyncpg prepares a statement (Parse/Describe/Flush) before it binds it, and the
    prepare runs on shard 0; the BEGIN the proxy held back goes to the Bind's shard. On
    shard 0 it must not land inside the prepare's implicit transaction, where PostgreSQL
    refuses ``ISOLATION LEVEL`` (the BEGIN was lost and the write committed alone)."""
    keys = [_keys(sharded, 0, 1)[0], _keys(sharded, 1, 1)[0]]
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        await conn.execute(DDL[0])
        for i, key in enumerate(keys):
            for isolation, shown in (("repeatable_read", "repeatable read"),
                                     ("serializable", "serializable")):  # fmt: skip
                tx = conn.transaction(isolation=isolation)
                await tx.start()
                await conn.fetch("INSERT INTO orders (customer_id, id) VALUES ($1, $2)", key, i)
                setting = "SELECT current_setting('transaction_isolation')"
                assert await conn.fetchval(setting) == shown, f"shard {i}"
                await tx.rollback()
                assert await conn.fetchval("SELECT count(*) FROM orders") == 0, f"shard {i}"
    finally:
        await conn.close()


async def test_reads_before_the_first_one_shard_statement_do_not_choose_its_shard(
    sharded: Setup,  # noqa: F811
) -> None:
    """A scatter read, or a SELECT of constants, before a transaction's first one-shard
    statement runs outside the transaction (the constants on shard 0) and leaves the
    client in it; an error there aborts the transaction, as in PostgreSQL. Any other
    table-less statement (``SELECT now()``) runs in the transaction, on shard 0."""
    b = _keys(sharded, 1, 2)
    insert = "INSERT INTO orders (customer_id, id) VALUES ($1, 2)"
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        await conn.execute(DDL[0])
        await conn.execute("INSERT INTO orders (customer_id, id, qty) VALUES ($1, 1, 0)", b[1])
        for read in ("SELECT count(*) FROM orders", "SELECT 1", "SELECT $1::int + 1"):
            args = (1,) if "$1" in read else ()
            tx = conn.transaction()
            await tx.start()
            assert await conn.fetchval(read, *args) in (1, 2)
            assert conn.is_in_transaction(), read
            await conn.execute(insert, b[0])  # shard 1
            await tx.rollback()
        async with conn.transaction():  # a statement around constants runs as sent
            assert (await conn.fetchval("EXPLAIN SELECT 1")).startswith("Result")
        await conn.execute("BEGIN")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.fetchval("SELECT 1 / 0")
        assert await conn.execute("COMMIT") == "ROLLBACK"  # PostgreSQL's answer
        await conn.execute("BEGIN")
        assert await conn.fetchval("SELECT now()") is not None  # runs on shard 0
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="runs on shard 0"):
            await conn.execute(insert, b[0])
        await conn.execute("ROLLBACK")
    finally:
        await conn.close()
    status = psycopg.pq.TransactionStatus
    with psycopg.connect(sharded.proxy.dsn) as pc:  # its BEGIN follows the reported status
        for read in ("SELECT count(*) FROM orders", "SELECT 1"):
            pc.execute(read)
            assert pc.info.transaction_status is status.INTRANS, read
            pc.execute(insert.replace("$1", "%s"), (b[0],))
            pc.rollback()
        for bad in ("SELECT 1 / 0", "SELECT 1 / qty FROM orders"):
            with pytest.raises(psycopg.errors.DivisionByZero):
                pc.execute(bad)
            assert pc.info.transaction_status is status.INERROR, bad
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                pc.execute(insert.replace("$1", "%s"), (b[0],))
            pc.rollback()
        assert pc.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    assert await _placed(sharded) == {0: 0, 1: 1}


async def test_a_prepare_on_shard_0_does_not_hold_locks_there(sharded: Setup) -> None:  # noqa: F811
    """asyncpg's Parse/Describe/Flush runs on shard 0 and the Bind on the key's shard:
    shard 0 must not keep the prepare's implicit transaction open, whose lock on the
    table blocked DDL (from any session) until this session next used shard 0."""
    b = _keys(sharded, 1, 1)[0]
    conn = await asyncpg.connect(sharded.proxy.dsn)
    direct = await asyncpg.connect(sharded.servers[0].dsn)
    try:
        await conn.execute(DDL[0])
        await conn.fetch("INSERT INTO orders (customer_id, id) VALUES ($1, 1)", b)
        held = (
            "SELECT count(*) FROM pg_locks WHERE relation = 'orders'::regclass "
            "AND pid <> pg_backend_pid()"
        )
        for _ in range(100):  # the hidden Sync's answer may still be on its way
            if await direct.fetchval(held) == 0:
                break
            await asyncio.sleep(0.1)
        assert await direct.fetchval(held) == 0
        await conn.execute("ALTER TABLE orders ADD COLUMN z int")  # every shard
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE customer_id = $1", b) == 1
    finally:
        await direct.close()
        await conn.close()


async def _copied(setup: Setup, rows: list[tuple[int, int, str | None]]) -> None:
    """``orders`` made and filled with ``rows`` through the proxy (COPY, psycopg)."""
    conn = await asyncpg.connect(setup.proxy.dsn)
    try:
        await conn.execute(DDL[0])
    finally:
        await conn.close()
    with (
        psycopg.connect(setup.proxy.dsn, autocommit=True) as pc,
        pc.cursor().copy("COPY orders (customer_id, id, note) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)


async def test_copy_to_stdout_gathers_every_shard(sharded: Setup) -> None:  # noqa: F811
    rows = _copy_rows(5000)
    await _copied(sharded, rows)
    with psycopg.connect(sharded.proxy.dsn, autocommit=True) as pc:
        cur = pc.cursor()
        with cur.copy("COPY orders (customer_id, id, note) TO STDOUT") as copy:
            copy.set_types(["int8", "int4", "text"])
            got = set(copy.rows())
        assert cur.rowcount == 5000 and got == set(rows)
        with cur.copy("COPY orders (id) TO STDOUT (FORMAT csv)") as copy:
            data = b"".join(bytes(b) for b in copy)
        assert sorted(int(x) for x in data.split()) == list(range(1, 5001))
        refused = pytest.raises(psycopg.errors.FeatureNotSupported, match="HEADER")
        with refused, cur.copy("COPY orders TO STDOUT (FORMAT csv, HEADER)") as copy:
            list(copy)
        assert pc.execute("SELECT count(*) FROM orders").fetchone() == (5000,)
    assert sum((await _placed(sharded)).values()) == 5000


async def test_copy_of_a_query_to_stdout(sharded: Setup) -> None:  # noqa: F811
    """``COPY (SELECT …) TO STDOUT``: a keyed query runs on its shard, an unmerged scatter
    is gathered from every shard, one that needs the proxy's merge is refused."""
    rows = _copy_rows(2000)
    key = _keys(sharded, 1, 1)[0]
    await _copied(sharded, rows)
    with psycopg.connect(sharded.proxy.dsn, autocommit=True) as pc:
        cur = pc.cursor()
        with cur.copy("COPY (SELECT id FROM orders WHERE note IS NOT NULL) TO STDOUT") as copy:
            data = b"".join(bytes(b) for b in copy)
        expected = sorted(r[1] for r in rows if r[2] is not None)
        assert sorted(int(x) for x in data.split()) == expected and cur.rowcount == len(expected)
        keyed = f"COPY (SELECT id FROM orders WHERE customer_id = {key}) TO STDOUT (FORMAT csv)"
        with cur.copy(keyed) as copy:
            data = b"".join(bytes(b) for b in copy)
        assert sorted(int(x) for x in data.split()) == sorted(r[1] for r in rows if r[0] == key)
        for sql, match in (
            ("COPY (SELECT id FROM orders ORDER BY id) TO STDOUT", "must merge"),
            ("COPY (SELECT count(*) FROM orders) TO STDOUT", "must merge"),
            ("COPY (SELECT id FROM orders) TO STDOUT (FORMAT binary)", "text or CSV"),
        ):
            refused = pytest.raises(psycopg.errors.FeatureNotSupported, match=match)
            with refused, cur.copy(sql) as copy:
                list(copy)
        assert pc.execute("SELECT count(*) FROM orders").fetchone() == (2000,)
