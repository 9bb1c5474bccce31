"""The rewriter against its fixture files, plus the extended protocol, the cache,
the context and the ``pgshard rewrite`` command."""

from __future__ import annotations

import dataclasses
import datetime
import subprocess

import pytest

from pgshard_proxy.rewrite import (
    ColumnInfo,
    ContextError,
    NotDeterministic,
    Prepared,
    RewriteContext,
    Rewriter,
    Rewritten,
    StaticCatalog,
    TableInfo,
)
from tests.support import procs
from tests.support import rewrite_fixtures as fixtures

CASES = fixtures.all_cases()


def test_every_fixture_file_has_cases() -> None:
    files = {c.file for c in CASES}
    assert {"transaction_time", "once_values", "sequences", "defaults", "row_order"} <= files
    assert all(c.expected for c in CASES), "a case without an expectation"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fixture(case: fixtures.Case) -> None:
    result = Rewriter().rewrite(case.sql, fixtures.context(case.with_catalog))
    if case.expected.startswith("-- refused: "):
        assert isinstance(result, NotDeterministic), result
        assert case.expected.removeprefix("-- refused: ") in result.construct
        assert result.sqlstate == "0A000"
        assert result.hint
    elif case.expected.startswith("-- needs catalog: "):
        assert isinstance(result, Rewritten), result
        wanted = case.expected.removeprefix("-- needs catalog: ")
        assert any(wanted in n.construct for n in result.needs_catalog), result.needs_catalog
    else:
        assert isinstance(result, Rewritten), result
        assert not result.needs_catalog
        assert result.text(case.captured) == case.expected


def test_unchanged_text_is_the_same_object() -> None:
    sql = "UPDATE t SET x = 1 WHERE id = 2"
    result = Rewriter().rewrite(sql, fixtures.context(True))
    assert isinstance(result, Rewritten)
    assert not result.changed
    assert result.text() is sql


def test_capture_query_lists_captures_left_to_right() -> None:
    result = Rewriter().rewrite(
        "INSERT INTO t (id, x, a) VALUES (nextval('s'), pg_backend_pid(), current_user)",
        fixtures.context(True),
    )
    assert isinstance(result, Rewritten)
    assert result.capture_query == (
        "SELECT (nextval('s'))::text, (pg_backend_pid())::text, (current_user)::text"
    )
    with pytest.raises(ValueError, match="3 captured values needed"):
        result.text(["1"])


def test_extended_protocol_rewrites_once_into_extra_parameters() -> None:
    rewriter = Rewriter()
    ctx = fixtures.context(True)
    sql = "INSERT INTO t (id, ts, x, a) VALUES ($1, now(), random(), nextval('s'))"
    prepared = rewriter.prepare(sql, [20], ctx)
    assert isinstance(prepared, Prepared)
    assert prepared.text == (
        "INSERT INTO t (id, ts, x, a) VALUES ($1, $2::timestamptz, $3::float8, $4::bigint)"
    )
    assert (prepared.parameters, prepared.extra) == (1, 3)
    assert prepared.capture_query == "SELECT (nextval('s'))::text"
    first = prepared.bind_values(ctx, ["41"])
    later = RewriteContext(
        ctx.timestamp + datetime.timedelta(seconds=1), ctx.time_zone, seed=2, catalog=ctx.catalog
    )
    second = prepared.bind_values(later, ["42"])
    assert first[0] == "2026-11-30 00:30:00.123456+01:00" and first[2] == "41"
    assert second[0] == "2026-11-30 00:30:01.123456+01:00" and second[2] == "42"
    assert first[1] != second[1]  # a fresh random() per execution
    # The same Parse text for both executions: the statement cache stays valid.
    assert rewriter.prepare(sql, [20], later) == prepared


def test_extended_protocol_counts_parameters_in_the_text() -> None:
    prepared = Rewriter().prepare(
        "UPDATE t SET ts = CURRENT_DATE WHERE id = $2", [], fixtures.context(True)
    )
    assert isinstance(prepared, Prepared)
    assert prepared.text == "UPDATE t SET ts = $3::date WHERE id = $2"


