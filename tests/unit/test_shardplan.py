"""Shard plans from SQL text (pure): keys, scatter rewrites and merge specs, refusals."""

from __future__ import annotations

import pytest

from pgshard_proxy.routing import scatter, shardplan
from pgshard_proxy.routing.shardplan import KeyRef, PlanKind

TABLES = [("orders", "customer_id"), ("items", "customer_id"), ("shop.events", "id")]


def plan(sql: str) -> shardplan.Plan:
    return shardplan.plan(sql, TABLES)


@pytest.mark.parametrize(
    ("sql", "keys"),
    [
        ("SELECT * FROM orders WHERE customer_id = 5", (KeyRef(5),)),
        ("SELECT * FROM Orders o WHERE o.customer_id = -5 AND total > 1", (KeyRef(-5),)),
        ("SELECT * FROM orders WHERE 7 = customer_id", (KeyRef(7),)),
        ("SELECT * FROM orders WHERE customer_id = $2", (KeyRef(param=2),)),
        ("SELECT * FROM orders WHERE customer_id = '42'::bigint", (KeyRef("42"),)),
        ("SELECT * FROM orders WHERE customer_id IN (1, $1)", (KeyRef(1), KeyRef(param=1))),
        ("SELECT * FROM public.orders WHERE customer_id = 1", (KeyRef(1),)),
        ("SELECT * FROM shop.events WHERE id = 'a'", (KeyRef("a"),)),
        ("UPDATE orders SET total = 1 WHERE customer_id = 3", (KeyRef(3),)),
        ("DELETE FROM orders WHERE customer_id = $1", (KeyRef(param=1),)),
        (
            "INSERT INTO orders (total, customer_id) VALUES (1, 2), (3, $1) RETURNING *",
            (KeyRef(2), KeyRef(param=1)),
        ),
        (
            "SELECT * FROM orders o JOIN items i ON o.customer_id = i.customer_id "
            "WHERE o.customer_id = 9",
            (KeyRef(9),),
        ),
    ],
)
def test_key_values_are_found(sql: str, keys: tuple[KeyRef, ...]) -> None:
    p = plan(sql)
    assert p.kind is PlanKind.KEYED, p.refusal
    assert p.keys == keys


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "SELECT * FROM countries WHERE code = 'de'",
        "INSERT INTO countries VALUES ('x')",
        "SELECT * FROM events",  # only shop.events is distributed
        "BEGIN",
    ],
)
def test_statements_without_distributed_tables_stay_home(sql: str) -> None:
    assert plan(sql).kind is PlanKind.HOME


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE countries (code text)",
        "CREATE TABLE orders (customer_id bigint NOT NULL, total int)",
        "CREATE TABLE items (customer_id int, n int, PRIMARY KEY (customer_id, n))",
        "CREATE INDEX ON orders (total)",
        "ALTER TABLE orders ADD COLUMN note text",
        "DROP TABLE orders",
        "COMMENT ON TABLE orders IS 'x'",
        "CREATE SEQUENCE s",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    ],
)
def test_ddl_goes_to_every_shard(sql: str) -> None:
    assert plan(sql).kind is PlanKind.BROADCAST


