"""The row-image fallback of ``statement`` replication (MySQL's MIXED format).

An INSERT, UPDATE or DELETE the rewriter refuses (``SET r = random()``, a volatile
WHERE, ``INSERT … SELECT random() FROM …``) runs on the primary as the client wrote it,
with a ``RETURNING`` of the rows it wrote appended; instead of the statement, the log
gets what those rows became: one upsert by primary key of every inserted or updated
row's full image, or one delete by primary key of every deleted row
(:func:`image_statement`). Values travel in PostgreSQL's
text form, with the session settings that shaped it, and are cast back to each
column's type on the follower, so it stores exactly what the primary did.

Only where the images are the whole effect: a single INSERT/UPDATE/DELETE without its
own RETURNING (the client's answer, ``UPDATE n``, stays exactly PostgreSQL's), on a
table with a primary key, no user triggers and no inheritance children, not changing
the key (an UPDATE's SET, an INSERT's ``ON CONFLICT … DO UPDATE SET``);
:data:`CHANGES_COLUMNS` read before and after proves that no other table changed (a
volatile function writing elsewhere, a cascade).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlglot import TokenType

from ..contract import statement_log as slog
from ..rewrite import NotDeterministic
from ..rewrite import tokens as tokens_mod

TABLE_SQL = """
SELECT format('%I.%I', n.nspname, c.relname) AS name, c.relkind::text AS kind,
  EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid) AND c.relkind <> 'p'
    AS inherited,
  EXISTS (SELECT 1 FROM pg_trigger t WHERE NOT t.tgisinternal
    AND (t.tgrelid = c.oid OR t.tgrelid IN (SELECT relid FROM pg_partition_tree(c.oid))))
    AS triggers,
  (SELECT string_agg(r::int::text, ',') FROM (SELECT c.oid AS r UNION
    SELECT relid::oid FROM pg_partition_tree(c.oid)) p) AS relids,
  (SELECT json_agg(json_build_object(
      'name', quote_ident(a.attname), 'raw', a.attname,
      'type', format_type(a.atttypid, a.atttypmod),
      'generated', a.attgenerated <> '', 'identity', a.attidentity::text,
      'key', a.attnum = ANY (coalesce(x.indkey::int2[], '{}'))) ORDER BY a.attnum)
   FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
    AS columns
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index x ON x.indrelid = c.oid AND x.indisprimary
WHERE c.oid = to_regclass($1)
"""
"""What the fallback needs of the target table (``$1``: its name as written, as a
literal)."""

CHANGES_COLUMNS = (
    "(SELECT coalesce(string_agg(relid::int::text || ':' || "
    "(n_tup_ins + n_tup_upd + n_tup_del)::text, ',' ORDER BY relid), '') "
    "FROM pg_stat_xact_user_tables), "
    "(SELECT coalesce(json_object_agg(format('%I.%I', schemaname, sequencename), "
    "last_value), '{}')::text FROM pg_sequences)"
)
"""Rows this transaction wrote so far, per table, and the sequences' last values (read
before and after the statement: a sequence it advanced is set on the followers too)."""

_END_WORDS = frozenset(("from", "where", "returning"))


@dataclasses.dataclass(frozen=True)
class Target:
    """The refused statement and the table it writes."""

    op: str
    """``INSERT``, ``UPDATE`` or ``DELETE``."""
    text: str
    """The statement without its terminating semicolon."""
    table: str
    """The table's name as written."""
    ref: str
    """How RETURNING names the table's columns (the alias, else the name)."""
    set_words: frozenset[str]
    """Identifiers in the SET list (an UPDATE, or an INSERT's ON CONFLICT DO UPDATE,
    that may change the key is not imaged)."""


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    """Quoted as needed."""
    type: str
    key: bool


def target(sql: str) -> Target | None:
    """The statement's target, or ``None`` when it is not one INSERT/UPDATE/DELETE
    without RETURNING whose table the fallback can read."""
    try:
        statements = tokens_mod.split(sql, tokens_mod.tokenize(sql))
    except Exception:
        return None
    if len(statements) != 1:
        return None
    st = statements[0]
    toks = st.tokens
    words = [t.text.lower() if t.token_type != TokenType.IDENTIFIER else "" for t in toks]
    op = st.first_word
    i = 1
    if op in ("DELETE", "INSERT"):
        if words[1:2] != ["from" if op == "DELETE" else "into"]:
            return None
        i = 2
    elif op != "UPDATE":
        return None
    if words[i : i + 1] == ["only"]:
        i += 1
    start = i
    while i + 2 < len(toks) and toks[i + 1].token_type == TokenType.DOT:
        i += 2
    if i >= len(toks):
        return None
    table = sql[toks[start].start : toks[i].end + 1]
    i += 1
    if i < len(toks) and toks[i].token_type == TokenType.STAR:
        i += 1
    ref = table
    aliased = words[i : i + 1] == ["as"]
    if aliased:
        i += 1
    if op == "INSERT" and not aliased:
        pass  # an INSERT's alias needs AS: what follows is its columns or its rows
    elif i < len(toks) and words[i] not in ("set", "using", "where", "returning", ""):
        ref = toks[i].text
        i += 1
    elif i < len(toks) and toks[i].token_type == TokenType.IDENTIFIER:
        ref = sql[toks[i].start : toks[i].end + 1]
        i += 1
    depth = 0
    set_words: set[str] = set()
    in_set = op == "UPDATE"
    for j, t in enumerate(toks):
        if t.token_type == TokenType.L_PAREN:
            depth += 1
        elif t.token_type == TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and words[j] in _END_WORDS and j >= i:
            if words[j] == "returning":
                return None
            in_set = False
        elif op == "INSERT" and depth == 0 and words[j] == "set":
            in_set = True  # ON CONFLICT … DO UPDATE SET
        elif in_set and j > i:
            set_words.add(t.text if t.token_type == TokenType.IDENTIFIER else t.text.lower())
    return Target(op, sql[st.start : st.end], table, ref, frozenset(set_words))


