"""asyncpg and psycopg's async connection through the real proxy to a real server.

Kept apart from the synchronous client tests: pytest-asyncio can leave an event
loop behind when sync and async tests interleave in one module.
"""

from __future__ import annotations

import asyncpg
import psycopg
import pytest

from tests.support.proxy import ProxyProc

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""


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


async def test_show_pgshard_in_the_extended_protocol_asyncpg(module_proxy: ProxyProc) -> None:
    """asyncpg prepares every statement (Parse/Describe/Flush, then Bind/Execute/Sync):
    the proxy answers SHOW pgshard.* itself, as it does in the simple protocol."""
    conn = await asyncpg.connect(module_proxy.dsn)
    try:
        assert await conn.fetchval("SHOW pgshard.consistency") == "session"
        await conn.execute("SET pgshard.consistency = 'strong'")  # simple protocol
        assert await conn.fetchval("SHOW pgshard.consistency") == "strong"  # cached: Bind only
        stmt = await conn.prepare("show pgshard.consistency")
        assert [a.name for a in stmt.get_attributes()] == ["pgshard.consistency"]
        assert await stmt.fetch() == [("strong",)]
        async with conn.transaction():
            await conn.execute("create temporary table t(i int)")
            assert await conn.fetchval("SHOW pgshard.consistency") == "strong"
            assert await conn.fetchval("select count(*) from t") == 0  # still the same server
        with pytest.raises(asyncpg.UndefinedObjectError, match=r"pgshard\.nope"):
            await conn.fetchval("SHOW pgshard.nope")
        await conn.execute("RESET pgshard.consistency")
        assert await stmt.fetchval() == "session"
        assert await conn.fetchval("select $1::int + 1", 1) == 2  # server statements still work
    finally:
        await conn.close()


async def test_show_pgshard_in_the_extended_protocol_psycopg(module_proxy: ProxyProc) -> None:
    async with await psycopg.AsyncConnection.connect(module_proxy.dsn, autocommit=True) as conn:
        simple = psycopg.AsyncClientCursor(conn)  # the simple protocol
        await simple.execute("SHOW pgshard.consistency")
        expected = await simple.fetchone()
        assert expected == ("session",)
        for prepare in (False, True, True):  # unnamed; prepared; then only Bind/Execute
            cur = await conn.execute("SHOW pgshard.consistency", prepare=prepare)
            assert await cur.fetchall() == [expected]
            assert cur.description is not None
            assert [d.name for d in cur.description] == ["pgshard.consistency"]
            assert cur.statusmessage == "SHOW"
        async with conn.cursor(binary=True) as cur:
            await cur.execute("SHOW pgshard.consistency")
            assert await cur.fetchone() == expected
        await conn.execute("SET pgshard.consistency = eventual")
        cur = await conn.execute("SHOW pgshard.consistency", prepare=True)
        assert await cur.fetchone() == ("eventual",)
        cur = await conn.execute("select %s::int * 2", (21,))
        assert await cur.fetchone() == (42,)
