"""Unlogged tables read through the proxy while reads go to a follower (issue 17).

A follower cannot read an unlogged table (``0A000 cannot access temporary or
unlogged relations during recovery``); PostgreSQL itself answers such reads. The
proxy runs the read again on the primary when that error comes back before anything
of the answer was relayed, and sends that statement text to the primary from then on
(so a later pipeline, where part of an answer may already be relayed, does not fail).
Checked against PostgreSQL with psycopg (sync, pipeline) and asyncpg.
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
        with psycopg.connect(setup[1].dsn, autocommit=True) as c:
            c.execute("create unlogged table ul(i int)")
            c.execute("insert into ul select generate_series(1, 5)")
            c.execute("create table logged(i int)")
        replicated_setup.wait_for_follower_reads(setup[0])
        yield setup


def _reads(dsn: str, pipeline: bool) -> list[object]:
    with psycopg.connect(dsn, autocommit=True) as c:
        out: list[object] = []
        if pipeline:
            with c.pipeline():
                cursors = [
                    c.execute("select count(*) from logged"),
                    c.execute("select sum(i) from ul"),
                    c.execute("select count(*) from ul where i > %s", (2,)),
                ]
            out += [cur.fetchone() for cur in cursors]
        else:
            out.append(c.execute("select sum(i) from ul").fetchone())
            out.append(c.execute("select count(*) from ul where i > %s", (2,)).fetchone())
        return out


@pytest.mark.parametrize("pipeline", [False, True])
def test_psycopg_reads_an_unlogged_table(replicated: Setup, pipeline: bool) -> None:
    p, primary, _ = replicated
    assert _reads(p.dsn, pipeline) == _reads(primary.dsn, pipeline)


async def test_asyncpg_reads_an_unlogged_table(replicated: Setup) -> None:
    p, primary, _ = replicated
    results = []
    for dsn in (primary.dsn, p.dsn):
        conn = await asyncpg.connect(dsn)
        try:
            results.append(
                [await conn.fetchval("select max(i) from ul where i < $1", k) for k in (3, 9)]
            )
        finally:
            await conn.close()
    assert results[0] == results[1] == [2, 5]