@pytest.mark.parametrize(
    ("sql", "needle"),
    [
        ("CREATE TABLE orders (customer_id bigint, total int)", "must be NOT NULL"),
        ("CREATE TABLE orders (id bigint)", "needs its shard key column customer_id"),
        ("UPDATE orders SET customer_id = 2 WHERE customer_id = 1", "UPDATE of the shard key"),
        ("UPDATE orders SET total = 0", "without its shard key"),
        ("DELETE FROM orders WHERE total > 5 OR customer_id = 1", "without its shard key"),
        ("INSERT INTO orders VALUES (1, 2)", "must name its shard key column"),
        ("INSERT INTO orders (customer_id) VALUES (NULL)", "cannot be NULL"),
        ("INSERT INTO orders (customer_id) VALUES (1 + 1)", "constant or a parameter"),
        ("INSERT INTO orders (customer_id) SELECT 1", "from a query"),
        ("SELECT * FROM orders o JOIN countries c ON true", "home table"),
        ("SELECT * FROM orders o JOIN items i ON o.total = i.customer_id", "not on an equality"),
        (
            "SELECT * FROM orders o LEFT JOIN items i ON o.customer_id = i.customer_id",
            "LEFT JOIN",
        ),
        ("SELECT count(DISTINCT total) FROM orders", "count(DISTINCT"),
        ("SELECT row_number() OVER () FROM orders", "window functions"),
        ("SELECT string_agg(note, ',') FROM orders", "string_agg"),
        ("SELECT stddev(total) FROM orders", "stddev"),
        ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY total) FROM orders", "percentile"),
        ("SELECT DISTINCT ON (total) * FROM orders", "DISTINCT ON"),
        ("SELECT * FROM orders WHERE total IN (SELECT 1)", "subqueries"),
        ("SELECT * FROM orders LIMIT $1", "LIMIT/OFFSET $1"),
        ("SELECT total + count(*) FROM orders GROUP BY total", "total + COUNT(*)"),
        ("SELECT 1 FROM orders UNION SELECT 2", "UNION"),
        ("SELECT * FROM orders FOR UPDATE", "FOR UPDATE"),
        ("SELECT total FROM orders GROUP BY total HAVING max(note) ~ 'x'", "HAVING with"),
    ],
)
def test_refusals_name_the_construct(sql: str, needle: str) -> None:
    p = plan(sql)
    assert p.kind is PlanKind.REFUSE, p
    assert p.refusal is not None and p.refusal.sqlstate == "0A000"
    assert needle in p.refusal.message
    assert p.refusal.hint


def test_plain_scatter_pushes_limit_and_carries_sort_keys() -> None:
    p = plan("SELECT id, total AS t FROM orders ORDER BY t DESC, 1 LIMIT 10 OFFSET 5")
    assert p.kind is PlanKind.SCATTER and p.scatter is not None
    s = p.scatter
    assert s.shard_sql == (
        "SELECT id, total AS t, total AS pgshard_sort_0, id AS pgshard_sort_1 FROM orders "
        "ORDER BY t DESC, 1 LIMIT 15"
    )
    assert s.hidden == 2 and (s.limit, s.offset) == (10, 5)
    assert s.order_by == (scatter.SortKey(0, True, True), scatter.SortKey(1, False, False))


def test_grouped_scatter_splits_avg_and_moves_having_to_the_proxy() -> None:
    p = plan(
        "SELECT total, avg(x), count(*) AS n FROM orders GROUP BY 1 "
        "HAVING sum(x) > 2 ORDER BY n DESC LIMIT 3"
    )
    assert p.scatter is not None and p.scatter.grouping is not None
    s = p.scatter
    assert s.shard_sql == (
        "SELECT total, SUM(x), COUNT(x), COUNT(*), SUM(x) FROM orders GROUP BY total"
    )
    g = s.grouping
    assert [c.agg for c in g.columns] == [None, scatter.Agg.AVG, scatter.Agg.COUNT]
    assert [c.source for c in g.columns] == [0, 1, 3]
    assert g.having is not None and g.having.sql() == ":0 > 2"
    assert s.order_by == (scatter.SortKey(2, True, True),) and s.limit == 3


@pytest.mark.parametrize(
    ("sql", "constant"),
    [
        ("SELECT 1", True),
        ("select 1 AS x, 'a' || $1, 2.5::numeric / 3, NOT true OR NULL IS NULL", True),
        ("SELECT $1::int + 1", True),
        ("SELECT now()", False),  # the transaction's start
        ("SELECT 'now'::timestamptz", False),  # likewise, through a cast
        ("SELECT nextval('s')", False),
        ("SELECT 1 FOR UPDATE", False),
        ("SELECT 1 WHERE false", False),
        ("SELECT (SELECT 1)", False),
        ("SAVEPOINT a", False),
        ("SET x = 1", False),
    ],
)
def test_a_select_of_constants_need_not_choose_a_transactions_shard(
    sql: str, constant: bool
) -> None:
    p = plan(sql)
    assert p.kind is PlanKind.HOME and p.anywhere
    assert p.constant is constant
    assert (p.scatter == scatter.ScatterPlan(sql)) is constant
