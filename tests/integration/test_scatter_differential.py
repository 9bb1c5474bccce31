"""Shard plans and merges against real PostgreSQL: N shards vs one server, same rows.

One server holds a database per shard (2-shard and 3-shard layouts, rows placed by
``contract.placement``) and one database with every row. Each catalogue query is
planned by ``routing.shardplan``; the shards run what the plan says (the original
text on the key's shard, or ``shard_sql`` on every shard), ``routing.merge`` merges,
and the answer must equal the single server's — values compared by type and text
(numeric scale included) — or be a refusal listed as expected. A hypothesis test
generates queries from a small grammar: identical answer or refusal, never different.
This is the planner and merge half of the proxy's sharding, without the wire protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgshard_proxy.routing import merge, shardplan
from tests.support import pgserver, shardsim
from tests.support.shardsim import TABLES, Cluster, shard_of, shards

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(pg_module_server: pgserver.PgServer) -> AsyncIterator[Cluster]:
    async for c in shardsim.sharded_databases(pg_module_server):
        yield c


def _norm(rows: Sequence[Sequence[Any]]) -> list[tuple[str, ...]]:
    return [tuple(f"{type(v).__name__}:{v}" for v in r) for r in rows]


async def run_sharded(
    conns: list[asyncpg.Connection], sql: str, args: Sequence[Any] = ()
) -> list[tuple[Any, ...]] | shardplan.Plan:
    """What the proxy will do: the plan, the shards' answers, the merge."""
    p = shardplan.plan(sql, TABLES)
    layout = shards(len(conns))
    if p.kind is shardplan.PlanKind.REFUSE:
        return p
    if p.kind is shardplan.PlanKind.HOME:
        return [tuple(r) for r in await conns[0].fetch(sql, *args)]
    targets = list(range(len(conns)))
    if p.kind is shardplan.PlanKind.KEYED:
        values = [k.value if k.param is None else args[k.param - 1] for k in p.keys]
        targets = sorted({shard_of(v, layout) for v in values})
        if len(targets) == 1:
            return [tuple(r) for r in await conns[targets[0]].fetch(sql, *args)]
    assert p.scatter is not None
    answers = await asyncio.gather(*(conns[i].fetch(p.scatter.shard_sql, *args) for i in targets))
    if p.scatter.grouping is not None:
        g = merge.GroupMerge(p.scatter)
        for a in answers:
            g.feed([tuple(r) for r in a])
        return g.result()
    m = merge.RowMerge(p.scatter, len(targets))
    out: list[tuple[Any, ...]] = []
    # Feed in small batches, interleaved, as the network would.
    pending = [[tuple(r) for r in a] for a in answers]
    while any(pending):
        for i, rows in enumerate(pending):
            m.feed(i, rows[:7])
            pending[i] = rows[7:]
            if not pending[i]:
                m.finish(i)
        out.extend(m.ready())
    out.extend(m.ready())
    return out


