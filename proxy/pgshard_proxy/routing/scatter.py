"""A read over several shards: what each shard runs, and how the proxy merges it (pure).

Called by ``shardplan`` for a ``SELECT`` of distributed tables; its
:class:`ScatterPlan` drives ``routing/merge.py``. Each shard runs ``shard_sql``, the
query rewritten with sqlglot so that merging the shards' answers gives exactly one
PostgreSQL's answer:

- plain rows: ``ORDER BY`` stays on each shard and the proxy merge-sorts the
  ordered streams (sort keys travel as hidden trailing columns); ``LIMIT n OFFSET
  m`` becomes ``LIMIT n+m`` per shard, cut after the merge; ``DISTINCT`` is
  applied per shard and again over the merge;
- aggregates (``count/sum/min/max/avg/bool_and/bool_or/every``, with ``GROUP BY``,
  ``HAVING``): each shard aggregates its rows (``avg`` as ``sum`` and ``count``), the
  proxy combines the partial rows per group, filters by ``HAVING``, then sorts and
  cuts: this needs every group in memory (unavoidable; said in the README).

Anything whose merged answer could differ from one PostgreSQL's is
:class:`Unsupported` and refused with the construct named.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from sqlglot import exp

_ANON_AGGREGATES = frozenset(
    [
        "array_agg",
        "json_agg",
        "jsonb_agg",
        "json_object_agg",
        "jsonb_object_agg",
        "string_agg",
        "xmlagg",
        "mode",
        "corr",
        "covar_pop",
        "covar_samp",
        "regr_avgx",
        "regr_avgy",
        "regr_count",
        "regr_intercept",
        "regr_r2",
        "regr_slope",
        "regr_sxx",
        "regr_sxy",
        "regr_syy",
        "stddev",
        "stddev_pop",
        "stddev_samp",
        "variance",
        "var_pop",
        "var_samp",
        "bit_and",
        "bit_or",
        "bit_xor",
        "range_agg",
        "range_intersect_agg",
        "percentile_cont",
        "percentile_disc",
        "rank",
        "dense_rank",
        "percent_rank",
        "cume_dist",
        "any_value",
    ]
)
"""PostgreSQL's built-in aggregates that cannot be merged (sqlglot may read them as
plain function calls). User-defined aggregates cannot be recognised: see README."""


class Agg(enum.Enum):
    COUNT = "count"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    AVG = "avg"
    """Shards send ``sum`` and ``count`` (two columns); the proxy divides."""
    BOOL_AND = "bool_and"
    BOOL_OR = "bool_or"


_AGGS: dict[type[exp.Expr], Agg] = {
    exp.Count: Agg.COUNT,
    exp.Sum: Agg.SUM,
    exp.Min: Agg.MIN,
    exp.Max: Agg.MAX,
    exp.Avg: Agg.AVG,
    exp.LogicalAnd: Agg.BOOL_AND,
    exp.LogicalOr: Agg.BOOL_OR,
}


@dataclasses.dataclass(frozen=True)
class Unsupported:
    construct: str
    hint: str


@dataclasses.dataclass(frozen=True)
class OutputColumn:
    """One column the client gets from a grouped merge."""

    agg: Agg | None
    """None: a GROUP BY value, passed through."""
    source: int
    """Its column in the shard row (AVG: the sum; the count follows)."""


@dataclasses.dataclass(frozen=True)
class SortKey:
    column: int
    """Plain rows: index among the hidden trailing columns. Grouped: output column."""
    descending: bool = False
    nulls_first: bool = False


@dataclasses.dataclass(frozen=True)
class Grouping:
    """How partial aggregate rows combine (None on a plain scatter)."""

    columns: tuple[OutputColumn, ...]
    having: exp.Expr | None = None
    """HAVING with each aggregate replaced by ``exp.Placeholder(this=str(i))``: the
    value of hidden output ``i`` (see :attr:`having_columns`)."""
    having_columns: tuple[OutputColumn, ...] = ()
    keys: tuple[int, ...] = ()
    """Shard columns of the GROUP BY expressions: rows of one group share them."""
    names: tuple[str, ...] = ()
    """The client's column names, as PostgreSQL names them (alias, column or function)."""


@dataclasses.dataclass(frozen=True)
class ScatterPlan:
    shard_sql: str
    hidden: int = 0
    """Plain rows: trailing columns of ``shard_sql`` the client does not see."""
    order_by: tuple[SortKey, ...] = ()
    limit: int | None = None
    offset: int = 0
    distinct: bool = False
    grouping: Grouping | None = None


