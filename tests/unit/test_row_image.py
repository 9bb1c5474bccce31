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


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE t SET r = random() RETURNING r",
        "UPDATE t SET r = random(); UPDATE t SET r = 1",
        "INSERT INTO t VALUES (random())",
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
