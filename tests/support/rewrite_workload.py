"""A randomized stream of write transactions covering the rewriter's catalogue.

Used by tests/integration/test_rewrite_differential.py (and bench/rewrite for its
corpus). Deterministic for a given seed. Some statements are meant to be refused
(per-row random(), LIMIT without a total order, ctid, INSERT … SELECT omitting a
serial column); the harness counts and lists them.
"""

from __future__ import annotations

import random

from pgshard_proxy.rewrite import ColumnInfo, Identity, StaticCatalog, TableInfo

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
CREATE SEQUENCE tickets;
CREATE TABLE items (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    qty int NOT NULL DEFAULT 0,
    price float8,
    created timestamptz DEFAULT now(),
    token uuid DEFAULT gen_random_uuid(),
    note text
);
CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item_id bigint,
    kind text,
    at timestamptz(0) DEFAULT CURRENT_TIMESTAMP(0),
    day date DEFAULT CURRENT_DATE,
    who name DEFAULT current_user,
    r float8,
    info text
);
CREATE TABLE counters (k int PRIMARY KEY, v bigint NOT NULL, touched timestamp, ext uuid);
"""

TABLES = {"items": "id", "events": "id", "counters": "k"}

# What catalog_pg must read back from SCHEMA (checked by the differential test; the
# benchmark uses it without a server).
CATALOG = StaticCatalog(
    tables={
        "items": TableInfo(
            (
                ColumnInfo("id", "nextval('items_id_seq'::regclass)"),
                ColumnInfo("name"),
                ColumnInfo("qty", "0"),
                ColumnInfo("price"),
                ColumnInfo("created", "now()"),
                ColumnInfo("token", "gen_random_uuid()"),
                ColumnInfo("note"),
            ),
            (frozenset({"id"}),),
            1,
        ),
        "events": TableInfo(
            (
                ColumnInfo("id", "nextval('public.events_id_seq'::regclass)", Identity.ALWAYS),
                ColumnInfo("item_id"),
                ColumnInfo("kind"),
                ColumnInfo("at", "CURRENT_TIMESTAMP(0)"),
                ColumnInfo("day", "CURRENT_DATE"),
                ColumnInfo("who", "CURRENT_USER"),
                ColumnInfo("r"),
                ColumnInfo("info"),
            ),
            (frozenset({"id"}),),
            1,
        ),
        "counters": TableInfo(
            (ColumnInfo("k"), ColumnInfo("v"), ColumnInfo("touched"), ColumnInfo("ext")),
            (frozenset({"k"}),),
            1,
        ),
    }
)
INITIAL_ITEMS = 60
COUNTERS = 8


def initial_rows(reverse: bool) -> list[str]:
    """The same rows for every server; ``reverse`` stores them in the opposite physical order."""
    items = [
        f"INSERT INTO items (id, name, qty, price, created, token, note) VALUES ({i}, 'item{i}', "
        f"{i % 5}, {i * 1.5}, '2026-01-01 00:00:00+00'::timestamptz + {i} * interval '1 hour', "
        f"md5('{i}')::uuid, NULL)"
        for i in range(1, INITIAL_ITEMS + 1)
    ]
    counters = [
        f"INSERT INTO counters (k, v, touched) VALUES ({k}, 0, NULL)" for k in range(COUNTERS)
    ]
    rows = items + counters
    if reverse:
        rows.reverse()
    return [
        *rows,
        f"SELECT setval('items_id_seq', {INITIAL_ITEMS})",
        "SELECT setval('tickets', 1000)",
    ]


def _statement(rng: random.Random) -> str:
    item = rng.randint(1, INITIAL_ITEMS + 40)
    k = rng.randrange(COUNTERS)
    q = rng.randint(0, 9)
    choices = [
        # transaction time, omitted serial/now()/gen_random_uuid() defaults, random() in VALUES
        f"INSERT INTO items (name, qty, price) VALUES ('n{q}', {q}, random())",
        "INSERT INTO items (name, price) VALUES ('a', random()), ('b', random() * 10)",
        "INSERT INTO items (name, note) "
        "VALUES ('u', gen_random_uuid()::text || uuid_generate_v4())",
        f"INSERT INTO items (name, qty, created) VALUES ('tl', {q}, TIMESTAMP 'now')",
        f"INSERT INTO items VALUES (DEFAULT, 'dflt', {q})",
        # identity ALWAYS, CURRENT_TIMESTAMP(0)/CURRENT_DATE/current_user defaults
        f"INSERT INTO events (item_id, kind, r) VALUES ({item}, 'k{q}', random())",
        f"INSERT INTO events (item_id, kind, info) VALUES ({item}, 'clock', "
        "clock_timestamp()::text || ' ' || statement_timestamp() || timeofday())",
        f"INSERT INTO events (item_id, kind, info, day) VALUES ({item}, 'env', "
        "pg_backend_pid()::text || txid_current() || current_setting('TimeZone') "
        "|| session_user, 'tomorrow'::date)",
        "INSERT INTO events DEFAULT VALUES",
        # sequences captured on the primary
        f"INSERT INTO counters (k, v) VALUES ({k}, nextval('tickets')) "
        "ON CONFLICT (k) DO UPDATE SET v = excluded.v + counters.v",
        f"UPDATE counters SET v = currval('tickets') WHERE k = {k}",
        # transaction time per row is fine
        f"UPDATE items SET qty = qty + 1, created = now() WHERE id = {item}",
        f"UPDATE counters SET touched = LOCALTIMESTAMP(3), ext = gen_random_uuid() WHERE k = {k}",
        f"UPDATE items SET note = 'on ' || CURRENT_DATE || ' at ' || LOCALTIME WHERE id % 7 = {k}",
        f"UPDATE items SET note = CURRENT_TIME(2)::text WHERE qty = {q}",
        # total order: deterministic
        "DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY qty, id LIMIT 2)",
        "UPDATE items SET qty = c.v FROM counters c WHERE c.k = items.id % 8 AND items.qty > 7",
        # refused
        "UPDATE items SET price = random()",
        f"UPDATE items SET note = md5(random()::text) WHERE id = {item}",
        "DELETE FROM items WHERE id IN (SELECT id FROM items LIMIT 3)",
        "UPDATE items SET qty = qty + 10 WHERE id IN (SELECT id FROM items ORDER BY qty LIMIT 1)",
        f"INSERT INTO items (name, qty) SELECT 'copy', qty FROM items WHERE id = {item}",
        "UPDATE items SET note = 'first' WHERE ctid = '(0,1)'",
        f"INSERT INTO events (item_id, kind) SELECT id, 'scan' FROM items WHERE qty = {q}",
    ]
    return rng.choice(choices)


def transactions(seed: int, count: int) -> list[list[str]]:
    """``count`` transactions of one to three statements."""
    rng = random.Random(seed)
    return [[_statement(rng) for _ in range(rng.randint(1, 3))] for _ in range(count)]
