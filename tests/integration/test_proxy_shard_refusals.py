"""What the proxy refuses on distributed tables, and a change of their list, through the
real proxy on two shards.

A NULL shard key (a literal, or a ``$1`` parameter) fails with a clear error and leaves
no row on any shard; an UPDATE of the key column is refused; inside a transaction
pinned to one shard, a read needing the other shard (by key, or scattered) is refused
and the transaction is aborted as PostgreSQL aborts it after an error. A table added to
the topology's distributed tables while the proxy runs is placed by key from then on,
without a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgshard_operator import placement_check
from pgshard_proxy.contract import topology
from tests.integration.test_proxy_sharding import DDL, Setup, sharded  # noqa: F401
from tests.support import pgserver, shardsim
from tests.support import proxy as proxy_support


def _keys(setup: Setup, shard: int, n: int) -> list[int]:
    return [k for k in range(1, 1000) if shardsim.shard_of(k, setup.topo.shards) == shard][:n]


async def _rows_on_each_shard(setup: Setup, table: str) -> list[int]:
    out = []
    for s in setup.servers:
        direct = await asyncpg.connect(s.dsn)
        try:
            out.append(await direct.fetchval(f"SELECT count(*) FROM {table}"))
        finally:
            await direct.close()
    return out


async def test_a_null_shard_key_is_refused_and_leaves_no_row(sharded: Setup) -> None:  # noqa: F811
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        await conn.execute(DDL[0])
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="cannot be NULL"):
            await conn.execute("INSERT INTO orders (customer_id, id) VALUES (NULL, 1)")
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="cannot be NULL"):
            await conn.execute("INSERT INTO orders (customer_id, id) VALUES (1, 2), (NULL, 3)")
        with pytest.raises(asyncpg.NotNullViolationError, match="customer_id"):
            await conn.execute("INSERT INTO orders (customer_id, id) VALUES ($1, 4)", None)
        assert await conn.fetchval("SELECT 1") == 1  # the session goes on
    finally:
        await conn.close()
    with (
        psycopg.connect(sharded.proxy.dsn, autocommit=True) as pc,
        pytest.raises(psycopg.errors.NotNullViolation, match="customer_id"),
    ):  # text parameters
        pc.execute("INSERT INTO orders (customer_id, id) VALUES (%s, 5)", (None,))
    assert await _rows_on_each_shard(sharded, "orders") == [0, 0]


async def test_an_update_of_the_shard_key_is_refused(sharded: Setup) -> None:  # noqa: F811
    a = _keys(sharded, 0, 1)[0]
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        await conn.execute(DDL[0])
        await conn.execute("INSERT INTO orders (customer_id, id) VALUES ($1, 1)", a)
        for sql, args in (
            (f"UPDATE orders SET customer_id = customer_id + 1 WHERE customer_id = {a}", ()),
            ("UPDATE orders SET qty = 1, customer_id = $1 WHERE customer_id = $2", (a + 1, a)),
        ):
            with pytest.raises(asyncpg.FeatureNotSupportedError) as e:
                await conn.execute(sql, *args)
            assert "UPDATE of the shard key customer_id of distributed table orders" in str(e.value)
            assert e.value.hint == "DELETE the row and INSERT it with the new key"
        rows = await conn.fetch("SELECT customer_id, qty FROM orders")
        assert [tuple(r) for r in rows] == [(a, None)]
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "read", ["SELECT id FROM orders WHERE customer_id = $1", "SELECT count(*) FROM orders"]
)
async def test_a_read_on_another_shard_aborts_a_pinned_transaction(
    sharded: Setup,  # noqa: F811
    read: str,
) -> None:
    a, b = _keys(sharded, 0, 1)[0], _keys(sharded, 1, 1)[0]
    args = (a,) if "$1" in read else ()
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        await conn.execute(DDL[0])
        await conn.execute("INSERT INTO orders (customer_id, id) VALUES ($1, 1)", a)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO orders (customer_id, id) VALUES ($1, 2)", b)  # shard 1
        with pytest.raises(asyncpg.FeatureNotSupportedError) as e:
            await conn.fetch(read, *args)
        assert "transaction runs on shard 1" in str(e.value)
        assert "a transaction stays on one shard" in str(e.value)
        with pytest.raises(asyncpg.InFailedSQLTransactionError):  # aborted, as PostgreSQL does
            await conn.fetchval("SELECT count(*) FROM orders WHERE customer_id = $1", b)
        await tx.rollback()
        # Nothing of the transaction committed; the session and both shards go on.
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE customer_id = $1", b) == 0
        assert await conn.fetchval(read, *args) == 1
    finally:
        await conn.close()
    assert await _rows_on_each_shard(sharded, "orders") == [1, 0]


async def test_the_proxy_follows_a_change_of_the_distributed_tables(pg_tmp: Path) -> None:
    """The proxy starts knowing only ``orders``; ``items`` is added to the topology file
    it follows, and its rows are placed by key from then on, with no restart."""
    servers = [pgserver.make_server(pg_tmp, f"pg{i}") for i in range(2)]
    try:
        setup = Setup(servers, None)  # type: ignore[arg-type]
        full = setup.topo
        only_orders = dataclasses.replace(full, tables=full.tables[:1])
        setup.proxy = proxy_support.start_proxy(pg_tmp, only_orders)
        try:
            await _added_while_running(setup, pg_tmp / "topology.json")
        finally:
            setup.proxy.stop()
    finally:
        for s in servers:
            s.stop()


async def _added_while_running(setup: Setup, path: Path) -> None:
    conn = await asyncpg.connect(setup.proxy.dsn)
    try:
        await _wait_for_tables(setup.proxy.dsn, "orders:customer_id")
        await conn.execute(DDL[1])  # items: a home table for now
        bumped = dataclasses.replace(setup.topo, version=setup.topo.version + 1)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(topology.to_json(bumped))
        tmp.replace(path)  # as the local cluster writes it
        await _wait_for_tables(setup.proxy.dsn, "orders:customer_id, items:customer_id")
        keys = _keys(setup, 0, 5) + _keys(setup, 1, 5)
        for k in keys:
            await conn.execute("INSERT INTO items (customer_id, sku, n) VALUES ($1, 'x', 1)", k)
        assert await conn.fetchval("SELECT count(*) FROM items") == len(keys)  # scattered
    finally:
        await conn.close()
    found = await placement_check.check(setup.topo)
    assert sum(t.misplaced for t in found) == 0
    assert {t.shard: t.rows for t in found if t.table == "items"} == {0: 5, 1: 5}


async def _wait_for_tables(dsn: str, expected: str) -> None:
    """Until ``SHOW pgshard.shards`` lists ``expected`` as the distributed tables (15 s)."""
    found = ""
    # psycopg's ClientCursor sends a simple Query: the answer has the view's columns.
    with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as pc:
        for _ in range(150):
            row = pc.execute("SHOW pgshard.shards").fetchone()
            found = row[6] if row is not None else ""
            if found == expected:
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the proxy did not take the new tables: {found!r}")
