"""The test server fixture itself: a real PostgreSQL 15 that answers queries."""

import asyncpg

from tests.support.pgserver import PgServer


async def test_server_answers(pg_server: PgServer) -> None:
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        version = await conn.fetchval("SHOW server_version_num")
        assert int(version) // 10000 == 15
        assert await conn.fetchval("SELECT current_user") == "postgres"
    finally:
        await conn.close()