def check(
    tgt: Target, info: Mapping[str, Any] | None, refusal: NotDeterministic
) -> tuple[str, list[Column]] | NotDeterministic:
    """The table's qualified name and columns, or why the fallback does not apply
    (the rewriter's refusal, with the reason and the fix)."""

    def refuse(why: str, fix: str) -> NotDeterministic:
        return NotDeterministic(
            f"{refusal.construct}, and the row-image fallback cannot run it: {why}",
            refusal.position,
            f"{fix}; or {refusal.hint}",
        )

    if info is None:
        return refuse(f"no table {tgt.table}", "check the table name")
    name = str(info["name"])
    if info["kind"] not in ("r", "p") or info["inherited"]:
        return refuse(
            f"{name} is a view, a foreign table or has inheritance children",
            "write to the tables themselves",
        )
    if info["triggers"]:
        return refuse(
            f"{name} has triggers, which would run again on the followers", "drop the triggers"
        )
    raw = info["columns"] or []
    columns = [Column(c["name"], c["type"], bool(c["key"])) for c in raw if not c["generated"]]
    keys = [c for c in raw if c["key"]]
    if not keys:
        return refuse(
            f"table {name} has no primary key to write its rows by",
            f"ALTER TABLE {name} ADD PRIMARY KEY (…)",
        )
    if any(c["identity"] == "a" and not c["key"] for c in raw):
        return refuse(
            f"{name} has a GENERATED ALWAYS identity column outside its key",
            "use GENERATED BY DEFAULT",
        )
    if any(c["raw"] in tgt.set_words or c["name"] in tgt.set_words for c in keys):
        return refuse(
            f"the {'ON CONFLICT DO UPDATE' if tgt.op == 'INSERT' else 'UPDATE'} may "
            f"change the primary key of {name}",
            "change the key in a statement of its own",
        )
    return name, columns


def changed_elsewhere(info: Mapping[str, Any], before: str | None, after: str | None) -> list[str]:
    """Tables (oids) other than the target (and its partitions) whose written-rows
    counters moved between two :data:`CHANGES_COLUMNS` readings."""
    own = set(str(info["relids"] or "").split(","))
    old, new = _counters(before), _counters(after)
    return sorted(r for r, n in new.items() if r not in own and old.get(r) != n)


def advanced(before: str | None, after: str | None) -> list[str]:
    """Sequences (qualified, quoted) whose last value moved between two readings."""
    old, new = json.loads(before or "{}"), json.loads(after or "{}")
    return sorted(n for n, v in new.items() if v is not None and old.get(n) != v)


def _counters(text: str | None) -> dict[str, str]:
    return dict(p.split(":", 1) for p in (text or "").split(",") if p)


def capture_sql(tgt: Target, columns: Sequence[Column]) -> str:
    """The client's statement with the RETURNING of what the log needs."""
    wanted = _imaged(tgt.op, columns)
    return f"{tgt.text} RETURNING " + ", ".join(f"{tgt.ref}.{c.name}" for c in wanted)


def image_statement(
    op: str,
    table: str,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str | None]],
    settings: Mapping[str, str],
) -> slog.Statement:
    """One logged statement writing ``rows`` (text values, as RETURNING gave them) by
    primary key: an upsert of full images (INSERT, UPDATE) or a delete by key (DELETE)."""
    wanted = _imaged(op, columns)
    names = ", ".join(c.name for c in wanted)
    arrays = ", ".join(f"${k + 1}::text[]" for k in range(len(wanted)))
    source = f"unnest({arrays}) AS u({names})"
    if op != "DELETE":
        values = ", ".join(f"u.{c.name}::{c.type}" for c in wanted)
        keys = ", ".join(c.name for c in wanted if c.key)
        rest = [c for c in wanted if not c.key]
        action = (
            "DO UPDATE SET " + ", ".join(f"{c.name} = excluded.{c.name}" for c in rest)
            if rest
            else "DO NOTHING"
        )
        sql = (
            f"INSERT INTO {table} ({names}) OVERRIDING SYSTEM VALUE "
            f"SELECT {values} FROM {source} ON CONFLICT ({keys}) {action}"
        )
    else:
        match = " AND ".join(f"d.{c.name} = u.{c.name}::{c.type}" for c in wanted)
        sql = f"DELETE FROM {table} AS d USING {source} WHERE {match}"
    params = tuple(_array([row[k] for row in rows]) for k in range(len(wanted)))
    return slog.Statement(
        sql, params=params, types=("text[]",) * len(wanted), settings=settings, kind="rows"
    )


def _imaged(op: str, columns: Sequence[Column]) -> list[Column]:
    """What an image carries: every column of an inserted or updated row, the key of a
    deleted one."""
    return list(columns) if op != "DELETE" else [c for c in columns if c.key]


def _array(values: Sequence[str | None]) -> str:
    """A text[] literal of ``values`` (NULL for ``None``)."""
    items = (
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    )
    return "{" + ",".join(items) + "}"
