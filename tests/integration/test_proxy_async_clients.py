"""asyncpg and psycopg's async connection through the real proxy to a real server.

Kept apart from the synchronous client tests: pytest-asyncio can leave an event
loop behind when sync and async tests interleave in one module.
"""

from __future__ import annotations

import asyncpg
import psycopg
import pytest

from tests.support.proxy import ProxyProc


async def test_asyncpg_prepared_statements_and_cache(module_proxy: ProxyProc) -> None:
    conn = await asyncpg.connect(module_proxy.dsn)
    try:
        await conn.execute("create table kv(k int primary key, v text)")
        for i in range(20):
            await conn.execute("insert into kv values ($1, $2)", i, f"v{i}")
        stmt = await conn.prepare("select v from kv where k = $1")
        assert [await stmt.fetchval(i) for i in (3, 7)] == ["v3", "v7"]
        rows = await conn.fetch("select k, v from kv where k < $1 order by k", 5)
        assert [r["k"] for r in rows] == [0, 1, 2, 3, 4]
        async with conn.transaction():
            await conn.execute("update kv set v = 'x' where k = $1", 1)
            assert await conn.fetchval("select v from kv where k = $1", 1) == "x"
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("insert into kv values ($1, $2)", 1, "dup")
        assert await conn.fetchval("select count(*) from kv") == 20
    finally:
        await conn.close()


async def test_psycopg_async(module_proxy: ProxyProc) -> None:
    async with await psycopg.AsyncConnection.connect(module_proxy.dsn) as conn:
        async with conn.cursor() as cur:
            await cur.execute("select %s::text || 'b'", ("a",))
            assert await cur.fetchone() == ("ab",)
        await conn.rollback()


async def test_asyncpg_timeout_cancels_and_connection_stays_usable(module_proxy: ProxyProc) -> None:
    conn = await asyncpg.connect(module_proxy.dsn)
    try:
        with pytest.raises(TimeoutError):
            await conn.execute("select pg_sleep(60)", timeout=0.5)
        assert await conn.fetchval("select 42") == 42
    finally:
        await conn.close()


async def test_errors_keep_their_sqlstate(module_proxy: ProxyProc) -> None:
    conn = await asyncpg.connect(module_proxy.dsn)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await conn.fetch("select * from no_such_table")
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await conn.execute("selec 1")
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


async def test_wrong_password_is_28p01(module_proxy: ProxyProc) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError) as e:
        await asyncpg.connect(module_proxy.dsn.replace(module_proxy.password, "wrong"))
    assert e.value.sqlstate == "28P01"
