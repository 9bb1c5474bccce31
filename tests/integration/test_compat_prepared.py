"""Drivers' prepared-statement caches through the proxy, reads on a follower (issue 17).

psycopg prepares a statement after ``prepare_threshold`` executions (``_pg3_N``) and
evicts the least recently used beyond ``prepared_max`` with ``DEALLOCATE _pg3_N``
(a simple query; protocol Close with libpq >= 17); asyncpg's statement cache evicts
with protocol Close. The reads were prepared on the follower, the eviction is routed
like any statement: it must not fail (PostgreSQL deallocates what it prepared) and a
later execute must not meet ``26000 prepared statement "_pg3_0" does not exist``.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.support import replicated as replicated_setup

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""

Setup = replicated_setup.Setup


@pytest.fixture(scope="module")
def replicated() -> Iterator[Setup]:
    with replicated_setup.running() as setup:
        yield setup


def _evicting(dsn: str, pipeline: bool) -> list[object]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.prepare_threshold = 0
        c.prepared_max = 2
        out: list[object] = []
        for rnd in range(3):
            for i in range(6):
                if pipeline:
                    with c.pipeline():
                        cur = c.execute(f"select %s::int + {i}", (rnd,))
                    out.append(cur.fetchone())
                else:
                    out.append(c.execute(f"select %s::int + {i}", (rnd,)).fetchone())
        with c.transaction():  # a write: the primary, with the same cached statements
            out.append(c.execute("select %s::int + 0", (7,)).fetchone())
        return out


@pytest.mark.parametrize("pipeline", [False, True])
def test_psycopg_evictions_as_against_postgresql(replicated: Setup, pipeline: bool) -> None:
    p, primary, _ = replicated
    assert _evicting(p.dsn, pipeline) == _evicting(primary.dsn, pipeline)


def test_sql_deallocate_of_a_statement_prepared_on_a_follower(replicated: Setup) -> None:
    p, primary, _ = replicated
    with psycopg.connect(primary.dsn, autocommit=True) as c:
        c.execute("select %s::int", (1,), prepare=True)
        names = c.execute("select name from pg_prepared_statements").fetchall()
        assert names == [("_pg3_0",)]  # psycopg's first name
    for dsn in (primary.dsn, p.dsn):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("select %s::int", (1,), prepare=True)  # through the proxy: the follower
            c.execute("deallocate _pg3_0")
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                c.execute("deallocate _pg3_0")  # gone, as in PostgreSQL
            res = c.pgconn.exec_prepared(b"_pg3_0", [b"1"])  # a later execute: 26000 too
            assert res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"26000"


async def test_asyncpg_statement_cache_evictions(replicated: Setup) -> None:
    p, primary, _ = replicated
    results = []
    for dsn in (primary.dsn, p.dsn):
        conn = await asyncpg.connect(dsn, statement_cache_size=2)
        try:
            got = []
            for rnd in range(3):
                for i in range(6):
                    got.append(await conn.fetchval(f"select $1::int + {i}", rnd))
            async with conn.transaction():
                got.append(await conn.fetchval("select $1::int + 0", 7))
            results.append(got)
        finally:
            await conn.close()
    assert results[0] == results[1]
