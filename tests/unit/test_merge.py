"""The scatter merge (pure): streaming order, NULL placement, cuts, PostgreSQL's numeric division.

Equality with one PostgreSQL over real data: tests/integration/test_scatter_differential.py.
"""

from __future__ import annotations

import decimal

import pytest
import sqlglot

from pgshard_proxy.routing import merge, scatter

D = decimal.Decimal


def _plan(**kw: object) -> scatter.ScatterPlan:
    return scatter.ScatterPlan(shard_sql="", **kw)  # type: ignore[arg-type]


def test_rows_flow_once_every_open_shard_has_sent_and_memory_stays_bounded() -> None:
    m = merge.RowMerge(_plan(hidden=1, order_by=(scatter.SortKey(0),)), shards=2)
    m.feed(0, [("a", 1), ("c", 3)])
    assert m.ready() == []  # shard 1 may still send something smaller
    m.feed(1, [("b", 2)])
    assert m.ready() == [("a",), ("b",)]  # shard 1's buffer is empty again: wait
    assert sum(len(b) for b in m.buffers) == 1
    m.finish(1)
    assert m.ready() == [("c",)]
    m.feed(0, [("d", 4)])
    m.finish(0)
    assert m.ready() == [("d",)]


def test_nulls_sort_as_postgresql_does() -> None:
    rows = [(None, None), (1, 1), (2, 2)]  # the sort key travels as a hidden column
    for desc, nulls_first, expected in (
        (False, False, [1, 2, None]),
        (True, True, [None, 2, 1]),
        (False, True, [None, 1, 2]),
        (True, False, [2, 1, None]),
    ):
        keys = (scatter.SortKey(0, desc, nulls_first),)
        m = merge.RowMerge(_plan(hidden=1, order_by=keys), shards=3)
        for i, r in enumerate(sorted(rows, key=lambda r: (r[0] is None, r[0] or 0), reverse=desc)):
            m.feed(i, [r])
            m.finish(i)
        assert [r[0] for r in m.ready()] == expected


def test_limit_offset_and_distinct_cut_the_merged_stream() -> None:
    m = merge.RowMerge(_plan(limit=2, offset=1, distinct=True), shards=2)
    m.feed(0, [(1,), (1,), (2,)])
    m.feed(1, [(2,), (3,), (4,)])
    assert m.ready() == [(2,), (3,)]
    assert m.done


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (D(3), D(2), "1.5000000000000000"),
        (D(1), D(3), "0.33333333333333333333"),
        (D(20000), D(3), "6666.6666666666666667"),
        (D("10.50"), D(4), "2.6250000000000000"),
        (D(-7), D(2), "-3.5000000000000000"),
        (D(0), D(5), "0.00000000000000000000"),
        (D("123456789.123"), D(7), "17636684.160428571429"),
    ],
)
def test_numeric_division_keeps_postgresqls_scale(a: D, b: D, expected: str) -> None:
    assert format(merge.numeric_div(a, b), "f") == expected


def test_having_is_three_valued() -> None:
    def ev(sql: str, *args: object) -> object:
        tree = sqlglot.parse_one(f"SELECT 1 HAVING {sql}", dialect="postgres").args["having"]
        node = tree.this.transform(
            lambda n: (
                sqlglot.exp.Placeholder(this=str("ab".index(n.name)))
                if isinstance(n, sqlglot.exp.Column)
                else n
            )
        )
        return merge.evaluate(node, list(args))

    assert ev("a > 2", 3) is True
    assert ev("a > 2 AND b = 1", None, 1) is None
    assert ev("a > 2 OR b = 1", None, 1) is True
    assert ev("NOT a IS NULL", None) is False
    assert ev("a / 2 = -1", -3) is True  # integer division truncates toward zero
    assert ev("a * 1.5 >= 3", 2) is True


def test_what_a_merge_must_hold_is_bounded_with_a_clear_error() -> None:
    distinct = merge.RowMerge(_plan(distinct=True), shards=2, limit=3)
    distinct.feed(0, [(1,), (2,), (1,)])
    distinct.feed(1, [(2,), (3,)])
    assert distinct.ready() == [(1,), (2,), (3,)]  # repeated rows are not held twice
    distinct.feed(1, [(4,)])
    with pytest.raises(merge.TooLarge, match="more than 3 distinct rows"):
        distinct.ready()
    tree = sqlglot.parse_one("SELECT note, count(*) FROM t GROUP BY note", dialect="postgres")
    plan = scatter.plan_scatter(tree)
    assert isinstance(plan, scatter.ScatterPlan)
    groups = merge.GroupMerge(plan, limit=4)
    groups.feed([("a", 1), ("b", 1)])
    groups.feed([("a", 2), ("c", 1)])
    with pytest.raises(merge.TooLarge, match="partial aggregate rows"):
        groups.feed([("d", 1)])
