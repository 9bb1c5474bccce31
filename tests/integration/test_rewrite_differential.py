"""Differential test of the rewriter on real PostgreSQL (issue 6).

Two servers hold the same rows in a different physical order. A randomized
workload runs on the first ("primary") through the rewriter — capturing what
must be captured there — and what the statement log would hold is replayed on
the second ("follower"). One statement in three goes through the extended
protocol form (text with extra ``$n`` parameters, values bound per execution),
the others through literals. Every table must then be identical (compared by
primary key and row hashes). The same stream replayed *without* rewriting must
make them differ, which proves the comparison can fail.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
from psycopg import pq

from pgshard_proxy.rewrite import (
    FunctionInfo,
    NotDeterministic,
    Prepared,
    RewriteContext,
    Rewriter,
    StaticCatalog,
    Volatility,
    catalog_pg,
)
from tests.support import pgserver
from tests.support import rewrite_workload as workload

TIME_ZONE = "America/New_York"
TRANSACTIONS = 150

# A logged statement: text, and text-format values of its parameters (extended protocol).
Entry = tuple[str, list[str | None] | None]


@dataclasses.dataclass
class Outcome:
    log: list[list[Entry]] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    extended: int = 0


def _db(dsn: str, database: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + database


def _prepare(dsn: str, database: str, reverse: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    with psycopg.connect(_db(dsn, database), autocommit=True) as conn:
        conn.execute(workload.SCHEMA)
        for sql in workload.initial_rows(reverse):
            conn.execute(sql)


async def _load_catalog(dsn: str) -> StaticCatalog:
    conn = await asyncpg.connect(dsn)
    try:
        return await catalog_pg.load(conn)
    finally:
        await conn.close()


def _execute(conn: psycopg.Connection[Any], entry: Entry) -> None:
    text, params = entry
    if params is None:
        conn.execute(text)
        return
    # The extended protocol with text-format parameters, as the proxy will send Bind.
    result = conn.pgconn.exec_params(
        text.encode(), [None if p is None else p.encode() for p in params]
    )
    if result.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
        raise psycopg.Error((result.error_message or b"").decode())


def _run_on_primary(dsn: str, stream: list[list[str]], catalog: StaticCatalog | None) -> Outcome:
    """Execute ``stream`` on the primary (through the rewriter when a catalog is given);
    return what the statement log would hold."""
    out = Outcome()
    rewrite = catalog is not None
    if catalog is not None:
        # catalog_pg reads the schema as the rewriter expects it.
        for table in workload.TABLES:
            assert catalog.table(table) == workload.CATALOG.table(table)
        assert catalog.function("gen_random_uuid") == FunctionInfo(Volatility.VOLATILE, True)
        assert catalog.function("md5") == FunctionInfo(Volatility.IMMUTABLE, True)
    rewriter = Rewriter()
    rng = random.Random(3)
    seq = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET TimeZone = '{TIME_ZONE}'")
        for statements in stream:
            now = datetime.datetime.now(datetime.UTC)
            logged: list[Entry] = []
            conn.execute("BEGIN")
            try:
                for sql in statements:
                    seq += 1
                    ctx = RewriteContext(now, TIME_ZONE, seed=seq, catalog=catalog)
                    entry = _rewrite(conn, rewriter, sql, ctx, rng, out) if rewrite else (sql, None)
                    if entry is None:
                        continue
                    _execute(conn, entry)
                    logged.append(entry)
            except psycopg.Error as e:
                conn.execute("ROLLBACK")
                out.failed.append((" ; ".join(statements), str(e)))
                continue
            conn.execute("COMMIT")
            out.log.append(logged)
    return out


def _rewrite(
    conn: psycopg.Connection[Any],
    rewriter: Rewriter,
    sql: str,
    ctx: RewriteContext,
    rng: random.Random,
    out: Outcome,
) -> Entry | None:
    extended = rng.random() < 1 / 3
    result = rewriter.prepare(sql, [], ctx) if extended else rewriter.rewrite(sql, ctx)
    if isinstance(result, NotDeterministic):
        out.refused.append((sql, result.construct))
        return None
    assert not result.needs_catalog, result.needs_catalog
    captured: list[str | None] = []
    if result.capture_query:
        row = conn.execute(result.capture_query).fetchone()
        assert row is not None
        captured = list(row)
    if isinstance(result, Prepared):
        out.extended += 1
        return (result.text, result.bind_values(ctx, captured))
    return (result.text(captured), None)


def _apply_on_follower(dsn: str, log: list[list[Entry]]) -> int:
    """Replay the log like the statement applier: one transaction per entry, the
    pinned TimeZone set locally. Returns how many entries failed."""
    failures = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statements in log:
            conn.execute("BEGIN")
            try:
                conn.execute(f"SET LOCAL TimeZone = '{TIME_ZONE}'")
                for entry in statements:
                    _execute(conn, entry)
            except psycopg.Error:
                conn.execute("ROLLBACK")
                failures += 1
                continue
            conn.execute("COMMIT")
    return failures


def _table_rows(conn: psycopg.Connection[Any], table: str, key: str) -> dict[Any, str]:
    conn.execute("SET TimeZone = 'UTC'")
    rows = conn.execute(f"SELECT {key}, md5(t::text) FROM {table} t ORDER BY {key}").fetchall()
    return {k: h for k, h in rows}


def _differences(primary: str, follower: str) -> dict[str, list[Any]]:
    """Per table, the keys whose rows differ (or exist on one side only)."""
    out: dict[str, list[Any]] = {}
    with psycopg.connect(primary) as a, psycopg.connect(follower) as b:
        for table, key in workload.TABLES.items():
            rows_a, rows_b = _table_rows(a, table, key), _table_rows(b, table, key)
            diff = sorted(
                k for k in rows_a.keys() | rows_b.keys() if rows_a.get(k) != rows_b.get(k)
            )
            if diff:
                out[table] = diff
    return out


async def _round(
    a: pgserver.PgServer, b: pgserver.PgServer, database: str, rewrite: bool
) -> tuple[Outcome, int, dict[str, list[Any]]]:
    # psycopg calls below are synchronous: nothing else runs on this test's loop.
    _prepare(a.dsn, database, reverse=False)
    _prepare(b.dsn, database, reverse=True)
    catalog = await _load_catalog(_db(a.dsn, database)) if rewrite else None
    stream = workload.transactions(seed=6, count=TRANSACTIONS)
    outcome = _run_on_primary(_db(a.dsn, database), stream, catalog)
    failures = _apply_on_follower(_db(b.dsn, database), outcome.log)
    return outcome, failures, _differences(_db(a.dsn, database), _db(b.dsn, database))


async def test_rewritten_stream_makes_identical_tables_and_raw_stream_does_not(
    pg_tmp: Path,
) -> None:
    a = pgserver.make_server(pg_tmp, name="primary")
    try:
        b = pgserver.make_server(pg_tmp, name="follower")
        try:
            rewritten, failures, diff = await _round(a, b, "rewritten", rewrite=True)
            _, raw_failures, raw_diff = await _round(a, b, "raw", rewrite=False)
        finally:
            b.stop()
    finally:
        a.stop()

    constructs = sorted({c for _, c in rewritten.refused})
    applied = sum(len(t) for t in rewritten.log)
    print(f"\napplied {applied} statements ({rewritten.extended} in the extended form); "
          f"refused {len(rewritten.refused)}:")  # fmt: skip
    for c in constructs:
        print(f"  {sum(1 for _, x in rewritten.refused if x == c):3d} x {c}")
    print(f"raw stream: {raw_failures} follower failures; differing rows: "
          + ", ".join(f"{t}={len(k)}" for t, k in raw_diff.items()))  # fmt: skip

    # The primary accepted every rewritten statement and the follower replayed them all.
    assert rewritten.failed == []
    assert failures == 0
    assert applied > 2 * TRANSACTIONS * 0.6, applied
    assert rewritten.extended > applied // 5, rewritten.extended
    assert diff == {}, f"tables differ after the rewritten stream: {diff}"
    # The catalogue's refusals were exercised, each with its own construct.
    assert len(constructs) >= 5, constructs
    # Without rewriting the same stream diverges on every table.
    assert set(raw_diff) == set(workload.TABLES), raw_diff
