"""Where in a statement an expression is evaluated: once, per row, or only for the client.

A volatile call evaluated exactly once (a VALUES row of an INSERT, a SELECT
without FROM) can be replaced by one literal; evaluated once per scanned row
(``UPDATE … SET x = random()``) it cannot, because one literal would give every
row the same value. Used by :mod:`.rules`.
"""

from __future__ import annotations

import dataclasses
import enum

from sqlglot import exp


class Evaluation(enum.Enum):
    ONCE = "evaluated once"
    PER_ROW = "evaluated once per row"
    RESULT_ONLY = "only reaches the client (RETURNING or a read)"


# Clauses of a scanning statement that are evaluated once, not per row.
_ONCE_KEYS = frozenset({"from_", "with_", "limit", "offset", "using", "this", "tables", "into"})

_DML = (exp.Insert, exp.Update, exp.Delete, exp.Merge)


def is_read_only(root: exp.Expr) -> bool:
    """A plain query: no INTO, no row locks, no data-modifying WITH."""
    if not isinstance(root, exp.Query) or root.args.get("into") is not None:
        return False
    return root.find(*_DML, exp.Lock, exp.Into) is None


@dataclasses.dataclass(frozen=True)
class Where:
    """How often an expression is evaluated; for PER_ROW, the scanning statement and the
    clause (its arg key, e.g. ``expressions`` for an UPDATE's SET list) holding it."""

    evaluation: Evaluation
    scan: exp.Expr | None = None
    clause: str | None = None


def evaluation(node: exp.Expr, read_only: bool) -> Where:
    child, parent = node, node.parent
    while parent is not None:
        key = child.arg_key
        if isinstance(parent, exp.Returning):
            statement = parent.parent
            if statement is not None and statement.parent is None:
                return Where(Evaluation.RESULT_ONLY)
            # RETURNING of a data-modifying WITH feeds the outer statement, row by row.
            return Where(Evaluation.PER_ROW, statement, "returning")
        scanning = (
            isinstance(parent, exp.Select) and parent.args.get("from_") is not None
        ) or isinstance(parent, (exp.Update, exp.Delete, exp.Merge, exp.OnConflict))
        if scanning and key not in _ONCE_KEYS:
            if read_only:
                return Where(Evaluation.RESULT_ONLY)
            return Where(Evaluation.PER_ROW, parent, key)
        child, parent = parent, parent.parent
    return Where(Evaluation.ONCE)


def single_row_update(where: Where) -> tuple[str, set[str]] | None:
    """For an expression in the SET list of a plain ``UPDATE t … WHERE`` (no FROM), the
    target table and its columns the WHERE clause equates to constants: when they hold a
    unique key, the UPDATE touches at most one row and SET is evaluated at most once."""
    scan = where.scan
    if not isinstance(scan, exp.Update) or scan.args.get("from_") is not None:
        return None
    if where.clause != "expressions":
        return None
    target = scan.this
    if not isinstance(target, exp.Table):
        return None
    condition = scan.args.get("where")
    if condition is None:
        return None
    alias = target.alias_or_name.lower()
    top = condition.this
    conds = top.flatten() if isinstance(top, exp.And) else [top]
    pinned: set[str] = set()
    for cond in conds:
        if not isinstance(cond, exp.EQ):
            continue
        for side, other in ((cond.this, cond.expression), (cond.expression, cond.this)):
            if (
                isinstance(side, exp.Column)
                and side.table.lower() in ("", alias)
                and other.find(exp.Column, exp.Query, exp.Func) is None
            ):
                pinned.add(side.name.lower())
    return target.name.lower(), pinned
