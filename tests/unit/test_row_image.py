"""The row-image fallback's pure parts: which statements it takes, how it logs rows."""

from __future__ import annotations

import pytest

from pgshard_proxy.contract import statement_log as slog
from pgshard_proxy.execute import row_image


def test_target_reads_table_alias_and_set_list() -> None:
    t = row_image.target("UPDATE ONLY s.items AS i SET rnd = random() WHERE i.k < 3;")
    assert t is not None
    assert (t.op, t.table, t.ref) == ("UPDATE", "s.items", "i")
    assert t.text == "UPDATE ONLY s.items AS i SET rnd = random() WHERE i.k < 3"
    assert "rnd" in t.set_words and "k" not in t.set_words
    d = row_image.target("DELETE FROM items WHERE random() < 0.5")
    assert d is not None and (d.op, d.table, d.ref) == ("DELETE", "items", "items")


def test_target_reads_an_insert_its_alias_and_its_conflict_update_list() -> None:
    i = row_image.target("INSERT INTO s.items (k, r) SELECT g, random() FROM generate_series(1, 3)")
    assert i is not None and (i.op, i.table, i.ref) == ("INSERT", "s.items", "s.items")
    assert i.set_words == frozenset()
    up = row_image.target(
        "INSERT INTO items AS it VALUES (1, random()) ON CONFLICT (k) DO UPDATE "
        "SET r = excluded.r + it.r WHERE it.k > 0"
    )
    assert up is not None and up.ref == "it"
    assert "r" in up.set_words and "k" not in up.set_words
    cols = [row_image.Column("k", "integer", True), row_image.Column("r", "real", False)]
    assert row_image.capture_sql(up, cols).endswith(" RETURNING it.k, it.r")
    image = row_image.image_statement("INSERT", "public.items", cols, [["1", "0.5"]], {})
    assert image.sql.startswith("INSERT INTO public.items (k, r) OVERRIDING SYSTEM VALUE")
    assert image.sql.endswith("ON CONFLICT (k) DO UPDATE SET r = excluded.r")


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE t SET r = random() RETURNING r",
        "UPDATE t SET r = random(); UPDATE t SET r = 1",
        "INSERT INTO t VALUES (random()) RETURNING id",
        "INSERT t VALUES (1)",
        "WITH x AS (SELECT 1) UPDATE t SET r = random()",
    ],
)
def test_target_declines(sql: str) -> None:
    assert row_image.target(sql) is None


def test_images_are_one_keyed_statement_with_text_arrays() -> None:
    cols = [
        row_image.Column("id", "integer", True),
        row_image.Column('"R"', "double precision", False),
    ]
    up = row_image.image_statement("UPDATE", "public.t", cols, [["1", 'a"\\b'], ["2", None]], {})
    assert up.sql == (
        'INSERT INTO public.t (id, "R") OVERRIDING SYSTEM VALUE SELECT u.id::integer, '
        'u."R"::double precision FROM unnest($1::text[], $2::text[]) AS u(id, "R") '
        'ON CONFLICT (id) DO UPDATE SET "R" = excluded."R"'
    )
    assert up.params == ('{"1","2"}', '{"a\\"\\\\b",NULL}')
    assert up.kind == "rows" and slog.Statement.from_dict(up.to_dict()) == up
    down = row_image.image_statement("DELETE", "public.t", cols, [["1"]], {})
    assert down.sql.startswith("DELETE FROM public.t AS d USING unnest($1::text[]) AS u(id)")


def test_an_unknown_statement_kind_is_refused_not_guessed() -> None:
    with pytest.raises(slog.BadEntry, match="kind"):
        slog.Statement.from_dict({"sql": "SELECT 1", "kind": "rows-v9"})