ORDERED = "ordered"  # compare as lists; otherwise as multisets
CATALOGUE: list[tuple[str, tuple[Any, ...], str]] = [
    # single shard by key
    ("SELECT * FROM orders WHERE customer_id = 7 ORDER BY id", (), ORDERED),
    ("SELECT * FROM orders WHERE customer_id = $1 ORDER BY id", (12,), ORDERED),
    ("SELECT count(*), sum(total) FROM orders WHERE customer_id = 3", (), ""),
    ("SELECT * FROM orders WHERE customer_id IN (1, 2, 3, 4, 5) ORDER BY id", (), ORDERED),
    ("SELECT id FROM orders WHERE customer_id IN ($1, $2)", (8, 9), ""),
    ("SELECT count(*) FROM orders WHERE customer_id IN (1, 2, 3, 4, 5)", (), ""),
    (
        "SELECT o.id, i.sku FROM orders o JOIN items i ON o.customer_id = i.customer_id "
        "WHERE o.customer_id = 11",
        (),
        "",
    ),
    # plain scatter
    ("SELECT * FROM orders", (), ""),
    ("SELECT id, note FROM orders WHERE qty > 40", (), ""),
    ("SELECT * FROM orders ORDER BY id", (), ORDERED),
    ("SELECT * FROM orders ORDER BY id DESC LIMIT 10", (), ORDERED),
    ("SELECT id, total FROM orders ORDER BY total NULLS FIRST, id LIMIT 20 OFFSET 5", (), ORDERED),
    ("SELECT id, total FROM orders ORDER BY total DESC, id LIMIT 15", (), ORDERED),
    ("SELECT id, total FROM orders ORDER BY total DESC NULLS LAST, id", (), ORDERED),
    ("SELECT id, note FROM orders ORDER BY note, id DESC LIMIT 30", (), ORDERED),
    ("SELECT id AS k, day FROM orders ORDER BY day DESC, k LIMIT 40", (), ORDERED),
    ("SELECT id FROM orders ORDER BY 1 OFFSET 1190", (), ORDERED),
    ("SELECT id, qty * 2 AS q FROM orders ORDER BY q, id LIMIT 25", (), ORDERED),
    ("SELECT DISTINCT note FROM orders", (), ""),
    ("SELECT DISTINCT note, paid FROM orders ORDER BY note, paid", (), ORDERED),
    ("SELECT DISTINCT qty FROM orders ORDER BY qty DESC LIMIT 5", (), ORDERED),
    ("SELECT id FROM orders WHERE note = $1 ORDER BY id", ("b",), ORDERED),
    ("SELECT id FROM orders LIMIT 0", (), ORDERED),
    (
        "SELECT o.id, i.sku, i.n FROM orders o JOIN items i ON o.customer_id = i.customer_id "
        "WHERE o.qty < 0",
        (),
        "",
    ),
    (
        "SELECT o.id, i.n FROM orders o JOIN items i ON i.customer_id = o.customer_id "
        "ORDER BY o.id, i.n, i.sku LIMIT 50",
        (),
        ORDERED,
    ),
    # aggregates
    ("SELECT count(*) FROM orders", (), ""),
    ("SELECT count(*) FROM orders WHERE qty > 1000", (), ""),
    ("SELECT count(total), sum(total), min(total), max(total) FROM orders", (), ""),
    ("SELECT sum(qty), avg(qty), avg(total), avg(customer_id) FROM orders", (), ""),
    ("SELECT avg(qty) FROM orders WHERE qty > 1000", (), ""),
    ("SELECT min(note), max(note), min(day), max(day) FROM orders", (), ""),
    ("SELECT bool_and(paid), bool_or(paid), every(qty > -10) FROM orders", (), ""),
    ("SELECT sum(qty) AS s, count(*) FILTER (WHERE paid) FROM orders", (), ""),
    ("SELECT paid, count(*) FROM orders GROUP BY paid", (), ""),
    ("SELECT note, count(*), avg(qty) FROM orders GROUP BY note ORDER BY note", (), ORDERED),
    (
        "SELECT customer_id, sum(total) AS t FROM orders GROUP BY customer_id "
        "ORDER BY t DESC NULLS LAST, customer_id LIMIT 10",
        (),
        ORDERED,
    ),
    (
        "SELECT customer_id, count(*) FROM orders GROUP BY 1 HAVING count(*) > 10 "
        "ORDER BY 2 DESC, 1",
        (),
        ORDERED,
    ),
    (
        "SELECT note, paid, max(qty) FROM orders GROUP BY note, paid "
        "HAVING max(qty) >= 49 OR note IS NULL",
        (),
        "",
    ),
    ("SELECT qty, count(*) FROM orders GROUP BY qty HAVING avg(total) > 600", (), ""),
    ("SELECT DISTINCT count(*) FROM orders GROUP BY customer_id", (), ""),
    (
        "SELECT i.sku, sum(o.qty), count(*) FROM orders o JOIN items i "
        "ON o.customer_id = i.customer_id GROUP BY i.sku ORDER BY i.sku",
        (),
        ORDERED,
    ),
    ("SELECT day, count(*) FROM orders GROUP BY day ORDER BY day NULLS FIRST LIMIT 3", (), ORDERED),
    ("SELECT qty / 3 AS b, min(id) FROM orders GROUP BY qty / 3 ORDER BY b", (), ORDERED),
    # home tables
    ("SELECT * FROM countries ORDER BY code", (), ORDERED),
    # -- more of each kind (issue 10's catalogue toward 80)
    # single shard, or the shards of an IN list
    ("SELECT id, total FROM orders WHERE customer_id = 5 AND qty > 10 ORDER BY id", (), ORDERED),
    (
        "SELECT note, count(*) FROM orders WHERE customer_id = $1 GROUP BY note "
        "ORDER BY note NULLS FIRST",
        (12,),
        ORDERED,
    ),
    ("SELECT * FROM orders WHERE customer_id = 7 AND id > 100", (), ""),
    ("SELECT DISTINCT note FROM orders WHERE customer_id IN (1, 2, 3)", (), ""),
    (
        "SELECT customer_id, count(*) FROM orders WHERE customer_id IN ($1, $2, $3) "
        "GROUP BY customer_id",
        (1, 2, 3),
        "",
    ),
    ("SELECT id FROM orders WHERE customer_id IN (4, 5, 6) ORDER BY id LIMIT 5", (), ORDERED),
    ("SELECT max(total) FROM orders WHERE customer_id = 150", (), ""),
    # plain scatter
    ("SELECT id FROM orders WHERE paid AND qty BETWEEN 5 AND 10", (), ""),
    ("SELECT id FROM orders WHERE customer_id = 3 OR customer_id = 9", (), ""),
    ("SELECT id, note FROM orders WHERE note LIKE 'a%'", (), ""),
    ("SELECT id, coalesce(note, '-') AS n FROM orders ORDER BY n, id LIMIT 40", (), ORDERED),
    (
        "SELECT id, upper(note) FROM orders WHERE note IS NOT NULL ORDER BY id DESC LIMIT 7",
        (),
        ORDERED,
    ),
    ("SELECT id FROM orders ORDER BY id LIMIT 10 OFFSET 100", (), ORDERED),
    ("SELECT id, qty FROM orders ORDER BY qty NULLS FIRST, id DESC LIMIT 12", (), ORDERED),
    ("SELECT id, paid FROM orders ORDER BY paid DESC NULLS LAST, id LIMIT 30", (), ORDERED),
    ("SELECT id, day FROM orders WHERE day > '2026-01-20' ORDER BY day, id", (), ORDERED),
    ("SELECT id FROM orders WHERE total IS NULL", (), ""),
    ("SELECT DISTINCT paid FROM orders", (), ""),
    ("SELECT DISTINCT day FROM orders ORDER BY day NULLS FIRST", (), ORDERED),
    (
        "SELECT id, total * qty AS v FROM orders WHERE total * qty > 1000 "
        "ORDER BY v DESC, id LIMIT 10",
        (),
        ORDERED,
    ),
    ("SELECT i.sku, i.n FROM items i WHERE i.n > 5 ORDER BY i.n DESC, i.sku LIMIT 20", (), ORDERED),
    ("SELECT DISTINCT sku FROM items ORDER BY sku", (), ORDERED),
    # aggregates
    ("SELECT count(*), count(note), count(day) FROM orders", (), ""),
    ("SELECT min(id), max(id), sum(id) FROM orders WHERE paid", (), ""),
    (
        "SELECT avg(total) FILTER (WHERE paid), sum(qty) FILTER (WHERE note = 'a') FROM orders",
        (),
        "",
    ),
    (
        "SELECT paid, sum(total), avg(total) FROM orders GROUP BY paid ORDER BY paid NULLS FIRST",
        (),
        ORDERED,
    ),
    (
        "SELECT day, min(qty), max(qty) FROM orders GROUP BY day HAVING count(*) > 40 ORDER BY day",
        (),
        ORDERED,
    ),
    ("SELECT sku, count(*), sum(n), min(n), max(n) FROM items GROUP BY sku", (), ""),
    (
        "SELECT customer_id % 10 AS d, count(*) FROM orders GROUP BY customer_id % 10 ORDER BY d",
        (),
        ORDERED,
    ),
    ("SELECT bool_or(qty > 45), bool_and(total > 0) FROM orders WHERE customer_id > 100", (), ""),
    ("SELECT count(*) FROM items", (), ""),
    ("SELECT sum(n) FROM items WHERE sku = $1", ("x",), ""),
    ("SELECT max(qty) FROM orders WHERE note = $1", ("zz",), ""),
    ("SELECT count(*) FROM orders o JOIN items i ON o.customer_id = i.customer_id", (), ""),
    # home tables
    ("SELECT count(*) FROM countries", (), ""),
    ("SELECT code FROM countries WHERE code > 'c'", (), ""),
]

