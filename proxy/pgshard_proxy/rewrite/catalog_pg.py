"""Fill a :class:`~.catalog.StaticCatalog` from a live PostgreSQL server (asyncpg).

The only module of the rewriter that performs I/O; called by ``pgshard rewrite
--catalog-dsn`` and, later, by the proxy when it (re)loads a shard's schema.
Covers the schemas on the connection's ``search_path`` plus ``pg_catalog``.
"""

from __future__ import annotations

from typing import Any

from ..contract.sqltext import literal
from . import catalog

_COLUMNS = """
SELECT c.relname, a.attname, pg_get_expr(d.adbin, d.adrelid) AS def,
       a.attidentity::text AS attidentity,
       CASE WHEN a.attidentity::text <> ''
            THEN pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname)
       END AS identity_seq
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum AND a.attgenerated::text = ''
WHERE n.nspname = ANY (current_schemas(false)) AND c.relkind IN ('r', 'p')
ORDER BY c.relname, a.attnum
"""

_UNIQUE = """
SELECT c.relname,
       array_agg(a.attname::text) AS cols,
       bool_and(a.attnotnull) AS not_null,
       i.indpred IS NULL AND i.indexprs IS NULL AS plain
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
WHERE i.indisunique AND n.nspname = ANY (current_schemas(false))
GROUP BY c.relname, i.indexrelid, i.indpred IS NULL AND i.indexprs IS NULL
"""

_TRIGGERS = """
SELECT c.relname, p.proname
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_proc p ON p.oid = t.tgfoid
WHERE NOT t.tgisinternal AND n.nspname = ANY (current_schemas(false))
ORDER BY c.relname, t.tgname
"""

# provolatile sorts i < s < v, so max() is the most volatile overload.
_FUNCTIONS = """
SELECT p.proname, max(p.provolatile::text) AS volatility,
       bool_and(n.nspname = 'pg_catalog') AS builtin
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'pg_catalog' OR n.nspname = ANY (current_schemas(false))
GROUP BY p.proname
"""


async def load(conn: Any, version: int = 0) -> catalog.StaticCatalog:
    """Read tables, defaults, unique keys and function volatility through ``conn``
    (an ``asyncpg.Connection``)."""
    columns: dict[str, list[catalog.ColumnInfo]] = {}
    for row in await conn.fetch(_COLUMNS):
        identity = catalog.Identity(row["attidentity"])
        default = row["def"]
        if identity is not catalog.Identity.NONE and row["identity_seq"]:
            default = f"nextval({literal(row['identity_seq'])}::regclass)"
        columns.setdefault(row["relname"], []).append(
            catalog.ColumnInfo(row["attname"], default, identity)
        )
    keys: dict[str, list[frozenset[str]]] = {}
    counts: dict[str, int] = {}
    for row in await conn.fetch(_UNIQUE):
        counts[row["relname"]] = counts.get(row["relname"], 0) + 1
        if row["not_null"] and row["plain"]:
            keys.setdefault(row["relname"], []).append(frozenset(row["cols"]))
    triggers: dict[str, list[str]] = {}
    for row in await conn.fetch(_TRIGGERS):
        triggers.setdefault(row["relname"], []).append(row["proname"])
    tables = {
        name: catalog.TableInfo(
            tuple(cols),
            tuple(keys.get(name, ())),
            counts.get(name, 0),
            tuple(triggers.get(name, ())),
        )
        for name, cols in columns.items()
    }
    functions = {
        row["proname"]: catalog.FunctionInfo(catalog.Volatility(row["volatility"]), row["builtin"])
        for row in await conn.fetch(_FUNCTIONS)
    }
    return catalog.StaticCatalog(tables, functions, version)
