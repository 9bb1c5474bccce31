"""Rules refusing writes whose effect depends on the physical order of rows.

A follower stores the same rows at different places (its own free space, its own
vacuum), so anything choosing rows by position or by "the first ones found"
picks different rows there. Listed in :data:`.rules.RULES`.
"""

from __future__ import annotations

from collections.abc import Set

from sqlglot import exp

from . import view as view_mod
from .errors import NotDeterministic
from .template import Edit
from .view import View, table_name


def ctid_predicates(view: View) -> list[Edit]:
    """``ctid`` names a physical row position, which differs on every server -> refused.

    ``DELETE FROM t WHERE ctid = '(0,1)'`` -> refused.
    """
    if view.read_only:
        return []
    for col in view.find_all(exp.Column):
        if col.name.lower() == "ctid" and not col.this.args.get("quoted"):
            raise NotDeterministic(
                "a ctid (physical row position) in a write",
                view_mod.position(col),
                "rows sit at different positions on each server; choose rows by their key",
            )
    return []


def skip_locked_and_nowait(view: View) -> list[Edit]:
    """``FOR UPDATE SKIP LOCKED``/``NOWAIT`` in a write depend on concurrent sessions -> refused.

    ``DELETE FROM q WHERE id IN (SELECT id FROM q ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)``
    -> refused.
    """
    if view.read_only:
        return []
    for lock in view.find_all(exp.Lock):
        wait = lock.args.get("wait")
        if wait is not None:
            raise NotDeterministic(
                "FOR UPDATE SKIP LOCKED" if wait is False else "FOR UPDATE NOWAIT",
                -1,
                "which rows are locked depends on other sessions of the primary; "
                "select the rows by key in the client, then write them",
            )
    return []


def limit_without_total_order(view: View) -> list[Edit]:
    """A write that chooses rows through LIMIT/OFFSET/FETCH without an ORDER BY over a
    unique key picks rows in physical order, which differs on every server -> refused.

    ``DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT 10)`` -> refused;
    ``… (SELECT id FROM t ORDER BY id LIMIT 10)`` with id the primary key -> unchanged.
    """
    if view.read_only:
        return []
    for select in view.find_all(exp.Select):
        limit = select.args.get("limit") or select.args.get("offset")
        if limit is None:
            continue
        position = view_mod.position(limit)
        order = select.args.get("order")
        if order is None:
            raise NotDeterministic(
                "LIMIT/OFFSET without ORDER BY in a write",
                position,
                "rows come in physical order, which differs on each server; "
                "add ORDER BY over a unique key",
            )
        table, columns = _single_table_order(select)
        if table is None or columns is None:
            raise NotDeterministic(
                "LIMIT/OFFSET ordered by expressions or over a join in a write",
                position,
                "order by plain columns of one table that include a unique key",
            )
        _require_unique(view, table, columns, position, "ORDER BY … LIMIT")
    return []


def _single_table_order(select: exp.Select) -> tuple[str | None, set[str] | None]:
    from_ = select.args.get("from_")
    if from_ is None or select.args.get("joins"):
        return None, None
    table = table_name(from_.this)
    columns: set[str] = set()
    for ordered in select.args["order"].expressions:
        if not isinstance(ordered.this, exp.Column):
            return table, None
        columns.add(ordered.this.name.lower())
    return table, columns


def _require_unique(view: View, table: str, columns: Set[str], position: int, what: str) -> None:
    if view.catalog is None:
        view.need(f"{what} on {table}", position, "unique keys are in pg_index")
        return
    info = view.catalog.table(table)
    if info is None:
        view.need(f"{what} on {table}", position, f"table {table} not found in the catalog")
        return
    if not any(key <= columns for key in info.unique_keys):
        keys = " or ".join("(" + ", ".join(sorted(k)) + ")" for k in info.unique_keys) or "none"
        raise NotDeterministic(
            f"{what} on {table} without a unique key among ({', '.join(sorted(columns))})",
            position,
            f"rows tied on these columns come in physical order; include a unique key "
            f"of {table} (unique NOT NULL keys: {keys})",
        )


def update_from_join(view: View) -> list[Edit]:
    """``UPDATE t … FROM u`` where several rows of u may match one row of t: PostgreSQL
    uses an arbitrary one -> refused unless the WHERE clause equates a unique key of u
    to values that do not come from u.

    ``UPDATE t SET v = u.v FROM u WHERE t.k = u.k`` -> refused unless k is unique in u.
    """
    for update in view.find_all(exp.Update):
        from_ = update.args.get("from_")
        if from_ is None:
            continue
        sources = [from_.this, *(j.this for j in update.args.get("joins") or [])]
        pinned = _equated_columns(update.args.get("where"))
        for source in sources:
            table = table_name(source)
            if table is None:
                raise NotDeterministic(
                    "UPDATE … FROM a subquery or function",
                    view_mod.position(source),
                    "several of its rows may match one target row, and PostgreSQL then "
                    "uses an arbitrary one; join a table on its unique key instead",
                )
            alias = source.alias_or_name.lower()
            _require_unique(
                view, table, pinned.get(alias, set()), view_mod.position(source), "UPDATE … FROM"
            )
    return []