HAVING_NODES: tuple[type[exp.Expr], ...] = (
    exp.Placeholder, exp.Literal, exp.Boolean, exp.Null, exp.And, exp.Or, exp.Not, exp.Paren,
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Add, exp.Sub, exp.Mul, exp.Div,
    exp.Neg, exp.Is,
)  # fmt: skip
"""What ``routing/merge.py`` evaluates in a HAVING clause."""


def _output_name(item: exp.Expr) -> str:
    """PostgreSQL's column name for a select item (``FigureColname``, common cases)."""
    if isinstance(item, exp.Alias):
        return item.alias
    inner = item.this if isinstance(item, exp.Filter) else item
    if isinstance(inner, exp.Column):
        return inner.name
    if isinstance(inner, exp.AggFunc | exp.Anonymous):
        return _function_name(inner)
    return "?column?"


def _avg_parts(node: exp.Expr) -> list[exp.Expr]:
    """``avg(x) [FILTER (…)]`` -> ``sum(x)``, ``count(x)`` with the same filter."""
    inner = node.this if isinstance(node, exp.Filter) else node
    parts: list[exp.Expr] = [exp.Sum(this=inner.this.copy()), exp.Count(this=inner.this.copy())]
    if isinstance(node, exp.Filter):
        return [exp.Filter(this=p, expression=node.expression.copy()) for p in parts]
    return parts


def _agg_of(node: exp.Expr) -> Agg | None:
    if isinstance(node, exp.Filter):
        return _agg_of(node.this)
    return _AGGS.get(type(node)) or (
        Agg.BOOL_AND if isinstance(node, exp.Anonymous) and node.name.lower() == "every" else None
    )


def _function_name(node: exp.Expr) -> str:
    """As PostgreSQL spells it (sqlglot's class names differ: GROUP_CONCAT is string_agg)."""
    return node.sql(dialect="postgres").split("(")[0].lower()


def _unsupported_in(tree: exp.Select) -> Unsupported | None:
    """Constructs whose merged answer could differ from one PostgreSQL's."""
    for node in tree.walk():
        if node is tree:
            continue
        if isinstance(node, exp.Select | exp.Subquery | exp.SetOperation | exp.CTE):
            return Unsupported(
                "subqueries and CTEs in a query over distributed tables are not supported",
                "run the inner query on its own, or give the shard key so one shard answers",
            )
        if isinstance(node, exp.Window):
            return Unsupported(
                "window functions over a distributed table are not supported "
                "(each shard sees only its own rows)",
                "give the shard key so one shard answers, or compute it in the application",
            )
        if isinstance(node, exp.Rollup | exp.Cube | exp.GroupingSets):
            return Unsupported(
                "ROLLUP/CUBE/GROUPING SETS over a distributed table are not supported",
                "run one GROUP BY per grouping",
            )
        if isinstance(node, exp.AggFunc | exp.Anonymous):
            name = _function_name(node)
            if isinstance(node, exp.AggFunc) and _agg_of(node) is None:
                return Unsupported(
                    f"the aggregate {name}() over a distributed table is not supported (only "
                    "count, sum, min, max, avg, bool_and, bool_or and every are merged)",
                    "give the shard key so one shard answers, or aggregate in the application",
                )
            if isinstance(node, exp.Anonymous) and name in _ANON_AGGREGATES:
                return Unsupported(
                    f"the aggregate {name}() over a distributed table is not supported (only "
                    "count, sum, min, max, avg, bool_and, bool_or and every are merged)",
                    "give the shard key so one shard answers, or aggregate in the application",
                )
            if _agg_of(node) is not None and node.find(exp.Distinct):
                return Unsupported(
                    f"{name}(DISTINCT …) over a distributed table is not supported "
                    "(a value may be on several shards)",
                    "give the shard key so one shard answers, or use GROUP BY and count rows",
                )
        if isinstance(node, exp.WithinGroup):
            return Unsupported(
                f"the ordered-set aggregate {_function_name(node.this)}(…) WITHIN GROUP over "
                "a distributed table is not supported",
                "give the shard key so one shard answers",
            )
    distinct = tree.args.get("distinct")
    if isinstance(distinct, exp.Distinct) and distinct.args.get("on") is not None:
        return Unsupported(
            "SELECT DISTINCT ON over a distributed table is not supported",
            "use GROUP BY, or give the shard key",
        )
    return None


