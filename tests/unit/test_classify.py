"""Statements -> kinds: the table the router relies on (routing/classify.py, lexer.py)."""

from __future__ import annotations

import pytest

from pgshard_proxy.routing import classify as c
from pgshard_proxy.routing import lexer
from pgshard_proxy.routing.classify import Kind

R, W, D = Kind.READ, Kind.WRITE, Kind.DDL

CASES: list[tuple[str, Kind]] = [
    # -- plain reads (cheap rule, no parse) and parsed reads
    ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", R),
    ("select * from t where a = 'FOR UPDATE'", R),
    ("SELECT 1", R),
    ("VALUES (1), (2)", R),
    ("TABLE t", R),
    ("(SELECT 1) UNION (SELECT 2)", R),
    ("SELECT count(*), lower(name), now(), coalesce(a, b), x::int FROM t", R),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE v > $1)", R),
    ("SELECT jsonb_build_object('a', 1), generate_series(1, 3), random()", R),
    ("SELECT * FROM t WHERE ts > now() - interval '1 day' ORDER BY 1 LIMIT 5", R),
    ("WITH a AS (SELECT 1 AS x) SELECT x FROM a", R),
    ("SELECT pg_catalog.format_type(t.typ, NULL), pg_catalog.lower(n) FROM t", R),
    ("SHOW search_path", R),
    ("SHOW ALL", R),
    ("COPY t TO STDOUT", R),
    ("COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)", R),
    ("EXPLAIN SELECT * FROM t", R),
    ("EXPLAIN INSERT INTO t VALUES (1)", R),  # not executed without ANALYZE
    ("EXPLAIN (FORMAT JSON) SELECT nextval('s')", R),
    ("", R),
    ("  -- only a comment\n", R),
    # -- writes
    ("INSERT INTO t VALUES (1)", W),
    ("update t set a = 1", W),
    ("DELETE FROM t", W),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", W),
    ("TRUNCATE t", W),
    ("SELECT * FROM t FOR UPDATE", W),
    ("SELECT * FROM t WHERE id = 1 FOR SHARE", W),
    ("SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", W),
    ("WITH n AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM n", W),
    ("WITH d AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM d", W),
    ("SELECT nextval('s')", W),
    ("SELECT setval('s', 10)", W),
    ("SELECT currval('s')", W),
    ("SELECT txid_current()", W),
    ("SELECT my_function(1)", W),
    ("SELECT public.lower('A')", W),  # schema-qualified: may be a user function
    ("SELECT pg_catalog.nextval('s')", W),
    ("SELECT a.b.f(1)", W),
    ("SELECT * FROM t WHERE f(x) > 0", W),
    ("SELECT pg_advisory_xact_lock(1)", W),
    ("SELECT pg_notify('c', 'x')", W),
    ("COPY t FROM STDIN", W),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", W),
    ("COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", W),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", W),
    ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", W),
    ("EXPLAIN (ANALYZE true) DELETE FROM t", W),
    ("EXPLAIN ANALYZE VERBOSE SELECT nextval('s')", W),
    ("VACUUM t", W),
    ("VACUUM (ANALYZE) t", W),
    ("ANALYZE t", W),
    ("NOTIFY chan, 'x'", W),
    ("CALL proc(1)", W),
    ("DO $$ BEGIN PERFORM 1; END $$", W),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", W),
    ("COMMIT PREPARED 'gid'", W),
    ("ROLLBACK PREPARED 'gid'", W),
    # -- ddl
    ("CREATE TABLE t (id int)", D),
    ("CREATE TABLE temp (id int)", D),  # a table *named* temp is not temporary
    ("ALTER TABLE t ADD COLUMN b int", D),
    ("DROP TABLE t", D),
    ("CREATE INDEX ON t (a)", D),
    ("GRANT SELECT ON t TO u", D),
    ("COMMENT ON TABLE t IS 'x'", D),
    ("SELECT * INTO u FROM t", D),
    ("REFRESH MATERIALIZED VIEW v", D),
    # -- transaction control
    ("BEGIN", Kind.BEGIN),
    ("begin work", Kind.BEGIN),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", Kind.BEGIN),
    ("COMMIT", Kind.COMMIT),
    ("END", Kind.COMMIT),
    ("COMMIT AND CHAIN", Kind.COMMIT),
    ("ROLLBACK", Kind.ROLLBACK),
    ("ABORT", Kind.ROLLBACK),
    ("SAVEPOINT a", Kind.SAVEPOINT),
    ("RELEASE SAVEPOINT a", Kind.SAVEPOINT),
    ("RELEASE a", Kind.SAVEPOINT),
    ("ROLLBACK TO SAVEPOINT a", Kind.SAVEPOINT),
    ("ROLLBACK WORK TO a", Kind.SAVEPOINT),
    # -- session state
    ("SET search_path TO app, public", Kind.SESSION_SET),
    ("SET SESSION statement_timeout = 1000", Kind.SESSION_SET),
    ("SET TIME ZONE 'UTC'", Kind.SESSION_SET),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", Kind.SESSION_SET),
    ("RESET ALL", Kind.SESSION_SET),
    ("RESET search_path", Kind.SESSION_SET),
    ("DISCARD ALL", Kind.SESSION_SET),
    ("CLOSE ALL", Kind.SESSION_SET),
    ("UNLISTEN *", Kind.SESSION_SET),
    ("SELECT pg_advisory_unlock_all()", Kind.SESSION_SET),
    ("SET LOCAL search_path TO a", Kind.TX_SET),
    ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", Kind.TX_SET),
    ("SET CONSTRAINTS ALL DEFERRED", Kind.TX_SET),
    # -- proxy settings
    ("SET pgshard.consistency = 'eventual'", Kind.PROXY_SET),
    ("SHOW pgshard.consistency", Kind.PROXY_SHOW),
    # -- pins and unknowns
    ("LISTEN chan", Kind.PIN),
    ("PREPARE q (int) AS SELECT $1", Kind.PIN),
    ("PREPARE TRANSACTION 'gid'", Kind.PIN),
    ("LOAD 'auto_explain'", Kind.PIN),
    ("EXECUTE q (1)", Kind.OTHER),
    ("DEALLOCATE q", Kind.OTHER),
    ("FETCH 10 FROM c", Kind.OTHER),
    ("CLOSE c", Kind.OTHER),
    ("SELEC 1", Kind.OTHER),
    ("SELECT 'unterminated", Kind.OTHER),
    ("SELECT (1", Kind.OTHER),
    ("/* unterminated comment", Kind.OTHER),
    ("COPY t TO '/tmp/file'", Kind.OTHER),
    ("START 1", Kind.OTHER),
    ("42", Kind.OTHER),
]