def _equated_columns(where: exp.Expr | None) -> dict[str, set[str]]:
    """Per table alias, its columns the top-level AND of ``where`` equates to something
    that does not involve that alias."""
    out: dict[str, set[str]] = {}
    if where is None:
        return out
    for cond in where.this.flatten() if isinstance(where.this, exp.And) else [where.this]:
        if not isinstance(cond, exp.EQ):
            continue
        for side, other in ((cond.this, cond.expression), (cond.expression, cond.this)):
            if isinstance(side, exp.Column) and side.table:
                alias = side.table.lower()
                others = {c.table.lower() for c in other.find_all(exp.Column)}
                if alias not in others:
                    out.setdefault(alias, set()).add(side.name.lower())
    return out


def on_conflict_arbiters(view: View) -> list[Edit]:
    """``INSERT … ON CONFLICT`` into a table with several unique constraints: which
    constraint a row hits first depends on the rows already there and their order ->
    refused.

    ``INSERT INTO t VALUES (1, 'a') ON CONFLICT DO NOTHING`` with t(id PK, name UNIQUE)
    -> refused.
    """
    for insert in view.find_all(exp.Insert):
        conflict = insert.args.get("conflict")
        if conflict is None:
            continue
        table = table_name(insert.this.this if isinstance(insert.this, exp.Schema) else insert.this)
        if table is None:
            continue
        if view.catalog is None or view.catalog.table(table) is None:
            view.need(f"ON CONFLICT on {table}", -1, "unique constraints are in pg_index")
            continue
        info = view.catalog.table(table)
        assert info is not None
        if info.unique_constraints > 1:
            raise NotDeterministic(
                f"ON CONFLICT on {table}, which has {info.unique_constraints} unique constraints",
                -1,
                "a row may conflict with different rows through different constraints, "
                "depending on order; check for the row first, then INSERT or UPDATE by key",
            )
    return []


# Aggregates whose result lists their input in the order rows arrive.
_ORDERED_AGGREGATES = (
    exp.ArrayAgg,
    exp.GroupConcat,
    exp.JSONArrayAgg,
    exp.JSONObjectAgg,
    exp.JSONBObjectAgg,
    exp.ArrayConcatAgg,
)
_ORDERED_AGGREGATE_NAMES = frozenset({"jsonb_agg", "xmlagg", "string_agg", "array_agg"})
# Window functions whose value depends on the order of the rows in their window.
_ORDERED_WINDOW_FUNCTIONS = (
    exp.RowNumber,
    exp.Rank,
    exp.DenseRank,
    exp.Ntile,
    exp.Lag,
    exp.Lead,
    exp.FirstValue,
    exp.LastValue,
    exp.NthValue,
    exp.CumeDist,
    exp.PercentRank,
)


def order_sensitive_aggregates(view: View) -> list[Edit]:
    """array_agg/string_agg/json_agg/… without ORDER BY, and row_number()/lag()/
    first_value()/… OVER a window without ORDER BY, list rows in physical order,
    which differs on every server -> refused in a write.

    ``INSERT INTO s (ids) SELECT array_agg(id) FROM t`` -> refused;
    ``… array_agg(id ORDER BY id) …`` -> unchanged.
    """
    if view.read_only:
        return []
    for node in view.find_all(exp.Func):
        name = node.name.lower() if isinstance(node, exp.Anonymous) else ""
        if isinstance(node, _ORDERED_AGGREGATES) or name in _ORDERED_AGGREGATE_NAMES:
            if node.parent is not None and isinstance(node.parent, exp.Window):
                continue  # judged as a window function below
            if node.find(exp.Order) is None:
                raise NotDeterministic(
                    f"{name or node.sql_name().lower()}() without ORDER BY in a write",
                    view_mod.position(node),
                    "it lists rows in physical order, which differs on each server; "
                    "add ORDER BY over a unique key inside the call",
                )
    for window in view.find_all(exp.Window):
        function = window.this
        ordered = isinstance(function, (*_ORDERED_WINDOW_FUNCTIONS, *_ORDERED_AGGREGATES))
        if ordered and window.args.get("order") is None:
            raise NotDeterministic(
                f"{function.sql_name().lower()}() OVER a window without ORDER BY in a write",
                view_mod.position(window),
                "rows come in physical order, which differs on each server; write ORDER BY "
                "over a unique key inside OVER (…)",
            )
    return []
