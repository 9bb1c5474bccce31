"""The per-shard statement log of ``statement`` replication (DESIGN §4): schema and entries.

Shared by its writer (the proxy, on the shard's primary) and its readers (the
followers' appliers in the instance agents). One row per committed write
transaction, in the application database, schema ``pgshard``:

``statement_log(seq, role, statements, sequences, committed_at)``
    ``seq`` is the position (a follower's position is the highest ``seq`` it applied);
    ``statements`` the transaction's statements in order, each with its parameters and
    the session settings it ran with; ``sequences`` the values to ``setval`` at the
    end (sequences a statement advanced whose values the rewriter captured).

**Commit order** (a READ COMMITTED statement sees what committed before it, so the
log must replay transactions in the order they became visible, and each one must
have seen exactly the transactions before it): the writer takes the shard's write
lock (:data:`LOCK_SQL`, a transaction-scoped advisory lock) before the *first write
statement* of a transaction and appends the entry (:data:`APPEND_SQL`, which draws
``seq``) just before COMMIT. The lock is released only after the commit is visible,
so write transactions of a shard run one at a time from their first write on: each
one's writes see exactly the transactions with smaller ``seq``, which is what the
applier replays before it. The price: write transactions of one shard do not
overlap (reads and read-only transactions are not affected). Taking the lock only at
COMMIT would not be enough: a statement that ran before another transaction
committed would be replayed after it (tests/integration/test_statement_log.py shows
the divergence).

**Positions:** on every member ``POSITION_SQL`` (the highest ``seq`` in its log). A
follower's applier inserts each entry it applies into its own log in the same
transaction, so its log is a range of the primary's: a promoted follower serves the
entries others still miss, and a snapshot of the primary carries its position.

**Trimming** (``pgshard_operator.instance.logtrim``): entries every follower applied
are removed (:data:`TRIM_SQL`), never a member's newest one (its position);
``log_trimmed`` says how far, so a follower that fell behind a trim knows it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

SCHEMA = "pgshard"
TABLE = "pgshard.statement_log"
SEQUENCE = "pgshard.statement_seq"
TRIMMED_TABLE = "pgshard.log_trimmed"
CHANNEL = "pgshard_statement_log"
"""NOTIFY channel the writer signals on commit; appliers LISTEN to wake."""

UPSTREAM_SETTING = "pgshard.upstream"
"""A follower's setting naming (``host:port``) the primary its applier pulls from: what
``primary_conninfo`` is in wal mode, read by the shard manager's probe."""

LOCK_KEY = 0x70677368_61726431
"""The shard's write lock (``pg_advisory_xact_lock``); 'pgshard1' in ASCII, chosen to
stay clear of applications' own advisory locks."""