def check_colocated(tree: exp.Select, distributed: Mapping[str, tuple[str, str]]) -> str | None:
    """None when all distributed tables of the query are joined on equal keys, else why not."""
    if len(distributed) < 2:
        return None
    linked: set[frozenset[str]] = set()
    for join in tree.args.get("joins") or ():
        kind = (join.args.get("kind") or "").upper()
        side = (join.args.get("side") or "").upper()
        if kind not in ("", "INNER") or side:
            return (
                f"{side or kind} JOIN of distributed tables is not supported; only inner joins "
                "on equal shard keys run on every shard"
            )
    seen = [_alias(f) for f in [tree.args["from_"].this] if tree.args.get("from_")]
    for join in tree.args.get("joins") or ():
        joined = _alias(join.this)
        for column in join.args.get("using") or ():
            name = column.name.lower()
            for earlier in seen:
                if (
                    joined in distributed
                    and earlier in distributed
                    and distributed[joined][1] == name == distributed[earlier][1]
                ):
                    linked.add(frozenset((joined, earlier)))
        seen.append(joined)
    for eq in tree.find_all(exp.EQ):
        a, b = eq.this, eq.expression
        if not (isinstance(a, exp.Column) and isinstance(b, exp.Column)):
            continue
        ta, tb = a.table.lower(), b.table.lower()
        if (
            ta in distributed
            and tb in distributed
            and a.name.lower() == distributed[ta][1]
            and b.name.lower() == distributed[tb][1]
        ):
            linked.add(frozenset((ta, tb)))
    # Connected through key equalities?
    aliases = list(distributed)
    reached = {aliases[0]}
    grew = True
    while grew:
        grew = False
        for pair in linked:
            if pair & reached and not pair <= reached:
                reached |= pair
                grew = True
    if reached != set(aliases):
        return (
            "a join of distributed tables that is not on an equality of their shard keys "
            f"({', '.join(sorted(set(aliases) - reached))} not joined by key) is not supported"
        )
    return None


def _alias(node: exp.Expr) -> str:
    return (node.alias_or_name or "").lower()


def _int_literal(node: exp.Expr | None) -> int | None:
    """The value of LIMIT/OFFSET: a plain integer, or None when absent."""
    if node is None:
        return None
    value = node.args.get("expression") if isinstance(node, exp.Limit | exp.Offset) else node
    if isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit():
        return int(value.this)
    raise ValueError(value.sql(dialect="postgres") if value is not None else "?")


def plan_scatter(tree: exp.Select) -> ScatterPlan | Unsupported:
    """How to run ``tree`` on every shard and merge the answers."""
    problem = _unsupported_in(tree)
    if problem is not None:
        return problem
    try:
        limit = _int_literal(tree.args.get("limit"))
        offset = _int_literal(tree.args.get("offset")) or 0
    except ValueError as e:
        return Unsupported(
            f"LIMIT/OFFSET {e} in a query over distributed tables is not supported "
            "(the proxy needs the number before it asks the shards)",
            "use a constant LIMIT/OFFSET, or give the shard key",
        )
    aggregated = tree.args.get("group") is not None or any(
        _agg_of(n) is not None for e in tree.expressions for n in e.walk()
    )
    distinct = tree.args.get("distinct") is not None
    if aggregated:
        return _grouped(tree, limit, offset, distinct)
    return _plain(tree, limit, offset, distinct)


def _projection(tree: exp.Select, e: exp.Expr) -> exp.Expr:
    """ORDER BY/GROUP BY item ``e`` as an expression: positions and aliases resolved."""
    if isinstance(e, exp.Literal) and not e.is_string and e.this.isdigit():
        i = int(e.this) - 1
        if 0 <= i < len(tree.expressions) and not isinstance(tree.expressions[i], exp.Star):
            return _unaliased(tree.expressions[i])
        raise LookupError(e.this)
    if isinstance(e, exp.Column) and not e.table:
        for item in tree.expressions:
            if isinstance(item, exp.Alias) and item.alias.lower() == e.name.lower():
                return _unaliased(item)
    return e


def _unaliased(item: exp.Expr) -> exp.Expr:
    inner = item.this if isinstance(item, exp.Alias) else item
    assert isinstance(inner, exp.Expr)
    return inner


def _plain(
    tree: exp.Select, limit: int | None, offset: int, distinct: bool
) -> ScatterPlan | Unsupported:
    shard = tree.copy()
    keys: list[SortKey] = []
    hidden: list[exp.Expr] = []
    for i, o in enumerate((tree.args.get("order") or exp.Order()).expressions):
        try:
            expr = _projection(tree, o.this)
        except LookupError:
            return Unsupported(
                "ORDER BY a column position after * over distributed tables is not supported",
                "order by the column's name",
            )
        desc = bool(o.args.get("desc"))
        nulls_first = o.args.get("nulls_first")
        keys.append(SortKey(i, desc, desc if nulls_first is None else bool(nulls_first)))
        hidden.append(exp.alias_(expr.copy(), f"pgshard_sort_{i}"))
    shard.set("expressions", [*shard.expressions, *hidden])
    shard.set("offset", None)
    if limit is not None:
        shard.set("limit", exp.Limit(expression=exp.Literal.number(limit + offset)))
    return ScatterPlan(
        shard_sql=shard.sql(dialect="postgres"),
        hidden=len(hidden),
        order_by=tuple(keys),
        limit=limit,
        offset=offset if limit is not None or offset else 0,
        distinct=distinct,
    )


