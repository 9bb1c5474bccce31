"""Generated queries through the real proxy: one PostgreSQL's answer, or a refusal.

The hypothesis grammar of ``test_scatter_differential`` (which checks the planner and
merge in-process) here goes through the proxy's wire protocol: three PostgreSQL
servers, a 2-shard proxy over the first two and a 3-shard proxy over all three (each
layout in a database of its own), the same rows copied in through each proxy, and a
database holding every row. Each generated query, sent with asyncpg (extended
protocol, binary results) to a proxy, must give the single database's answer or the
documented refusal (``0A000``), never a different answer.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgshard_proxy.contract import topology
from tests.integration.test_scatter_differential import _norm, _query
from tests.support import pgserver, shardsim
from tests.support import proxy as proxy_support

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Layouts:
    def __init__(self, whole: asyncpg.Connection, proxied: dict[int, asyncpg.Connection]):
        self.whole = whole
        self.proxied = proxied
        """Shard count -> a connection through that layout's proxy."""


def _dsn(dsn: str, database: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + database


def _topology(servers: list[pgserver.PgServer]) -> topology.Topology:
    ranges = topology.hash_ranges(len(servers))
    return topology.Topology(
        shards=tuple(
            topology.Shard(
                index=i,
                epoch=1,
                primary=topology.Member(f"pg{i}", f"{s.host}:{s.port}", s.dsn),
                hash_range=r,
            )
            for i, (s, r) in enumerate(zip(servers, ranges, strict=True))
        ),
        tables=tuple(topology.DistributedTable(n, k) for n, k in shardsim.TABLES),
    )


@pytest.fixture(scope="module")
def proxies() -> Iterator[tuple[list[pgserver.PgServer], dict[int, proxy_support.ProxyProc]]]:
    with tempfile.TemporaryDirectory(prefix="pgshard-test-") as d:
        base = Path(d)
        base.chmod(0o755)
        servers: list[pgserver.PgServer] = []
        started: dict[int, proxy_support.ProxyProc] = {}
        try:
            servers = [pgserver.make_server(base, f"pg{i}") for i in range(3)]
            for count in (2, 3):
                work = base / f"proxy{count}"
                work.mkdir()
                started[count] = proxy_support.start_proxy(work, _topology(servers[:count]))
            yield servers, started
        finally:
            for p in started.values():
                p.stop()
            for s in servers:
                s.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def layouts(
    proxies: tuple[list[pgserver.PgServer], dict[int, proxy_support.ProxyProc]],
) -> AsyncIterator[Layouts]:
    servers, started = proxies
    orders, items = shardsim.make_rows(1)
    conns: list[asyncpg.Connection] = []
    try:
        for i, s in enumerate(servers):  # each layout's database, on the servers it uses
            admin = await asyncpg.connect(s.dsn)
            try:
                for count in started:
                    if i < count:
                        await admin.execute(f"CREATE DATABASE l{count}")
            finally:
                await admin.close()
        admin = await asyncpg.connect(servers[0].dsn)
        await admin.execute("CREATE DATABASE whole")
        await admin.close()
        whole = await asyncpg.connect(_dsn(servers[0].dsn, "whole"))
        conns.append(whole)
        await whole.execute(shardsim.SCHEMA)
        proxied = {}
        for count, p in started.items():
            conn = await asyncpg.connect(_dsn(p.dsn, f"l{count}"))
            conns.append(conn)
            proxied[count] = conn
        for conn in (whole, *proxied.values()):
            if conn is not whole:
                for ddl in shardsim.SCHEMA.strip().split(";\n"):
                    if ddl.strip():
                        await conn.execute(ddl)  # DDL through the proxy: every shard
            await conn.copy_records_to_table("orders", records=orders)  # split by key
            await conn.copy_records_to_table("items", records=items)
            await conn.execute("INSERT INTO countries VALUES ('de'), ('fr')")
        yield Layouts(whole, proxied)
    finally:
        for c in conns:
            await c.close()


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(q=_query(), count=st.sampled_from([2, 3]))
async def test_generated_queries_through_the_proxy_are_identical_or_refused(
    layouts: Layouts, q: tuple[str, bool], count: int
) -> None:
    sql, ordered = q
    try:
        expected = [tuple(r) for r in await layouts.whole.fetch(sql)]
    except asyncpg.PostgresError:
        return  # not valid SQL for PostgreSQL either
    try:
        got = [tuple(r) for r in await layouts.proxied[count].fetch(sql)]
    except asyncpg.FeatureNotSupportedError as e:
        assert e.sqlstate == "0A000" and e.hint, f"{sql}: {e}"  # the documented refusal
        return
    e, g = _norm(expected), _norm(got)
    if not ordered:
        e, g = sorted(e), sorted(g)
    assert e == g, f"{count} shards: {sql}"
