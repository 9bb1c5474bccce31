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


@pytest.mark.parametrize(
    ("sql", "forgets"),
    [
        ("DISCARD ALL", True),
        ("discard all", True),
        ("DEALLOCATE ALL", True),
        ("DEALLOCATE PREPARE ALL", True),
        ("SET x.y = 1; DISCARD ALL", True),
        ("DISCARD PLANS", False),
        ("DEALLOCATE s1", False),
        ("SET search_path = discard_all", False),
        ("SET application_name = 'DISCARD ALL'", False),
    ],
)
def test_only_discard_all_and_deallocate_all_forget_prepared_statements(
    sql: str, forgets: bool
) -> None:
    assert c.classify(sql).forgets_statements is forgets


def test_statements_differing_only_in_constants_share_one_classification() -> None:
    a = c.classify_bytes(b"SELECT abalance FROM pgbench_accounts WHERE aid = 5150")
    b = c.classify_bytes(b"SELECT abalance FROM pgbench_accounts WHERE aid = 4711")
    assert a is b and a.kind is Kind.READ
    w = c.classify_bytes(b"UPDATE pgbench_accounts SET abalance = abalance + -17 WHERE aid = 3")
    assert w.kind is Kind.WRITE
    assert c.literal_shape(b"SELECT 'it''s', 1.5, t1.x2") == b"SELECT ?, ?, t1.x2"


@pytest.mark.parametrize(
    "sql",
    [
        b"SELECT $$x$$",  # dollar quotes
        b'SELECT "weird ""name"" 1"',  # quoted identifiers
        b"SELECT E'\\x41'",  # backslash escapes
        b"SELECT 1 -- comment with a ' quote",
        b"SELECT /* ' */ 1",
    ],
)
def test_texts_a_regular_expression_cannot_read_are_cached_by_exact_text_only(
    sql: bytes,
) -> None:
    assert c.literal_shape(sql) is None


def test_results_carrying_the_statements_text_are_never_shared_by_shape() -> None:
    a = c.classify_bytes(b"SET application_name = 'first'")
    b = c.classify_bytes(b"SET application_name = 'second'")
    assert (a.session_sql, b.session_sql) == (
        "SET application_name = 'first'",
        "SET application_name = 'second'",
    )
    strong = c.classify_bytes(b"SET pgshard.consistency = 'strong'")
    eventual = c.classify_bytes(b"SET pgshard.consistency = 'eventual'")
    assert strong.proxy_setting == ("consistency", "strong")
    assert eventual.proxy_setting == ("consistency", "eventual")


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("SET synchronous_commit = off", True),
        ("set synchronous_commit to 'local'", True),
        ("SET LOCAL synchronous_commit TO remote_write", True),
        ("select set_config('synchronous_commit', 'on', false)", True),  # computed: refused
        ("ALTER ROLE app SET synchronous_commit = off", True),
        ("begin; set local synchronous_commit = off; insert into t values (1); commit", True),
        ("SET SESSION synchronous_commit = on", False),
        ("SET synchronous_commit TO DEFAULT", False),
        ("SET synchronous_commit = remote_apply", False),
        ("RESET synchronous_commit", False),
        ("SHOW synchronous_commit", False),
        ("select current_setting('synchronous_commit')", False),
        ("ALTER DATABASE app SET synchronous_commit TO on", False),
    ],
)
def test_synchronous_commit_may_not_be_weakened(sql: str, refused: bool) -> None:
    got = c.classify_uncached(sql)
    assert (got.refusal is not None) is refused
    if refused:
        assert got.refusal is not None and got.refusal.sqlstate == "42501"


def test_show_pgshard_shards_is_a_view_that_cannot_be_set() -> None:
    from pgshard_proxy.routing import classify as cl

    shown = cl.classify("SHOW pgshard.shards")
    assert shown.kind is cl.Kind.PROXY_SHOW and shown.proxy_setting == ("shards", "")
    refused = cl.classify("SET pgshard.shards = 'x'")
    assert refused.refusal is not None and refused.refusal.sqlstate == "55P02"