def _grouped(
    tree: exp.Select, limit: int | None, offset: int, distinct: bool
) -> ScatterPlan | Unsupported:
    try:
        groups = (
            [_projection(tree, g) for g in tree.args["group"].expressions]
            if tree.args.get("group")
            else []
        )
    except LookupError:
        return Unsupported("GROUP BY a column position after * is not supported", "group by name")
    # Every GROUP BY expression is a shard column (selected or not): groups merge by them.
    shard_items: list[exp.Expr] = []
    group_at: dict[str, int] = {}
    for g in groups:
        group_at.setdefault(g.sql(dialect="postgres"), len(group_at))
        if len(shard_items) < len(group_at):
            shard_items.append(g.copy())
    columns: list[OutputColumn] = []

    def add(node: exp.Expr) -> OutputColumn | Unsupported:
        agg = _agg_of(node)
        if agg is None:
            at = group_at.get(node.sql(dialect="postgres"))
            if at is None:
                return Unsupported(
                    f"the expression {node.sql(dialect='postgres')} in a grouped query over "
                    "distributed tables is not supported (only GROUP BY columns and plain "
                    "aggregates are merged)",
                    "select the aggregates and GROUP BY columns alone; compute the rest in "
                    "the application",
                )
            return OutputColumn(None, at)
        source = len(shard_items)
        if agg is Agg.AVG:
            shard_items.extend(_avg_parts(node))
        else:
            shard_items.append(node.copy())
        return OutputColumn(agg, source)

    for item in tree.expressions:
        if isinstance(item, exp.Star):
            return Unsupported("SELECT * with GROUP BY is not supported here", "name the columns")
        found = add(item.this if isinstance(item, exp.Alias) else item)
        if isinstance(found, Unsupported):
            return found
        columns.append(found)
    having_columns: list[OutputColumn] = []
    having = tree.args.get("having")
    having_expr: exp.Expr | None = None
    if having is not None:
        problems: list[Unsupported] = []

        def placeholder(node: exp.Expr) -> exp.Expr:
            if _agg_of(node) is None and not (
                isinstance(node, exp.Column) and node.sql(dialect="postgres") in group_at
            ):
                return node
            found = add(node)
            if isinstance(found, Unsupported):
                problems.append(found)
                return node
            having_columns.append(found)
            return exp.Placeholder(this=str(len(having_columns) - 1))

        having_expr = having.this.transform(placeholder)
        odd = next((n for n in having_expr.walk() if not isinstance(n, HAVING_NODES)), None)
        if problems:
            return problems[0]
        if odd is not None:
            return Unsupported(
                f"HAVING with {odd.sql(dialect='postgres')} over distributed tables is not "
                "supported (only comparisons, AND/OR/NOT, arithmetic and constants over "
                "aggregates and GROUP BY columns are evaluated by the proxy)",
                "filter in the application, or give the shard key",
            )
    keys: list[SortKey] = []
    for o in (tree.args.get("order") or exp.Order()).expressions:
        try:
            wanted = _projection(tree, o.this).sql(dialect="postgres")
        except LookupError:
            return Unsupported("ORDER BY a column position after *", "order by name")
        at = next(
            (
                i
                for i, item in enumerate(tree.expressions)
                if (item.this if isinstance(item, exp.Alias) else item).sql(dialect="postgres")
                == wanted
            ),
            None,
        )
        if at is None:
            return Unsupported(
                "ORDER BY an expression that is not in the select list of a grouped query "
                "over distributed tables is not supported",
                "add it to the select list",
            )
        desc = bool(o.args.get("desc"))
        nulls_first = o.args.get("nulls_first")
        keys.append(SortKey(at, desc, desc if nulls_first is None else bool(nulls_first)))
    shard = tree.copy()
    shard.set("expressions", shard_items)
    shard.set("group", exp.Group(expressions=[g.copy() for g in groups]) if groups else None)
    for arg in ("having", "order", "limit", "offset", "distinct"):
        shard.set(arg, None)
    return ScatterPlan(
        shard_sql=shard.sql(dialect="postgres"),
        order_by=tuple(keys),
        limit=limit,
        offset=offset,
        distinct=distinct,
        grouping=Grouping(
            tuple(columns),
            having_expr,
            tuple(having_columns),
            tuple(range(len(group_at))),
            tuple(_output_name(item) for item in tree.expressions),
        ),
    )
