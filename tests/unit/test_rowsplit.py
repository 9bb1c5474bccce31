"""Multi-row INSERTs cut into one INSERT per shard, the client's text kept."""

from __future__ import annotations

import pytest

from pgshard_proxy.routing import rowsplit


def test_rows_go_to_their_shards_with_the_text_as_written() -> None:
    sql = "INSERT INTO t (k, v) VALUES (1, 'a, (b)'), (2, f(3, 4)) ,(3,'x') ON CONFLICT DO NOTHING;"
    parts = rowsplit.split(sql, [1, 0, 1])
    assert [(p.shard, p.sql, p.rows) for p in parts] == [
        (0, "INSERT INTO t (k, v) VALUES (2, f(3, 4)) ON CONFLICT DO NOTHING", 1),
        (1, "INSERT INTO t (k, v) VALUES (1, 'a, (b)'), (3,'x') ON CONFLICT DO NOTHING", 2),
    ]


def test_parameters_are_renumbered_per_shard() -> None:
    sql = "INSERT INTO t (k, v) VALUES ($1, $2), ($3, $4::text), ($5, $2)"
    parts = rowsplit.split(sql, [0, 1, 1])
    assert parts[0].sql == "INSERT INTO t (k, v) VALUES ($1, $2)"
    assert parts[0].params == (0, 1)
    assert parts[1].sql == "INSERT INTO t (k, v) VALUES ($1, $2::text), ($3, $4)"
    assert parts[1].params == (2, 3, 4, 1)


@pytest.mark.parametrize(
    ("sql", "construct"),
    [
        ("INSERT INTO t (k) VALUES (1), (2) RETURNING k", "RETURNING"),
        ("INSERT INTO t (k) VALUES ($1), ($2) ON CONFLICT (k) DO UPDATE SET v = $3", "ON CONFLICT"),
        ("INSERT INTO t (k) VALUES (1); INSERT INTO t (k) VALUES (2)", "several statements"),
    ],
)
def test_what_cannot_be_split_is_named(sql: str, construct: str) -> None:
    with pytest.raises(rowsplit.CannotSplit, match=construct):
        rowsplit.split(sql, [0, 1])
