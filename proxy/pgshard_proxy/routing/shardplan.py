"""Which shards a statement goes to: a pure plan from its text and the distributed tables.

Called for a statement that the classifier did not answer itself (one statement,
simple or extended protocol); cached by text like the classifier's results, so a
prepared statement is planned once and routed at Bind time from its ``$n`` values.
The plan is one of:

- ``HOME``: no distributed table is touched: shard 0, as without sharding;
- ``KEYED``: the key values of a distributed table are known (``WHERE key = 5``,
  ``key = $1``, ``key IN (…)``, ``INSERT … VALUES``, ``UPDATE``/``DELETE`` by key):
  the shards of those values; a read whose keys fall on several shards is merged as a
  scatter over those shards;
- ``SCATTER``: a read of distributed tables without a key: every shard runs
  :attr:`Plan.scatter`'s ``shard_sql`` and the proxy merges (``routing/scatter.py``);
- ``BROADCAST``: DDL, run on every shard's primary;
- ``REFUSE``: SQLSTATE ``0A000`` naming the construct, where one PostgreSQL's answer
  could not be reproduced (never a different answer).

Table names compare case-folded, as unquoted SQL identifiers; a declared
``schema.table`` matches only that qualified name, a declared ``table`` matches
``table`` and ``public.table``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping

import sqlglot
import sqlglot.errors
from sqlglot import exp

from . import classify, scatter

FEATURE_NOT_SUPPORTED = "0A000"


class PlanKind(enum.Enum):
    HOME = "home"
    KEYED = "keyed"
    SCATTER = "scatter"
    BROADCAST = "broadcast"
    REFUSE = "refuse"


@dataclasses.dataclass(frozen=True)
class KeyRef:
    """One shard key value of the statement: a literal, or a ``$n`` parameter."""

    value: int | str | None = None
    """An integer literal as int, a string literal as its text; None with ``param``."""
    param: int | None = None
    """1-based parameter number."""


@dataclasses.dataclass(frozen=True)
class Plan:
    kind: PlanKind
    table: str | None = None
    """KEYED: the distributed table (declared name) whose key values are :attr:`keys`."""
    keys: tuple[KeyRef, ...] = ()
    scatter: scatter.ScatterPlan | None = None
    """Reads of distributed tables (SCATTER, and KEYED reads that may span shards)."""
    refusal: classify.Refusal | None = None
    writes: bool = False
    rows: bool = False
    """KEYED ``INSERT … VALUES``: :attr:`keys` holds one key per row, in row order (rows
    on several shards are split, ``routing/rowsplit.py``)."""
    anywhere: bool = False
    """HOME without any table (transaction control, SET, ``SELECT 1``): it may run on
    whichever shard the session's transaction runs on."""
    constant: bool = False
    """``anywhere``, and a SELECT of constants only (:func:`_constant`): its answer is
    the same in or out of a transaction, so it need not choose the transaction's shard
    (:attr:`scatter` runs it as it is)."""

    @classmethod
    def refuse(cls, construct: str, hint: str) -> Plan:
        return cls(
            PlanKind.REFUSE,
            refusal=classify.Refusal(FEATURE_NOT_SUPPORTED, construct, hint),
        )


HOME = Plan(PlanKind.HOME)
ANYWHERE = Plan(PlanKind.HOME, anywhere=True)
BROADCAST = Plan(PlanKind.BROADCAST, writes=True)

_HINT_KEY = "give the shard key: WHERE <key> = value (or IN (…)) on the distributed table"