@pytest.mark.parametrize(
    ("sql", "probe"),
    [
        ("SHOW transaction_read_only", True),
        ("show in_hot_standby", True),
        ("SELECT current_setting('transaction_read_only')", True),
        ("select pg_catalog.current_setting('transaction_read_only', true)", True),
        # the setting's name is a parameter (psycopg's own tests): it may be one of them
        ("select current_setting($1), current_setting($2)", True),
        ("select current_setting(lower('TRANSACTION_READ_ONLY'))", True),
        ("SELECT pg_is_in_recovery()", True),
        ("select pg_catalog.pg_is_in_recovery()", True),
        ("SELECT pg_backend_pid(), inet_server_addr(), inet_server_port()", True),
        ("SELECT count(*) FROM pg_stat_activity WHERE pid = pg_backend_pid()", False),
        ('SELECT * FROM "pg_locks"', False),
        ("SELECT v, pg_is_in_recovery() FROM kv WHERE k = $1", False),
        ("SET application_name = 'a'; SELECT pg_is_in_recovery()", True),
        ("SELECT 1; SELECT pg_backend_pid()", False),  # "SELECT 1" may read: capture
        ("SELECT * FROM t; SELECT pg_backend_pid()", False),
    ],
)
def test_server_local_reads(sql: str, probe: bool) -> None:
    """Issue 17: reads of the answering server's own state go to the session's primary."""
    got = c.classify_uncached(sql)
    assert (got.kind, got.server_local, got.probe) == (Kind.READ, True, probe)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT current_setting('application_name')",
        "SHOW search_path",
        "SELECT pg_last_wal_replay_lsn() IS NOT NULL",
        "SELECT v FROM kv",
    ],
)
def test_other_reads_are_not_server_local(sql: str) -> None:
    got = c.classify_uncached(sql)
    assert (got.kind, got.server_local) == (Kind.READ, False)


def test_a_literal_argument_that_decides_the_class_is_not_shared_by_shape() -> None:
    """``set_config('synchronous_commit', …)`` is refused and ``current_setting(
    'transaction_read_only')`` is server-local, even right after a call of the same
    shape with another setting name was cached."""
    other = c.classify_bytes(b"select set_config('application_name', 'x', false)")
    assert other.refusal is None
    refused = c.classify_bytes(b"select set_config('synchronous_commit', 'off', false)")
    assert refused.refusal is not None and refused.refusal.sqlstate == "42501"
    assert not c.classify_bytes(b"select current_setting('application_name')").server_local
    assert c.classify_bytes(b"select current_setting('transaction_read_only')").server_local


@pytest.mark.parametrize(
    ("sql", "name"),
    [
        ("DEALLOCATE _pg3_0", "_pg3_0"),
        ("deallocate prepare S1", "s1"),
        ('DEALLOCATE "Mixed"', "Mixed"),
        ("DEALLOCATE ALL", None),
        ("DEALLOCATE PREPARE ALL", None),
    ],
)
def test_deallocate_names_its_statement(sql: str, name: str | None) -> None:
    """Issue 17: the session may have prepared it on another server than the one running
    the DEALLOCATE (psycopg's cache eviction after reads on a follower)."""
    assert c.classify_uncached(sql).deallocates == name
    assert c.classify_bytes(sql.encode()).deallocates == name


def test_a_text_a_follower_refused_goes_to_the_primary_from_then_on() -> None:
    """Issue 17: reads of unlogged tables (the follower answers 0A000) are learned by text."""
    sql = "select sum(i) from learned_unlogged_probe"
    assert c.classify_bytes(sql.encode()).kind is Kind.READ  # cached, by text and shape
    try:
        c.learn_primary_only(sql)
        assert c.classify_bytes(sql.encode()).kind is Kind.WRITE
        assert c.classify(sql).kind is Kind.WRITE
    finally:
        c._learned.discard(sql)
        c._cached.cache_clear()
        c._cached_bytes.cache_clear()
        c._by_shape.clear()