@pytest.mark.parametrize("sql,kind", CASES, ids=[s[:40] for s, _ in CASES])
def test_kind(sql: str, kind: Kind) -> None:
    assert c.classify_uncached(sql).kind is kind
    assert c.classify(sql).kind is kind  # the cached path agrees


PINS = [
    "CREATE TEMP TABLE x (a int)",
    "CREATE TEMPORARY TABLE x AS SELECT 1",
    "create local temporary table x (a int)",
    "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
    "CREATE TABLE pg_temp.x (a int)",
    "SELECT * INTO TEMP x FROM t",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_try_advisory_lock(1, 2)",
    "SELECT set_config('search_path', 'a', false)",
    "LISTEN chan",
    "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t",
    "PREPARE q AS SELECT 1",
    "PREPARE TRANSACTION 'gid'",
    "SELECT 1; LISTEN chan",
]


@pytest.mark.parametrize("sql", PINS)
def test_pins_session(sql: str) -> None:
    assert c.classify(sql).pins_session


@pytest.mark.parametrize(
    "sql",
    ["CREATE TABLE x (a int)", "SELECT pg_advisory_xact_lock(1)", "DECLARE c CURSOR FOR SELECT 1"],
)
def test_does_not_pin(sql: str) -> None:
    assert not c.classify(sql).pins_session


def test_declare_without_hold_is_its_query() -> None:
    assert c.classify("DECLARE c CURSOR FOR SELECT * FROM t").kind is R
    assert c.classify("DECLARE c NO SCROLL CURSOR FOR SELECT * FROM t FOR UPDATE").kind is W


@pytest.mark.parametrize(
    "sql,read_only",
    [
        ("BEGIN READ ONLY", True),
        ("BEGIN TRANSACTION ISOLATION LEVEL READ COMMITTED, READ ONLY", True),
        ("START TRANSACTION READ ONLY", True),
        ("BEGIN ISOLATION LEVEL READ COMMITTED", False),
        ("BEGIN READ ONLY, READ WRITE", False),
        ("BEGIN READ WRITE", False),
        ("SET TRANSACTION READ ONLY", True),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", True),
    ],
)
def test_read_only_transactions(sql: str, read_only: bool) -> None:
    assert c.classify(sql).read_only_tx is read_only


@pytest.mark.parametrize(
    "sql,setting",
    [
        ("SET pgshard.consistency = 'eventual'", ("consistency", "eventual")),
        ("set pgshard.consistency to strong", ("consistency", "strong")),
        ("SET SESSION pgshard.consistency TO 'SESSION'", ("consistency", "session")),
        ('SET "pgshard.consistency" = eventual', ("consistency", "eventual")),
        ("SET pgshard.consistency TO DEFAULT", ("consistency", "default")),
        ("RESET pgshard.consistency", ("consistency", "default")),
        ("SHOW pgshard.consistency", ("consistency", "")),
    ],
)
def test_proxy_settings(sql: str, setting: tuple[str, str]) -> None:
    got = c.classify(sql)
    assert got.proxy_setting == setting
    assert got.refusal is None


