"""Writing out the defaults PostgreSQL would fill in: omitted columns and DEFAULT.

A column default such as ``nextval('t_id_seq'::regclass)`` (serial, identity),
``now()`` or ``gen_random_uuid()`` is evaluated by each server when an INSERT
omits the column; statement-based replication needs the primary's value written
into the statement. Called by the ``volatile_defaults`` rule in :mod:`.rules`;
the default expression itself is analysed by the caller-supplied
:data:`DefaultAnalyzer` (the same rules, applied to ``SELECT <default>``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from sqlglot import TokenType, exp

from . import catalog as catalog_mod
from . import tokens
from .errors import NotDeterministic
from .template import Captured, Edit, Once, Piece, Slot

DefaultAnalyzer = Callable[[str], tuple[Piece, ...]]
"""Rewrite a default expression evaluated once; raises NotDeterministic."""

NeedCallback = Callable[[str, int, str], None]


_PLAIN_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")

# PostgreSQL's reserved key words (documentation, appendix C), which a column name
# spelled the same way must be quoted to avoid.
_RESERVED = frozenset(
    [
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "asymmetric",
        "authorization",
        "binary",
        "both",
        "case",
        "cast",
        "check",
        "collate",
        "collation",
        "column",
        "concurrently",
        "constraint",
        "create",
        "cross",
        "current_catalog",
        "current_date",
        "current_role",
        "current_schema",
        "current_time",
        "current_timestamp",
        "current_user",
        "default",
        "deferrable",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "false",
        "fetch",
        "for",
        "foreign",
        "freeze",
        "from",
        "full",
        "grant",
        "group",
        "having",
        "ilike",
        "in",
        "initially",
        "inner",
        "intersect",
        "into",
        "is",
        "isnull",
        "join",
        "lateral",
        "leading",
        "left",
        "like",
        "limit",
        "localtime",
        "localtimestamp",
        "natural",
        "not",
        "notnull",
        "null",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "outer",
        "overlaps",
        "placing",
        "primary",
        "references",
        "returning",
        "right",
        "select",
        "session_user",
        "similar",
        "some",
        "symmetric",
        "table",
        "tablesample",
        "then",
        "to",
        "trailing",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "variadic",
        "verbose",
        "when",
        "where",
        "window",
        "with",
    ]
)


def quote_ident(name: str) -> str:
    """``name`` (exactly as the catalog stores it) as PostgreSQL needs it written: bare
    when it is a plain lower-case word that is not reserved, double-quoted otherwise."""
    if _PLAIN_IDENT.fullmatch(name) and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


def expand(
    stmt: tokens.Statement,
    inserts: Sequence[exp.Insert],
    catalog: catalog_mod.Catalog | None,
    need: NeedCallback,
    analyze: DefaultAnalyzer,
) -> list[Edit]:
    """Edits writing out the volatile defaults of each INSERT of the statement."""
    edits: list[Edit] = []
    for insert in inserts:
        edits.extend(_expand_insert(stmt, insert, catalog, need, analyze))
    return edits


def _expand_insert(
    stmt: tokens.Statement,
    insert: exp.Insert,
    catalog: catalog_mod.Catalog | None,
    need: NeedCallback,
    analyze: DefaultAnalyzer,
) -> list[Edit]:
    schema = insert.this if isinstance(insert.this, exp.Schema) else None
    table_node = schema.this if schema is not None else insert.this
    if not isinstance(table_node, exp.Table):
        return []
    table = table_node.name.lower()
    name_token = stmt.index_at(int(table_node.this.meta.get("start", -1)))
    position = stmt.tokens[name_token].start if name_token is not None else -1
    if catalog is None or catalog.table(table) is None:
        reason = "defaults are in pg_attrdef" if catalog is None else "table not in the catalog"
        need(f"column defaults of {table}", position, reason)
        return []
    info = catalog.table(table)
    assert info is not None and name_token is not None
    source = insert.expression
    default_values = bool(insert.args.get("default"))
    if default_values:
        width = 0
    elif isinstance(source, exp.Values) and source.expressions:
        width = len(source.expressions[0].expressions)
    else:
        width = len(info.columns)  # INSERT … SELECT: only listed or leading columns
    listed = (
        [i.name.lower() for i in schema.expressions]
        if schema is not None
        else [c.name for c in info.columns[:width]]
    )
    volatile: dict[str, tuple[Piece, ...]] = {}
    for column in info.columns:
        if column.default is None:
            continue
        try:
            pieces = analyze(column.default)
        except NotDeterministic as e:
            raise NotDeterministic(
                f"the DEFAULT of {table}.{column.name} ({e.construct})", position, e.hint
            ) from e
        if any(isinstance(p, Slot) for p in pieces):
            volatile[column.name] = pieces
    omitted = [c for c in info.columns if c.name not in listed and c.name in volatile]
    if not isinstance(source, exp.Values) and not default_values:
        if omitted:
            raise NotDeterministic(
                f"INSERT … SELECT into {table} omitting {omitted[0].name}, whose DEFAULT "
                f"{omitted[0].default} is evaluated per row",
                position,
                f"list {omitted[0].name} and give its values in the SELECT",
            )
        return []
    values_at = _values_token(stmt, name_token)
    edits: list[Edit] = []
    identity_always = any(c.identity is catalog_mod.Identity.ALWAYS for c in omitted)
    # Rows: append the omitted columns' values, replace DEFAULT by the default's value.
    if default_values:
        row: list[Piece] = []
        for i, c in enumerate(omitted):
            row.extend(([", "] if i else []) + list(volatile[c.name]))
        if not omitted:
            return []
        default_at = values_at - 1
        names = ", ".join(quote_ident(c.name) for c in omitted)
        prefix = "OVERRIDING SYSTEM VALUE " if identity_always else ""
        pieces = (f"({names}) {prefix}VALUES (", *row, ")")
        edits.append(Edit(stmt.tokens[default_at].start, stmt.tokens[values_at].end + 1, pieces))
        return edits
    for open_at in _rows(stmt, values_at):
        close = stmt.closing_paren(open_at)
        for k, element in enumerate(_elements(stmt, open_at, close)):
            if len(element) == 1 and stmt.tokens[element[0]].token_type == TokenType.DEFAULT:
                col = listed[k] if k < len(listed) else None
                if col is not None and col in volatile:
                    t = stmt.tokens[element[0]]
                    edits.append(Edit(t.start, t.end + 1, volatile[col]))
                    listed_column = info.column(col)
                    if (
                        listed_column is not None
                        and listed_column.identity is catalog_mod.Identity.ALWAYS
                    ):
                        identity_always = True
        if omitted:
            extra: list[Piece] = []
            for c in omitted:
                extra.extend([", ", *volatile[c.name]])
            at = stmt.tokens[close].start
            edits.append(Edit(at, at, tuple(extra)))
    if omitted:
        names = ", ".join(quote_ident(c.name) for c in omitted)
        if schema is not None:
            close_list = stmt.closing_paren(_next(stmt, name_token, TokenType.L_PAREN))
            at = stmt.tokens[close_list].start
            edits.append(Edit(at, at, (f", {names}",)))
        else:
            lead = ", ".join(quote_ident(n) for n in listed)
            at = stmt.tokens[values_at].start
            edits.append(Edit(at, at, (f"({lead}{', ' if lead else ''}{names}) ",)))
    if identity_always:
        at = stmt.tokens[values_at].start
        edits.append(Edit(at, at, ("OVERRIDING SYSTEM VALUE ",)))
    return edits


def expand_update(
    stmt: tokens.Statement,
    update: exp.Update,
    catalog: catalog_mod.Catalog | None,
    need: NeedCallback,
    analyze: DefaultAnalyzer,
    one_row: bool,
) -> list[Edit]:
    """``SET c = DEFAULT`` in ``update``: the default written out, or refused when it
    takes a new value per row (nextval(), random(), clock_timestamp()) and the UPDATE
    may touch several rows."""
    edits: list[Edit] = []
    target = update.this
    for eq in update.expressions:
        value = eq.expression if isinstance(eq, exp.EQ) else None
        if not (
            isinstance(value, exp.Column)
            and value.name.upper() == "DEFAULT"
            and not value.this.args.get("quoted")
            and isinstance(target, exp.Table)
        ):
            continue
        table, column_name = target.name.lower(), eq.this.name.lower()
        position = int(value.this.meta.get("start", -1))
        if catalog is None or catalog.table(table) is None:
            need(f"DEFAULT of {table}.{column_name}", position, "defaults are in pg_attrdef")
            continue
        info = catalog.table(table)
        column = info.column(column_name) if info is not None else None
        if column is None or column.default is None:
            continue
        try:
            pieces = analyze(column.default)
        except NotDeterministic as e:
            raise NotDeterministic(
                f"the DEFAULT of {table}.{column_name} ({e.construct})", position, e.hint
            ) from e
        slots = [p for p in pieces if isinstance(p, Slot)]
        per_row = [
            p
            for p in slots
            if isinstance(p.value, Once) or (isinstance(p.value, Captured) and not p.value.shared)
        ]
        if per_row and not one_row:
            raise NotDeterministic(
                f"SET {column_name} = DEFAULT ({column.default}) evaluated once per row",
                position,
                "each row would get each server's own value; write the values explicitly, "
                "one UPDATE per row by key",
            )
        i = stmt.index_at(position)
        if slots and i is not None:
            t = stmt.tokens[i]
            edits.append(Edit(t.start, t.end + 1, pieces))
    return edits


def _next(stmt: tokens.Statement, i: int, kind: TokenType) -> int:
    for j in range(i, len(stmt.tokens)):
        if stmt.tokens[j].token_type == kind:
            return j
    raise ValueError(f"no {kind.name} after offset {stmt.tokens[i].start}")


def _values_token(stmt: tokens.Statement, i: int) -> int:
    """The VALUES keyword of the INSERT whose table name is token ``i``."""
    depth = 0
    for j in range(i, len(stmt.tokens)):
        t = stmt.tokens[j].token_type
        if t == TokenType.L_PAREN:
            depth += 1
        elif t == TokenType.R_PAREN:
            depth -= 1
        elif t == TokenType.VALUES and depth == 0:
            return j
    raise ValueError(f"no VALUES after offset {stmt.tokens[i].start}")


def _rows(stmt: tokens.Statement, values_at: int) -> list[int]:
    """Indexes of the ``(`` opening each row after VALUES."""
    rows: list[int] = []
    j = values_at + 1
    while stmt.is_open_paren(j):
        rows.append(j)
        j = stmt.closing_paren(j) + 1
        if j < len(stmt.tokens) and stmt.tokens[j].token_type == TokenType.COMMA:
            j += 1
        else:
            break
    return rows


def _elements(stmt: tokens.Statement, open_at: int, close: int) -> list[list[int]]:
    """Token indexes of each comma-separated element between the parentheses."""
    out: list[list[int]] = [[]]
    depth = 0
    for j in range(open_at + 1, close):
        t = stmt.tokens[j].token_type
        if t in (TokenType.L_PAREN, TokenType.L_BRACKET):
            depth += 1
        elif t in (TokenType.R_PAREN, TokenType.R_BRACKET):
            depth -= 1
        elif t == TokenType.COMMA and depth == 0:
            out.append([])
            continue
        out[-1].append(j)
    return out