REFUSED = [
    "SELECT count(DISTINCT note) FROM orders",
    "SELECT id, row_number() OVER (ORDER BY id) FROM orders",
    "SELECT string_agg(note, ',') FROM orders",
    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY qty) FROM orders",
    "SELECT o.id FROM orders o JOIN countries c ON true",
    "SELECT * FROM orders o JOIN items i ON o.id = i.n",
    "SELECT * FROM orders WHERE id IN (SELECT n FROM items)",
    "SELECT array_agg(id) FROM orders",
    "SELECT json_agg(id) FROM orders",
    "SELECT stddev(qty) FROM orders",
    "SELECT DISTINCT ON (note) note, id FROM orders",
    "SELECT note, count(*) FROM orders GROUP BY ROLLUP (note)",
    "WITH x AS (SELECT * FROM orders) SELECT count(*) FROM x",
    "SELECT id FROM orders UNION SELECT n FROM items",
    "SELECT * FROM orders o LEFT JOIN items i ON o.customer_id = i.customer_id",
    "SELECT sum(qty) / count(*) FROM orders",
]


@pytest.mark.parametrize("count", [2, 3])
async def test_catalogue_equals_one_postgresql(cluster: Cluster, count: int) -> None:
    failures = []
    for sql, args, how in CATALOGUE:
        expected = [tuple(r) for r in await cluster.whole.fetch(sql, *args)]
        got = await run_sharded(cluster.layouts[count], sql, args)
        if isinstance(got, shardplan.Plan):
            failures.append(f"{sql}: refused: {got.refusal}")
            continue
        e, g = _norm(expected), _norm(got)
        if how != ORDERED:
            e, g = sorted(e), sorted(g)
        if e != g:
            failures.append(f"{sql}: {len(g)} rows differ, e.g. {g[:3]} vs {e[:3]}")
    assert not failures, "\n".join(failures)


