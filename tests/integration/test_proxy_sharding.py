"""Sharding through the real proxy: PostgreSQL servers as shards (two, or three), real clients.

The proxy follows a 2-shard (and for the catalogue also a 3-shard) topology declaring
``orders`` and ``items`` distributed by ``customer_id``. DDL goes to every shard, rows
inserted through the proxy land where placement says (checked in SQL on each shard),
and the differential catalogue (``test_scatter_differential.CATALOGUE``) gives through
the proxy — asyncpg (binary results, prepared statements) and psycopg (text and binary
results) — the same answers as one PostgreSQL holding every row, or the documented
refusal. A transaction that would
write to two shards fails and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgshard_operator import placement_check
from pgshard_proxy.contract import topology
from tests.integration.test_scatter_differential import CATALOGUE, ORDERED, REFUSED, _norm
from tests.support import pgserver, shardsim
from tests.support import proxy as proxy_support

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""

DDL = [
    "CREATE TABLE orders (customer_id bigint NOT NULL, id int PRIMARY KEY, total numeric(10,2), "
    "qty int, note text, paid bool, day date)",
    "CREATE TABLE items (customer_id bigint NOT NULL, sku text, n int)",
    "CREATE TABLE countries (code text PRIMARY KEY)",
]


class Setup:
    def __init__(self, servers: list[pgserver.PgServer], proxy: proxy_support.ProxyProc):
        self.servers = servers
        self.proxy = proxy
        self.topo = topology.Topology(
            shards=tuple(
                topology.Shard(
                    index=i,
                    epoch=1,
                    primary=topology.Member(f"pg{i}", f"{s.host}:{s.port}", s.dsn),
                    hash_range=r,
                )
                for i, (s, r) in enumerate(
                    zip(servers, topology.hash_ranges(len(servers)), strict=True)
                )
            ),
            tables=tuple(topology.DistributedTable(n, k) for n, k in shardsim.TABLES),
        )


def _start(pg_tmp: Path, count: int) -> Iterator[Setup]:
    """``count`` PostgreSQL servers as shards behind one proxy."""
    servers = []
    try:
        servers = [pgserver.make_server(pg_tmp, f"pg{i}") for i in range(count)]
        setup = Setup(servers, None)  # type: ignore[arg-type]
        setup.proxy = proxy_support.start_proxy(pg_tmp, setup.topo)
        try:
            yield setup
        finally:
            setup.proxy.stop()
    finally:
        for s in servers:
            s.stop()


@pytest.fixture
def sharded(pg_tmp: Path) -> Iterator[Setup]:
    yield from _start(pg_tmp, 2)


@pytest.fixture(params=[2, 3], ids=lambda n: f"{n}shards")
def sharded_n(pg_tmp: Path, request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield from _start(pg_tmp, request.param)


async def _whole(server: pgserver.PgServer) -> asyncpg.Connection:
    admin = await asyncpg.connect(server.dsn)
    await admin.execute("CREATE DATABASE whole")
    await admin.close()
    conn = await asyncpg.connect(server.dsn.rsplit("/", 1)[0] + "/whole")
    for ddl in DDL:
        await conn.execute(ddl)
    return conn


async def test_sharded_cluster_through_the_proxy(sharded_n: Setup) -> None:
    sharded = sharded_n
    dsn = sharded.proxy.dsn
    whole = await _whole(sharded.servers[0])
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="must be NOT NULL"):
            await conn.execute("CREATE TABLE orders (customer_id bigint, id int)")
        for ddl in DDL:
            await conn.execute(ddl)
        for s in sharded.servers:  # DDL reached every shard
            direct = await asyncpg.connect(s.dsn)
            assert await direct.fetchval("SELECT count(*) FROM pg_tables WHERE tablename IN "
                                         "('orders', 'items', 'countries')") == 3  # fmt: skip
            await direct.close()

        orders, items = shardsim.make_rows(1)
        insert = "INSERT INTO orders (customer_id, id, total, qty, note, paid, day) VALUES " \
                 "($1, $2, $3, $4, $5, $6, $7)"  # fmt: skip
        for row in orders:
            await conn.execute(insert, *row)
        await whole.copy_records_to_table("orders", records=orders)
        with psycopg.connect(dsn, autocommit=True) as pc:
            for row in items:
                pc.execute("INSERT INTO items (customer_id, sku, n) VALUES (%s, %s, %s)", row)
        await whole.copy_records_to_table("items", records=items)
        await conn.execute("INSERT INTO countries VALUES ('de'), ('fr')")
        await whole.execute("INSERT INTO countries VALUES ('de'), ('fr')")

        found = await placement_check.check(sharded.topo)
        assert sum(t.misplaced for t in found) == 0
        per_shard = {(t.table, t.shard): t.rows for t in found}
        count = len(sharded.servers)
        placed = [per_shard[("orders", i)] for i in range(count)]
        assert sum(placed) == len(orders) and min(placed) > len(orders) // (count + 1)
        assert all(per_shard[("countries", i)] == 0 for i in range(1, count))

        failures = []
        for sql, args, how in CATALOGUE:
            expected = _norm([tuple(r) for r in await whole.fetch(sql, *args)])
            got = _norm([tuple(r) for r in await conn.fetch(sql, *args)])
            if how != ORDERED:
                expected, got = sorted(expected), sorted(got)
            if got != expected:
                failures.append(f"asyncpg: {sql}: {got[:3]} vs {expected[:3]}")
        with psycopg.connect(dsn, autocommit=True) as pc:
            for sql, args, how in CATALOGUE:
                psql = sql.replace("%", "%%")
                for i in range(len(args), 0, -1):
                    psql = psql.replace(f"${i}", "%s")
                expected = _norm([tuple(r) for r in await whole.fetch(sql, *args)])
                for binary in (False, True):  # psycopg's text and binary result formats
                    got = _norm(pc.execute(psql, args, binary=binary).fetchall())
                    e = expected
                    if how != ORDERED:
                        e, got = sorted(e), sorted(got)
                    if got != e:
                        fmt = "binary" if binary else "text"
                        failures.append(f"psycopg {fmt}: {sql}: {got[:3]} vs {e[:3]}")
        assert not failures, "\n".join(failures)

        for sql in REFUSED:
            with pytest.raises(asyncpg.FeatureNotSupportedError):
                await conn.fetch(sql)
        assert await conn.fetchval("SELECT 1") == 1  # the session is still usable
    finally:
        await conn.close()
        await whole.close()


async def test_a_transaction_stays_on_one_shard(sharded: Setup) -> None:
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        await conn.execute(DDL[0])
        a, b = _keys_on_both_shards(sharded.topo)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO orders (customer_id, id) VALUES ($1, 1)", a)
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="stays on one shard"):
            await conn.execute("INSERT INTO orders (customer_id, id) VALUES ($1, 2)", b)
        await tx.rollback()
        assert await conn.fetchval("SELECT count(*) FROM orders") == 0
        async with conn.transaction():  # one shard: fine
            await conn.execute("INSERT INTO orders (customer_id, id) VALUES ($1, 3)", a)
            await conn.execute("UPDATE orders SET qty = 1 WHERE customer_id = $1", a)
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE qty = 1") == 1
        await conn.execute("INSERT INTO orders (customer_id, id) VALUES ($1, 4)", b)
        # A row limit (asyncpg's fetchrow: Execute for 1 row) suspends the portal.
        first = await conn.fetchrow("SELECT id FROM orders ORDER BY id")
        assert first is not None and first["id"] == 3
    finally:
        await conn.close()
    found = await placement_check.check(sharded.topo)
    assert sum(t.misplaced for t in found) == 0


async def test_show_pgshard_shards(sharded: Setup) -> None:
    p = sharded.proxy
    out = await asyncio.to_thread(
        subprocess.run,
        ["psql", "-X", "-A", "-t", "-F", "|", "-h", p.host, "-p", str(p.port), "-U", p.user,
         "-d", "postgres", "-c", "SHOW pgshard.shards"],
        env=p.libpq_env(), capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    lines = out.stdout.strip().splitlines()
    assert [line.split("|")[0] for line in lines] == ["0", "1"]
    first = lines[0].split("|")
    assert first[1] == "[0, 2147483648)" and first[3] == "pg0"
    assert first[6] == "orders:customer_id, items:customer_id"
    conn = await asyncpg.connect(p.dsn)
    try:  # the extended protocol gets it as one text value
        text = await conn.fetchval("SHOW pgshard.shards")
        assert "shard 0 [0, 2147483648) epoch 1 primary pg0" in text and "shard 1" in text
        with pytest.raises(asyncpg.PostgresError, match="cannot be changed"):
            await conn.execute("SET pgshard.shards = 'x'")
    finally:
        await conn.close()


def _keys_on_both_shards(topo: topology.Topology) -> tuple[int, int]:
    first = shardsim.shard_of(1, topo.shards)
    other = next(k for k in range(2, 100) if shardsim.shard_of(k, topo.shards) != first)
    return 1, other


async def test_ddl_failing_on_one_shard_changes_no_shard(sharded: Setup) -> None:
    other = await asyncpg.connect(sharded.servers[1].dsn)
    await other.execute("CREATE TABLE clash (x int)")  # only on shard 1
    await other.close()
    conn = await asyncpg.connect(sharded.proxy.dsn)
    try:
        with pytest.raises(asyncpg.DuplicateTableError) as e:
            await conn.execute("CREATE TABLE clash (x int)")
        assert "shard 1" in str(e.value)
        assert "nothing was changed on any shard" in (e.value.hint or "")
        await conn.execute("CREATE TABLE fine (x int)")
    finally:
        await conn.close()
    for i, s in enumerate(sharded.servers):
        direct = await asyncpg.connect(s.dsn)
        try:
            clash = await direct.fetchval("SELECT to_regclass('clash') IS NOT NULL")
            assert clash is (i == 1), f"shard {i}"
            assert await direct.fetchval("SELECT to_regclass('fine') IS NOT NULL")
        finally:
            await direct.close()