def _declared(tables: Iterable[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Lookup names -> (declared name, key)."""
    out: dict[str, tuple[str, str]] = {}
    for name, key in tables:
        n, k = name.lower(), key.lower()
        out[n] = (name, k)
        if "." not in n:
            out[f"public.{n}"] = (name, k)
    return out


def _table_name(t: exp.Table) -> str:
    return f"{t.db}.{t.name}".lower() if t.db else t.name.lower()


class _Scope:
    """The tables of one statement: alias -> (declared name, key) for distributed ones."""

    def __init__(self, tree: exp.Expr, declared: Mapping[str, tuple[str, str]]) -> None:
        self.distributed: dict[str, tuple[str, str]] = {}
        self.home: list[str] = []
        ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
        for t in tree.find_all(exp.Table):
            name = _table_name(t)
            if not t.name or name in ctes:
                continue
            found = declared.get(name)
            if found is None:
                self.home.append(name)
            else:
                self.distributed[(t.alias_or_name or t.name).lower()] = found

    def key_column(self, col: exp.Column) -> str | None:
        """The declared table whose shard key ``col`` is, if it is one."""
        qualifier = col.table.lower()
        for alias, (name, key) in self.distributed.items():
            if col.name.lower() == key and (not qualifier or qualifier == alias):
                if not qualifier and len(self.distributed) > 1:
                    return None  # ambiguous without a qualifier: PostgreSQL would say so
                return name
        return None


def plan(sql: str, tables: Iterable[tuple[str, str]]) -> Plan:
    """The plan of one statement; ``tables`` are the distributed (name, key) pairs."""
    declared = _declared(tables)
    if not declared:
        return HOME
    try:
        trees = sqlglot.parse(sql, dialect="postgres")
    except sqlglot.errors.SqlglotError:
        return _unparsed(sql, declared)
    found = [t for t in trees if t is not None]
    if len(found) != 1:
        return _unparsed(sql, declared)
    p = _plan_tree(found[0], declared)
    if p is ANYWHERE and _constant(found[0]):
        return Plan(PlanKind.HOME, anywhere=True, constant=True, scatter=scatter.ScatterPlan(sql))
    return p


_CONSTANT_NODES: tuple[type[exp.Expr], ...] = (
    exp.Select, exp.Alias, exp.Identifier, exp.Literal, exp.Boolean, exp.Null,
    exp.Placeholder, exp.Parameter, exp.Paren, exp.Neg, exp.Not, exp.And, exp.Or, exp.Is,
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Add, exp.Sub, exp.Mul, exp.Div,
    exp.Mod, exp.DPipe, exp.Cast, exp.DataType,
)  # fmt: skip
_CONSTANT_CASTS = frozenset(
    exp.DataType.Type[t]
    for t in (
        "SMALLINT", "INT", "BIGINT", "DECIMAL", "FLOAT", "DOUBLE", "BOOLEAN", "TEXT",
        "VARCHAR", "CHAR",
    )
)  # fmt: skip


def _constant(tree: exp.Expr) -> bool:
    """A SELECT without FROM of literals, parameters, operators and casts to numbers,
    text and bool: no function (``now()``, ``nextval()``), no cast whose input reads the
    transaction (``'now'::timestamptz``)."""
    if not isinstance(tree, exp.Select):
        return False
    for node in tree.walk():
        if not isinstance(node, _CONSTANT_NODES):
            return False
        if isinstance(node, exp.DataType) and node.this not in _CONSTANT_CASTS:
            return False
        if isinstance(node, exp.Select) and any(
            node.args.get(k) for k in ("from", "where", "group", "having", "into", "locks")
        ):
            return False
    return True


def _unparsed(sql: str, declared: Mapping[str, tuple[str, str]]) -> Plan:
    """sqlglot could not read it (or several statements): HOME unless it names a
    distributed table, then DDL goes everywhere and anything else is refused."""
    words = {w.strip('"();,').lower() for w in sql.split()}
    if not words & set(declared):
        return BROADCAST if classify.classify(sql).kind is classify.Kind.DDL else HOME
    if classify.classify(sql).kind is classify.Kind.DDL:
        return BROADCAST
    return Plan.refuse(
        "this statement on a distributed table cannot be routed (the proxy could not "
        "parse it, or it holds several statements)",
        "send one statement at a time, in plain SQL",
    )


def _plan_tree(tree: exp.Expr, declared: Mapping[str, tuple[str, str]]) -> Plan:
    if isinstance(tree, exp.Create | exp.Alter | exp.Drop | exp.Comment | exp.TruncateTable):
        return _ddl(tree, declared)
    if isinstance(tree, exp.Command):
        kind = classify.classify(tree.sql(dialect="postgres")).kind
        return BROADCAST if kind is classify.Kind.DDL else HOME
    scope = _Scope(tree, declared)
    if not scope.distributed:
        return HOME if scope.home else ANYWHERE
    if isinstance(tree, exp.Insert):
        return _insert(tree, scope)
    if isinstance(tree, exp.Update | exp.Delete):
        return _update_delete(tree, scope)
    if isinstance(tree, exp.Select):
        return _select(tree, scope)
    return Plan.refuse(
        f"{tree.key.upper()} on a distributed table is not supported",
        "run it per shard, or on a home table",
    )


def _ddl(tree: exp.Expr, declared: Mapping[str, tuple[str, str]]) -> Plan:
    if isinstance(tree, exp.Create) and tree.expression is not None and tree.kind == "TABLE":
        return Plan.refuse(
            "CREATE TABLE … AS on a sharded cluster is not supported",
            "create the table, then INSERT its rows",
        )
    if isinstance(tree, exp.Create) and tree.kind == "TABLE":
        table = tree.find(exp.Table)
        found = declared.get(_table_name(table)) if table is not None else None
        if found is not None:
            return _create_distributed(tree, *found)
    return BROADCAST


def _create_distributed(tree: exp.Create, name: str, key: str) -> Plan:
    """A distributed table's key column must exist and be NOT NULL (rows are placed by it)."""
    schema = tree.this if isinstance(tree.this, exp.Schema) else None
    columns = [c for c in (schema.expressions if schema else []) if isinstance(c, exp.ColumnDef)]
    col = next((c for c in columns if c.name.lower() == key), None)
    if col is None:
        return Plan.refuse(
            f"distributed table {name} needs its shard key column {key}",
            f"add the column {key}, or declare another key for {name}",
        )
    not_null = any(
        isinstance(c.kind, exp.NotNullColumnConstraint | exp.PrimaryKeyColumnConstraint)
        for c in col.constraints
    )
    primary = any(
        isinstance(p, exp.PrimaryKey) and key in {e.name.lower() for e in p.expressions}
        for p in (schema.expressions if schema else [])
    )
    if not (not_null or primary):
        return Plan.refuse(
            f"the shard key {key} of distributed table {name} must be NOT NULL "
            "(each row is placed by its key)",
            f"declare {key} NOT NULL or PRIMARY KEY",
        )
    return BROADCAST


def _key_value(e: exp.Expr) -> KeyRef | None:
    """A literal or ``$n`` (possibly cast); None for anything else."""
    while isinstance(e, exp.Cast | exp.Paren):
        e = e.this
    if isinstance(e, exp.Parameter | exp.Placeholder):
        text = e.name or (e.this.name if isinstance(e.this, exp.Expr) else str(e.this))
        return KeyRef(param=int(text)) if text.isdigit() else None
    if isinstance(e, exp.Neg) and isinstance(e.this, exp.Literal) and not e.this.is_string:
        return KeyRef(value=-int(e.this.this)) if e.this.this.isdigit() else None
    if isinstance(e, exp.Literal):
        if e.is_string:
            return KeyRef(value=e.this)
        return KeyRef(value=int(e.this)) if e.this.isdigit() else None
    return None


def _conjuncts(e: exp.Expr | None) -> list[exp.Expr]:
    if e is None:
        return []
    if isinstance(e, exp.And):
        return [*_conjuncts(e.this), *_conjuncts(e.expression)]
    if isinstance(e, exp.Paren):
        return _conjuncts(e.this)
    return [e]


def _where_keys(where: exp.Expr | None, scope: _Scope) -> tuple[str, tuple[KeyRef, ...]] | None:
    """The first ``key = v`` or ``key IN (v, …)`` in the WHERE's top-level AND chain."""
    for c in _conjuncts(where.this if isinstance(where, exp.Where) else where):
        if isinstance(c, exp.EQ):
            for col, val in ((c.this, c.expression), (c.expression, c.this)):
                if isinstance(col, exp.Column) and (name := scope.key_column(col)):
                    ref = _key_value(val)
                    if ref is not None:
                        return name, (ref,)
        if isinstance(c, exp.In) and isinstance(c.this, exp.Column) and not c.args.get("query"):
            name = scope.key_column(c.this)
            refs = [_key_value(v) for v in c.expressions]
            if name and refs and all(r is not None for r in refs):
                return name, tuple(r for r in refs if r is not None)
    return None


def _insert(tree: exp.Insert, scope: _Scope) -> Plan:
    target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
    if not isinstance(target, exp.Table):
        return Plan.refuse("this INSERT cannot be routed", "name the table")
    found = scope.distributed.get((target.alias_or_name or target.name).lower())
    if found is None or len(scope.distributed) > 1:
        return Plan.refuse(
            "INSERT … SELECT involving a distributed table is not supported",
            "insert the rows with VALUES (one INSERT per shard key or several rows)",
        )
    name, key = found
    values = tree.expression
    columns = (
        [c.name.lower() for c in tree.this.expressions] if isinstance(tree.this, exp.Schema) else []
    )
    if not isinstance(values, exp.Values):
        return Plan.refuse(
            f"INSERT into distributed table {name} from a query is not supported",
            "insert the rows with VALUES",
        )
    if key not in columns:
        return Plan.refuse(
            f"INSERT into distributed table {name} must name its shard key column {key}",
            f"list the columns: INSERT INTO {name} ({key}, …) VALUES (…)",
        )
    at = columns.index(key)
    refs: list[KeyRef] = []
    for row in values.expressions:
        items = row.expressions if isinstance(row, exp.Tuple) else [row]
        if at >= len(items):
            return HOME  # PostgreSQL reports the mismatch itself
        if isinstance(items[at], exp.Null):
            return Plan.refuse(
                f"the shard key {key} of distributed table {name} cannot be NULL",
                "give every row a key",
            )
        ref = _key_value(items[at])
        if ref is None:
            return Plan.refuse(
                f"the shard key {key} of an INSERT into {name} must be a constant or a "
                "parameter, not an expression",
                "compute the key in the application, or pass it as $n",
            )
        refs.append(ref)
    return Plan(PlanKind.KEYED, table=name, keys=tuple(refs), writes=True, rows=True)


def _update_delete(tree: exp.Update | exp.Delete, scope: _Scope) -> Plan:
    verb = "UPDATE" if isinstance(tree, exp.Update) else "DELETE"
    if len(scope.distributed) > 1 or scope.home:
        return Plan.refuse(
            f"{verb} involving several tables where one is distributed is not supported",
            "write one distributed table at a time, by its key",
        )
    (name, key) = next(iter(scope.distributed.values()))
    if isinstance(tree, exp.Update):
        for assignment in tree.expressions:
            target = assignment.this if isinstance(assignment, exp.EQ) else None
            if isinstance(target, exp.Column) and target.name.lower() == key:
                return Plan.refuse(
                    f"UPDATE of the shard key {key} of distributed table {name} is not "
                    "supported (the row would have to move to another shard)",
                    "DELETE the row and INSERT it with the new key",
                )
    found = _where_keys(tree.args.get("where"), scope)
    if found is None:
        return Plan.refuse(
            f"{verb} on distributed table {name} without its shard key is not supported "
            "(a write must stay on one shard)",
            _HINT_KEY,
        )
    return Plan(PlanKind.KEYED, table=found[0], keys=found[1], writes=True)


def _select(tree: exp.Select, scope: _Scope) -> Plan:
    found = _where_keys(tree.args.get("where"), scope)
    if tree.args.get("locks"):
        if found is None:
            return Plan.refuse(
                "SELECT … FOR UPDATE/SHARE on a distributed table must give its shard key",
                _HINT_KEY,
            )
        return Plan(PlanKind.KEYED, table=found[0], keys=found[1], writes=True)
    if tree.args.get("into") is not None:
        return Plan.refuse("SELECT INTO from a distributed table is not supported", "use INSERT")
    if scope.home:
        return Plan.refuse(
            f"a query joining distributed table(s) with home table(s) ({', '.join(scope.home)}) "
            "is not supported (the home table's rows live on shard 0 only)",
            "query them separately, or distribute the other table by the same key",
        )
    colocated = scatter.check_colocated(tree, scope.distributed)
    if colocated is not None:
        return Plan.refuse(colocated, "join distributed tables on an equality of their keys")
    scattered = scatter.plan_scatter(tree)
    if isinstance(scattered, scatter.Unsupported):
        return Plan.refuse(scattered.construct, scattered.hint)
    if found is not None:
        return Plan(PlanKind.KEYED, table=found[0], keys=found[1], scatter=scattered)
    return Plan(PlanKind.SCATTER, scatter=scattered)