async def test_refusals_are_refused(cluster: Cluster) -> None:
    for sql in REFUSED:
        got = await run_sharded(cluster.layouts[2], sql)
        assert isinstance(got, shardplan.Plan), sql
        assert got.refusal is not None and got.refusal.sqlstate == "0A000"


# -- generated queries -------------------------------------------------------------------

_COLS = ["id", "qty", "total", "note", "paid", "day", "customer_id"]
_AGGS = [
    "count(*)", "count({c})", "sum(qty)", "min({c})", "max({c})", "avg(qty)", "avg(total)",
    "bool_and(paid)", "bool_or(paid)", "count(DISTINCT {c})", "string_agg(note, '')",
    "count(*) FILTER (WHERE paid)", "avg(qty) FILTER (WHERE note > 'a')",
]  # fmt: skip
_WHERES = [
    "", "WHERE qty > 10", "WHERE note = 'a'", "WHERE customer_id = 5",
    "WHERE customer_id IN (3, 4, 99)", "WHERE paid", "WHERE total < 100 OR qty IS NULL",
]  # fmt: skip


@st.composite
def _query(draw: st.DrawFn) -> tuple[str, bool]:
    where = draw(st.sampled_from(_WHERES))
    if draw(st.booleans()):
        group = draw(st.lists(st.sampled_from(["note", "paid", "qty"]), max_size=2, unique=True))
        aggs = [
            draw(st.sampled_from(_AGGS)).format(c=draw(st.sampled_from(_COLS)))
            for _ in range(draw(st.integers(1, 3)))
        ]
        items = [*group, *aggs]
        sql = f"SELECT {', '.join(items)} FROM orders {where}"
        if group:
            sql += f" GROUP BY {', '.join(group)}"
            if draw(st.booleans()):
                sql += " HAVING count(*) > 3"
        positions = ", ".join(str(i + 1) for i in range(len(items)))
        ordered = draw(st.booleans())
        if ordered:
            sql += f" ORDER BY {positions}"
            if draw(st.booleans()):
                sql += f" LIMIT {draw(st.integers(0, 20))}"
        return sql, ordered
    cols = draw(st.lists(st.sampled_from(_COLS), min_size=1, max_size=3, unique=True))
    distinct = "DISTINCT " if draw(st.booleans()) else ""
    sql = f"SELECT {distinct}{', '.join(cols)} FROM orders {where}"
    ordered = draw(st.booleans())
    if ordered:
        # A total order (id is unique, or DISTINCT over all columns) so LIMIT is exact.
        keys = [
            f"{c} {draw(st.sampled_from(['ASC', 'DESC NULLS LAST', 'NULLS FIRST']))}" for c in cols
        ]
        if not distinct:
            keys.append("id")
        sql += f" ORDER BY {', '.join(keys)}"
        if draw(st.booleans()):
            sql += f" LIMIT {draw(st.integers(0, 30))} OFFSET {draw(st.integers(0, 10))}"
    return sql, ordered


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(q=_query(), count=st.sampled_from([2, 3]))
async def test_generated_queries_are_identical_or_refused(
    cluster: Cluster, q: tuple[str, bool], count: int
) -> None:
    sql, ordered = q
    try:
        expected = [tuple(r) for r in await cluster.whole.fetch(sql)]
    except asyncpg.PostgresError:
        return  # not valid SQL for PostgreSQL either
    got = await run_sharded(cluster.layouts[count], sql)
    if isinstance(got, shardplan.Plan):
        return
    e, g = _norm(expected), _norm(got)
    if not ordered:
        e, g = sorted(e), sorted(g)
    assert e == g, sql
