"""Where in a statement an expression is evaluated: once, per row, or only for the client.

A volatile call evaluated exactly once (a VALUES row of an INSERT, a SELECT
without FROM) can be replaced by one literal; evaluated once per scanned row
(``UPDATE … SET x = random()``) it cannot, because one literal would give every
row the same value. Used by :mod:`.rules`.
"""

from __future__ import annotations

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


def evaluation(node: exp.Expr, read_only: bool) -> Evaluation:
    child, parent = node, node.parent
    while parent is not None:
        key = child.arg_key
        if isinstance(parent, exp.Returning):
            return Evaluation.RESULT_ONLY
        scanning = (
            isinstance(parent, exp.Select) and parent.args.get("from_") is not None
        ) or isinstance(parent, (exp.Update, exp.Delete, exp.Merge, exp.OnConflict))
        if scanning and key not in _ONCE_KEYS:
            return Evaluation.RESULT_ONLY if read_only else Evaluation.PER_ROW
        child, parent = parent, parent.parent
    return Evaluation.ONCE