SCHEMA_SQL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE SEQUENCE IF NOT EXISTS {SEQUENCE};
CREATE TABLE IF NOT EXISTS {TABLE} (
    seq bigint PRIMARY KEY,
    role text NOT NULL,
    statements jsonb NOT NULL,
    sequences jsonb NOT NULL DEFAULT '{{}}',
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.followers (
    name text PRIMARY KEY,
    seq bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE {SCHEMA}.followers ADD COLUMN IF NOT EXISTS address text;
CREATE TABLE IF NOT EXISTS {TRIMMED_TABLE} (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    below bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.promoted (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    after bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
"""
"""Idempotent DDL, run by the instance agent on a primary's application database (and
by the trimmer and the applier, for logs made before a table was added).
``followers`` holds each follower's applied ``seq`` and address (written by its
applier, or by its snapshot copy before the dump), what the primary keeps log entries
for; ``log_trimmed`` how far this member's log was trimmed (see :data:`TRIM_SQL`);
``promoted`` the entry after which this member became the writer (:data:`PROMOTED_SQL`)."""

LOCK_SQL = f"SELECT pg_advisory_xact_lock({LOCK_KEY})"
"""Run by the writer before the first write statement of a transaction."""

APPEND_SQL = f"""
WITH entry AS (
    INSERT INTO {TABLE} (seq, role, statements, sequences)
    VALUES (nextval('{SEQUENCE}'), current_user, $1::jsonb, $2::jsonb)
    RETURNING seq
)
SELECT seq, pg_notify('{CHANNEL}', seq::text) FROM entry
"""
"""Run by the writer just before COMMIT (holding the lock): ``$1`` the statements as
JSON (:func:`Entry.statements_json`), ``$2`` the sequences; returns the entry's ``seq``."""

POSITION_SQL = f"SELECT coalesce(max(seq), 0) FROM {TABLE}"

_ENTRY_COLUMNS = (
    "seq, role, statements::text AS statements, sequences::text AS sequences, committed_at"
)

READ_SQL = f"SELECT {_ENTRY_COLUMNS} FROM {TABLE} WHERE seq > $1 ORDER BY seq LIMIT $2"
"""The next entries after ``$1`` (at most ``$2``), in order: what an applier pulls."""

ENTRY_SQL = f"SELECT {_ENTRY_COLUMNS} FROM {TABLE} WHERE seq = $1"
"""One entry, as :data:`READ_SQL` returns it: a follower and its primary compare the
entry the follower applied last (the same history, or a failover left it ahead)."""

COPY_SQL = f"""
INSERT INTO {TABLE} (seq, role, statements, sequences, committed_at)
SELECT seq, role, statements::jsonb, sequences::jsonb, committed_at
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
    AS e(seq, role, statements, sequences, committed_at)
"""
"""An applier records the entries it applied in its own log, as they are (same
transaction): arrays of :data:`READ_SQL`'s columns, one element per entry."""

BOOKMARK_SQL = f"""
INSERT INTO {SCHEMA}.followers (name, seq, address) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE
SET seq = excluded.seq, address = excluded.address, updated_at = now()
"""
"""An applier tells the primary how far it applied (``$1`` its name, ``$2`` its seq,
``$3`` its ``host:port``); a snapshot copy sets it before the dump (a bookmark)."""

TRIMMED_SQL = f"SELECT coalesce((SELECT below FROM {TRIMMED_TABLE}), 0)"
"""Every entry with a smaller ``seq`` is gone from this member's log (none at or above
it was removed): a follower whose position is below ``this - 1`` can no longer catch
up from here."""

TRIM_SQL = f"""
WITH gone AS (
    DELETE FROM {TABLE} WHERE seq IN (
        SELECT seq FROM {TABLE} WHERE seq < $1 ORDER BY seq LIMIT $2
    )
    RETURNING seq
), mark AS (
    INSERT INTO {TRIMMED_TABLE} (below) SELECT max(seq) + 1 FROM gone HAVING count(*) > 0
    ON CONFLICT (one) DO UPDATE SET below = greatest({TRIMMED_TABLE}.below, excluded.below)
)
SELECT count(*) FROM gone
"""
"""Remove the oldest entries below ``$1`` (at most ``$2``) and record how far, in one
statement. Callers pass a bound no higher than their position, so the newest entry
(the position itself) always stays."""

PROMOTED_SQL = f"""
INSERT INTO {SCHEMA}.promoted (after) VALUES ($1)
ON CONFLICT (one) DO UPDATE SET after = excluded.after, at = now()
"""
"""On promotion: the last entry this member applied before it wrote its own. An old
primary's entries after it were never applied here: discarded when it rejoins."""

FORK_SQL = f"SELECT (SELECT after FROM {SCHEMA}.promoted)"

CONTINUE_SQL = f"SELECT setval('{SEQUENCE}', greatest(1, ({POSITION_SQL})), ({POSITION_SQL}) > 0)"
"""On promotion: the new writer continues the sequence after the last entry it applied."""


KINDS = frozenset(("sql", "rows"))
"""Statement kinds: ``sql`` a client's statement (rewritten), ``rows`` the row images
of a statement the rewriter refused (``pgshard_proxy.execute.row_image``): a
self-contained statement writing them by primary key. An applier refuses (diverges
on) a kind it does not know rather than guess."""


class BadEntry(ValueError):
    """A log row that does not follow this schema."""


@dataclasses.dataclass(frozen=True)
class Statement:
    """One statement of a logged transaction, as the applier runs it."""

    sql: str
    params: tuple[str | None, ...] = ()
    """Parameter values ``$1…`` in PostgreSQL's text form (``None`` is NULL)."""
    types: tuple[str, ...] = ()
    """Parameter type names, when the client gave them (else PostgreSQL infers them)."""
    settings: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Session settings that change results (TimeZone, search_path, DateStyle, …)."""
    kind: str = "sql"
    """What the statement is (:data:`KINDS`): informational for the applier, which runs
    every kind the same way, so an older applier applies newer kinds correctly."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sql": self.sql}
        if self.kind != "sql":
            d["kind"] = self.kind
        if self.params:
            d["params"] = list(self.params)
        if self.types:
            d["types"] = list(self.types)
        if self.settings:
            d["settings"] = dict(self.settings)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Statement:
        if not isinstance(d, Mapping) or not isinstance(d.get("sql"), str):
            raise BadEntry(f"a statement must be an object with 'sql', got {d!r}")
        params = d.get("params") or ()
        if not all(p is None or isinstance(p, str) for p in params):
            raise BadEntry(f"parameters must be text or null, got {params!r}")
        settings = d.get("settings") or {}
        kind = d.get("kind", "sql")
        if kind not in KINDS:
            raise BadEntry(f"unknown statement kind {kind!r}: upgrade this follower's applier")
        return cls(
            kind=kind,
            sql=d["sql"],
            params=tuple(params),
            types=tuple(str(t) for t in d.get("types") or ()),
            settings={str(k): str(v) for k, v in settings.items()},
        )


@dataclasses.dataclass(frozen=True)
class Entry:
    """One committed write transaction of the log."""

    seq: int
    role: str
    statements: tuple[Statement, ...]
    sequences: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """Qualified sequence name → value to ``setval`` after the statements."""

    @staticmethod
    def statements_json(statements: Sequence[Statement]) -> str:
        return json.dumps([s.to_dict() for s in statements])

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Entry:
        """From a :data:`READ_SQL` row (jsonb columns as text)."""
        try:
            stmts = json.loads(row["statements"])
            seqs = json.loads(row["sequences"] or "{}")
        except (TypeError, ValueError) as e:
            raise BadEntry(f"entry {row['seq']}: not JSON: {e}") from None
        if not isinstance(stmts, list) or not isinstance(seqs, dict):
            raise BadEntry(f"entry {row['seq']}: statements must be a list, sequences an object")
        return cls(
            seq=int(row["seq"]),
            role=str(row["role"]),
            statements=tuple(Statement.from_dict(s) for s in stmts),
            sequences={str(k): int(v) for k, v in seqs.items()},
        )