@pytest.mark.parametrize(
    "sql,sqlstate,needle",
    [
        ("SET pgshard.consistency = 'sometimes'", "22023", "Available values: session"),
        ("SET pgshard.consistency = a, b", "22023", "give one value"),
        ("SET pgshard.colour = 'red'", "42704", "pgshard.consistency"),
        ("SHOW pgshard.colour", "42704", "pgshard.consistency"),
        ("SET pgshard.consistency = 'eventual'; SELECT 1", "0A000", "of its own"),
    ],
)
def test_bad_proxy_settings_are_refused_clearly(sql: str, sqlstate: str, needle: str) -> None:
    got = c.classify(sql)
    assert got.refusal is not None
    assert got.refusal.sqlstate == sqlstate
    assert needle in got.refusal.message + " " + got.refusal.hint


@pytest.mark.parametrize(
    "sql,kind",
    [
        ("SELECT 1; SELECT 2", R),
        ("SELECT 1; INSERT INTO t VALUES (1)", W),
        ("BEGIN; INSERT INTO t VALUES (1); COMMIT;", W),
        ("BEGIN; SELECT 1", Kind.BEGIN),
        ("SELECT 1; CREATE TABLE x (a int); SELECT 2", D),
        ("SELECT ';'; SELECT $$;$$; -- ;\n SELECT 3", R),
        ("SELECT 1 /* ; */; SELECT E'\\';'", R),
        ("SET a.b = 1; RESET ALL", Kind.SESSION_SET),
        ("SELECT 1;;;", R),
    ],
)
def test_multi_statement_most_demanding_wins(sql: str, kind: Kind) -> None:
    assert c.classify(sql).kind is kind


def test_multi_statement_read_only_transaction() -> None:
    got = c.classify("BEGIN READ ONLY; SELECT 1")
    assert got.kind is Kind.BEGIN and got.read_only_tx


def test_session_sql_is_the_clients_text_of_the_session_statements() -> None:
    single = "SET search_path TO app"
    assert c.classify(single).session_sql == single
    # what asyncpg sends when a pooled connection is released
    reset = (
        "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\n"
        "DO $$ BEGIN PERFORM * FROM pg_listening_channels() LIMIT 1; "
        "IF FOUND THEN UNLISTEN *; END IF; END; $$;\nRESET ALL;"
    )
    got = c.classify(reset)
    assert got.kind is W and not got.pins_session
    assert got.session_sql == "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nRESET ALL"
    assert c.classify("SELECT 1").session_sql is None


def test_bytes_and_text_agree_and_are_cached() -> None:
    sql = "SELECT nextval('bytes_test')"
    assert c.classify_bytes(sql.encode()) == c.classify(sql)
    before = c._cached.cache_info().hits
    c.classify(sql)
    assert c._cached.cache_info().hits == before + 1
    assert c.classify_bytes(b"\xff\xfe garbage").kind is Kind.OTHER


def test_lexer_splits_outside_quotes_and_comments() -> None:
    parts = lexer.split("SELECT 'a;b', \"c;d\", $q$e;f$q$; /* x; */ INSERT INTO t VALUES ($1)")
    assert [p.text for p in parts] == [
        "SELECT 'a;b', \"c;d\", $q$e;f$q$",
        "INSERT INTO t VALUES ($1)",
    ]
    assert [t.kind for t in parts[1].tokens][-2:] == [lexer.Tok.PARAM, lexer.Tok.PUNCT]
    with pytest.raises(lexer.LexError, match="unterminated"):
        lexer.split("SELECT $a$ never closed")


@pytest.mark.parametrize(
    "sql,kind",
    [
        ("/* comment */ EXPLAIN ANALYZE SELECT nextval('s')", W),
        ("SELECT 1; EXPLAIN ANALYZE SELECT nextval('s')", W),
        ("SELECT 1; COPY (SELECT nextval('s')) TO STDOUT", W),
        ("  DECLARE c CURSOR FOR SELECT nextval('s')", W),
        ("-- x\nDECLARE c CURSOR FOR SELECT 1", R),
    ],
)
def test_inner_queries_after_comments_and_other_statements(sql: str, kind: Kind) -> None:
    assert c.classify_uncached(sql).kind is kind


def test_long_statements_are_classified_from_their_first_words_and_not_cached() -> None:
    rows = ",".join(f"({i}, 'v;{i}')" for i in range(3000))
    insert = f"INSERT INTO t (a, b) VALUES {rows}"
    assert len(insert) > c.LONG
    assert c.classify(insert).kind is W
    assert (
        c.classify(f"/* bulk */ INSERT INTO t VALUES (1), {rows[:0]}(2)" + " " * c.LONG).kind is W
    )
    temp = "CREATE TEMP TABLE x AS VALUES " + ",".join(f"({i})" for i in range(4000))
    assert c.classify(temp).pins_session
    # several statements, or queries, still get the full analysis
    assert c.classify(f"SET a.b = 1; {insert}").session_sql == "SET a.b = 1"
    select = "SELECT a FROM t WHERE a IN (" + ",".join(str(i) for i in range(4000)) + ")"
    assert c.classify(select).kind is R
    assert c.classify(select + " FOR UPDATE").kind is W
    size = c._cached.cache_info().currsize
    c.classify(insert)
    assert c._cached.cache_info().currsize == size