def test_extended_protocol_typed_literal_keeps_its_type() -> None:
    prepared = Rewriter().prepare(
        "UPDATE t SET a = TIMESTAMP 'now', b = 'today'::date", [], fixtures.context(True)
    )
    assert isinstance(prepared, Prepared)
    assert prepared.text == "UPDATE t SET a = $1::TIMESTAMP, b = $2::date"


def test_refusal_is_cached_and_returned_not_raised() -> None:
    rewriter = Rewriter()
    first = rewriter.rewrite("UPDATE t SET x = random()", fixtures.context(True))
    second = rewriter.rewrite("UPDATE t SET x = random()", fixtures.context(True))
    assert isinstance(first, NotDeterministic)
    assert first is second
    assert first.position == len("UPDATE t SET x = ")


def test_cache_is_bounded() -> None:
    rewriter = Rewriter(cache_size=2)
    ctx = fixtures.context(True)
    for i in range(5):
        rewriter.rewrite(f"UPDATE t SET x = {i}", ctx)
    assert len(rewriter._cache) == 2


def test_context_refuses_naive_timestamp_and_unknown_zone() -> None:
    with pytest.raises(ContextError, match="no time zone"):
        RewriteContext(datetime.datetime(2026, 1, 1))
    with pytest.raises(ContextError, match="unknown time zone 'Mars/Olympus'"):
        RewriteContext(fixtures.TIMESTAMP, "Mars/Olympus")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        procs.pgshard_argv("rewrite", *args),
        env=procs.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_prints_the_deterministic_statement() -> None:
    out = _cli(
        "--timestamp", "2026-11-29T23:30:00+00:00", "--time-zone", "Europe/Paris",
        "SELECT CURRENT_DATE, nextval('s')",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "SELECT '2026-11-30'::date, :c1::bigint",
        "-- :c1 = nextval('s')  (captured on the primary, bigint)",
    ]


def test_cli_refusal_has_hint_and_status_1() -> None:
    out = _cli("UPDATE t SET x = random()")
    assert out.returncode == 1
    assert "refused (SQLSTATE 0A000, at character 18)" in out.stdout
    assert "random() evaluated once per row" in out.stdout
    assert out.stdout.splitlines()[1].startswith("hint: ")


def test_cli_reports_what_needs_the_catalog() -> None:
    out = _cli("INSERT INTO t (a) VALUES (1)")
    assert out.returncode == 3
    assert out.stdout.strip() == "INSERT INTO t (a) VALUES (1)"
    assert "needs the catalog: column defaults of t" in out.stderr
    assert "--catalog-dsn" in out.stderr


def test_cli_bad_timestamp_says_what_to_write() -> None:
    out = _cli("--timestamp", "yesterday-ish", "SELECT 1")
    assert out.returncode == 2
    assert "is not ISO 8601; write e.g. 2026-11-29T10:00:00+00:00" in out.stderr


def test_a_new_catalog_snapshot_is_not_served_stale_analyses() -> None:
    rewriter = Rewriter()
    sql = "INSERT INTO fresh (a) VALUES (1)"
    before = rewriter.rewrite(sql, fixtures.context(True))
    assert isinstance(before, Rewritten)
    assert [n.construct for n in before.needs_catalog] == [
        "triggers of fresh",
        "column defaults of fresh",
    ]
    tables = dict(fixtures.CATALOG.tables)
    tables["fresh"] = TableInfo((ColumnInfo("a"), ColumnInfo("at", "now()")))
    ctx = dataclasses.replace(fixtures.context(True), catalog=StaticCatalog(tables))
    after = rewriter.rewrite(sql, ctx)
    assert isinstance(after, Rewritten) and not after.needs_catalog
    assert after.text() == (
        "INSERT INTO fresh (a, at) VALUES (1, '2026-11-30 00:30:00.123456+01:00'::timestamptz)"
    )


def test_an_internal_failure_is_a_refusal_not_a_crash() -> None:
    class Broken:
        version = 0

        def table(self, name: str) -> None:
            raise KeyError(name)

        def function(self, name: str) -> None:
            return None

    ctx = dataclasses.replace(fixtures.context(True), catalog=Broken())
    result = Rewriter().rewrite("INSERT INTO t (id) VALUES (1)", ctx)
    assert isinstance(result, NotDeterministic)
    assert result.construct == "a statement the rewriter failed to analyse"
    assert result.hint.startswith("KeyError: 't'")
