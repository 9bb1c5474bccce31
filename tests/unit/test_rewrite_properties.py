"""Property tests of the rewriter: expressions mixing the catalogue's functions.

For any generated statement the rewriter either refuses it or returns text that
(1) parses, (2) is the same when rewritten again with the same context, and
(3) calls nothing that is not immutable; statements made only of immutable parts
come back byte-identical; the extended-protocol form, bound, is the literal form.
"""

from __future__ import annotations

import re

import sqlglot
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import TokenType

from pgshard_proxy.rewrite import NotDeterministic, Prepared, Rewriter, Rewritten, volatility
from tests.support import rewrite_fixtures as fixtures

NON_IMMUTABLE_CALLS = [
    "now()",
    "CURRENT_TIMESTAMP",
    "CURRENT_TIMESTAMP(2)",
    "LOCALTIMESTAMP(0)",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "LOCALTIME",
    "transaction_timestamp()",
    "'now'::timestamptz",
    "CAST('today' AS date)",
    "TIMESTAMP 'tomorrow'",
    "random()",
    "gen_random_uuid()",
    "uuid_generate_v4()",
    "clock_timestamp()",
    "statement_timestamp()",
    "timeofday()",
    "nextval('s')",
    "currval('s')",
    "setval('s', 5)",
    "txid_current()",
    "pg_backend_pid()",
    "inet_client_addr()",
    "current_user",
    "session_user",
    "version()",
    "current_setting('TimeZone')",
    "my_volatile()",
    "my_stable(x)",
]
IMMUTABLE_LEAVES = ["x", "id", "1", "2.5", "'a'", "NULL", "my_pure(x)", "upper('b')", "$1"]

# Names that must not survive rewriting as calls (tokens outside string literals).
FORBIDDEN = (
    set(volatility.FUNCTIONS) | set(volatility.KEYWORDS) | {"my_volatile", "my_stable"}
) - {"current_schema"}

STATEMENTS = [
    "INSERT INTO t (id, a) VALUES (1, {e})",
    "INSERT INTO t (id, a) VALUES (1, {e}), (2, {e})",
    "UPDATE t SET a = {e} WHERE x > 1",
    "UPDATE t SET a = {e} WHERE id = 2",
    "DELETE FROM t WHERE a = {e}",
    "INSERT INTO t (id, a) SELECT k, {e} FROM u",
    "CREATE TABLE r AS SELECT {e}",
]


def _expressions(leaves: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.tuples(inner, inner).map(lambda p: f"({p[0]})::text || ({p[1]})::text"),
            st.tuples(inner, inner).map(lambda p: f"coalesce({p[0]}, {p[1]})"),
            inner.map(lambda e: f"md5(({e})::text)"),
            inner.map(lambda e: f"({e})"),
        ),
        max_leaves=5,
    )


MIXED = _expressions(st.sampled_from(IMMUTABLE_LEAVES + NON_IMMUTABLE_CALLS))
IMMUTABLE = _expressions(st.sampled_from(IMMUTABLE_LEAVES))


def _statement(template: str, expression: str) -> str:
    return template.replace("{e}", expression)


def _rewrite(sql: str) -> Rewritten | NotDeterministic:
    return Rewriter().rewrite(sql, fixtures.context(True))


def _text(result: Rewritten) -> str:
    return result.text(["7"] * len(result.captures))


def _remaining_calls(sql: str) -> list[str]:
    out = []
    for t in sqlglot.Dialect.get_or_raise("postgres").tokenize(sql):
        if t.token_type in (TokenType.STRING, TokenType.IDENTIFIER):
            continue
        if t.text.lower() in FORBIDDEN:
            out.append(t.text)
    return out


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(STATEMENTS), MIXED)
def test_refused_or_parses_deterministic_and_free_of_volatile_calls(
    template: str, expression: str
) -> None:
    sql = _statement(template, expression)
    first = _rewrite(sql)
    if isinstance(first, NotDeterministic):
        assert first.hint and first.construct
        return
    text = _text(first)
    sqlglot.parse(text, read="postgres")  # raises if the output does not parse
    second = _rewrite(sql)
    assert isinstance(second, Rewritten)
    assert _text(second) == text
    assert _remaining_calls(text) == [], text


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(STATEMENTS), IMMUTABLE)
def test_immutable_statements_come_back_byte_identical(template: str, expression: str) -> None:
    sql = _statement(template, expression)
    result = _rewrite(sql)
    assert isinstance(result, Rewritten), result
    assert result.text() == sql


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(STATEMENTS), MIXED)
def test_extended_form_binds_to_the_same_statement_as_the_literal_form(
    template: str, expression: str
) -> None:
    sql = _statement(template, expression)
    ctx = fixtures.context(True)
    literal = Rewriter().rewrite(sql, ctx)
    prepared = Rewriter().prepare(sql, [], ctx)
    if isinstance(literal, NotDeterministic):
        assert prepared == literal
        return
    assert isinstance(prepared, Prepared)
    captured = ["7"] * len(prepared.captures)
    values = prepared.bind_values(ctx, captured)
    assert len(values) == prepared.extra

    def bound(match: re.Match[str]) -> str:
        n = int(match.group(1))
        if n <= prepared.parameters:
            return match.group(0)
        value = values[n - prepared.parameters - 1]
        return "NULL" if value is None else "'" + value.replace("'", "''") + "'"

    assert re.sub(r"\$(\d+)", bound, prepared.text) == literal.text(captured)
