"""Merging the shards' answers to a scatter read into one PostgreSQL's answer (pure).

Driven by a :class:`~.scatter.ScatterPlan`; the executor feeds each shard's rows
(decoded values, one tuple per row, hidden sort columns included) as they arrive
and sends what :meth:`RowMerge.ready` returns to the client, so rows flow while
shards still send:

- :class:`RowMerge` (plain rows): a k-way merge of the per-shard ordered streams;
  it holds at most what the shards sent ahead of the slowest one (shards times one
  batch), then DISTINCT (a set of the rows seen: grows with distinct rows) and
  LIMIT/OFFSET, which ends the read early;
- :class:`GroupMerge` (aggregates): combines the partial rows per group, so every
  group is in memory until the last shard finished (unavoidable), then HAVING,
  ORDER BY, DISTINCT, LIMIT/OFFSET.

Where a merge must buffer (DISTINCT, aggregates) it holds at most ``HOLD_LIMIT``
rows, then raises :class:`TooLarge` (the read fails with SQLSTATE 54000).

Comparisons follow PostgreSQL's defaults: NULLs sort last ascending and first
descending unless ``NULLS FIRST/LAST`` says otherwise; text compares by code point,
which is the order of the clusters' ``C.UTF-8`` collation.
"""

from __future__ import annotations

import collections
import dataclasses
import decimal
import functools
from collections.abc import Callable, Sequence
from typing import Any

from sqlglot import exp

from . import scatter

Row = tuple[Any, ...]


@dataclasses.dataclass(frozen=True, order=False)
class Cell:
    """A value compared by its decoded form, sent as the shard's bytes (min/max, groups)."""

    value: Any
    raw: bytes

    def __lt__(self, other: Cell) -> bool:
        return bool(self.value < other.value)

    def __gt__(self, other: Cell) -> bool:
        return bool(self.value > other.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cell) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


NUMERIC_MIN_SIG_DIGITS = 16
NUMERIC_MAX_DISPLAY_SCALE = 1000


def _compare(a: Row, b: Row, keys: Sequence[scatter.SortKey], base: int) -> int:
    for k in keys:
        va, vb = a[base + k.column], b[base + k.column]
        if va is None and vb is None:
            continue
        if va is None:
            return -1 if k.nulls_first else 1
        if vb is None:
            return 1 if k.nulls_first else -1
        c = int(va > vb) - int(va < vb)
        if c:
            return -c if k.descending else c
    return 0


HOLD_LIMIT = 1_000_000
"""Rows a merge may hold where it must buffer (DISTINCT's rows seen, an aggregate's
partial rows): beyond it the read fails with :class:`TooLarge` instead of growing the
proxy's memory with the result."""


class TooLarge(Exception):
    """A merge would hold more than its limit; the message says what and what to do."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(
            f"this scatter read must hold more than {limit} {what} in the proxy "
            "(pgshard-proxy merges them in memory)"
        )


class _Cut:
    """DISTINCT, OFFSET and LIMIT over the merged stream."""

    def __init__(
        self, plan: scatter.ScatterPlan, width: Callable[[Row], Row], limit: int = HOLD_LIMIT
    ) -> None:
        self.plan = plan
        self.visible = width
        self.limit = limit
        self.skipped = 0
        self.sent = 0
        self.seen: set[Row] | None = set() if plan.distinct else None

    @property
    def done(self) -> bool:
        return self.plan.limit is not None and self.sent >= self.plan.limit

    def take(self, rows: Sequence[Row]) -> list[Row]:
        out: list[Row] = []
        for r in rows:
            if self.done:
                break
            row = self.visible(r)
            if self.seen is not None:
                if row in self.seen:
                    continue
                if len(self.seen) >= self.limit:
                    raise TooLarge("distinct rows", self.limit)
                self.seen.add(row)
            if self.skipped < self.plan.offset:
                self.skipped += 1
                continue
            out.append(row)
            self.sent += 1
        return out


class RowMerge:
    """Plain rows from ``shards`` streams: merge-sorted when the plan orders them."""

    def __init__(self, plan: scatter.ScatterPlan, shards: int, limit: int = HOLD_LIMIT) -> None:
        self.plan = plan
        self.buffers: list[collections.deque[Row]] = [collections.deque() for _ in range(shards)]
        self.open = set(range(shards))
        self._cut = _Cut(plan, self._visible, limit)

    def _visible(self, row: Row) -> Row:
        return row[: len(row) - self.plan.hidden] if self.plan.hidden else row

    @property
    def done(self) -> bool:
        """Nothing more is needed (LIMIT reached): the shards' reads may be ended."""
        return self._cut.done

    def feed(self, shard: int, rows: Sequence[Row]) -> None:
        self.buffers[shard].extend(rows)

    def finish(self, shard: int) -> None:
        self.open.discard(shard)

    def ready(self) -> list[Row]:
        """Rows that can go to the client now, in order."""
        if not self.plan.order_by:
            rows = [r for b in self.buffers for r in b]
            for b in self.buffers:
                b.clear()
            return self._cut.take(rows)
        out: list[Row] = []
        while not self._cut.done:
            heads = [i for i, b in enumerate(self.buffers) if b]
            if not heads or any(not self.buffers[i] for i in self.open):
                break  # an open shard might still send a smaller row
            best = heads[0]
            for i in heads[1:]:
                first, other = self.buffers[i][0], self.buffers[best][0]
                if _compare(first, other, self.plan.order_by, len(first) - self.plan.hidden) < 0:
                    best = i
            out.extend(self._cut.take([self.buffers[best].popleft()]))
        return out


# -- aggregates ------------------------------------------------------------------------


def _digits_info(x: decimal.Decimal) -> tuple[int, int]:
    """PostgreSQL's numeric (NBASE 10000) weight and first digit of ``x``."""
    if x == 0:
        return 0, 0
    weight = abs(x).adjusted() // 4
    first = int(abs(x).scaleb(-4 * weight).to_integral_value(rounding=decimal.ROUND_FLOOR))
    return weight, first


def _dscale(x: decimal.Decimal) -> int:
    exponent = x.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def numeric_div(a: decimal.Decimal, b: decimal.Decimal) -> decimal.Decimal:
    """``a / b`` as PostgreSQL's numeric division gives it (``select_div_scale``: at
    least 16 significant digits, no fewer decimals than either input; rounded half away
    from zero)."""
    w1, f1 = _digits_info(a)
    w2, f2 = _digits_info(b)
    qweight = w1 - w2 - (1 if f1 <= f2 else 0)
    rscale = NUMERIC_MIN_SIG_DIGITS - qweight * 4
    rscale = max(rscale, _dscale(a), _dscale(b), 0)
    rscale = min(rscale, NUMERIC_MAX_DISPLAY_SCALE)
    sa, sb = _dscale(a), _dscale(b)
    # Exact: a / b * 10**rscale == num / den, with rscale >= sa.
    num = int(a.scaleb(sa)) * 10 ** (rscale - sa + sb)
    den = int(b.scaleb(sb))
    q, r = divmod(abs(num), abs(den))
    if 2 * r >= abs(den):
        q += 1
    if (num < 0) != (den < 0):
        q = -q
    return decimal.Decimal(q).scaleb(-rscale)


def _combine(agg: scatter.Agg, values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    match agg:
        case scatter.Agg.COUNT:
            return sum(present)
        case scatter.Agg.SUM:
            return sum(present[1:], present[0]) if present else None
        case scatter.Agg.MIN:
            return min(present) if present else None
        case scatter.Agg.MAX:
            return max(present) if present else None
        case scatter.Agg.BOOL_AND:
            return all(present) if present else None
        case scatter.Agg.BOOL_OR:
            return any(present) if present else None
    raise AssertionError(agg)


def _avg(sums: list[Any], counts: list[int]) -> Any:
    n = sum(counts)
    present = [s for s in sums if s is not None]
    if not n or not present:
        return None
    total = sum(present[1:], present[0])
    if isinstance(total, float):
        return total / n
    return numeric_div(decimal.Decimal(total), decimal.Decimal(n))


class GroupMerge:
    """Combine partial aggregate rows (one per group and shard) into final rows."""

    def __init__(self, plan: scatter.ScatterPlan, limit: int = HOLD_LIMIT) -> None:
        assert plan.grouping is not None
        self.plan = plan
        self.grouping = plan.grouping
        self.groups: dict[Row, list[Row]] = {}
        self.limit = limit
        self.held = 0

    def feed(self, rows: Sequence[Row]) -> None:
        self.held += len(rows)
        if self.held > self.limit:
            raise TooLarge("partial aggregate rows (groups times shards)", self.limit)
        for r in rows:
            self.groups.setdefault(tuple(r[i] for i in self.grouping.keys), []).append(r)

    def _value(self, col: scatter.OutputColumn, parts: list[Row]) -> Any:
        if col.agg is None:
            return parts[0][col.source]
        if col.agg is scatter.Agg.AVG:
            return _avg([p[col.source] for p in parts], [p[col.source + 1] for p in parts])
        return _combine(col.agg, [p[col.source] for p in parts])

    def result(self) -> list[Row]:
        """The final rows, once every shard finished."""
        rows: list[Row] = []
        for parts in self.groups.values():
            if self.grouping.having is not None:
                args = [_plain(self._value(c, parts)) for c in self.grouping.having_columns]
                if evaluate(self.grouping.having, args) is not True:
                    continue
            rows.append(tuple(self._value(c, parts) for c in self.grouping.columns))
        if self.plan.order_by:
            order = self.plan.order_by
            rows.sort(key=functools.cmp_to_key(functools.partial(_compare, keys=order, base=0)))
        return _Cut(self.plan, lambda r: r).take(rows)


# -- HAVING ------------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    return v.value if isinstance(v, Cell) else v


def _number(text: str) -> int | decimal.Decimal:
    return int(text) if text.isdigit() else decimal.Decimal(text)


def _arith(op: type[exp.Expr], a: Any, b: Any) -> Any:
    if isinstance(a, float) or isinstance(b, float):
        a, b = float(a), float(b)
    elif isinstance(a, decimal.Decimal) or isinstance(b, decimal.Decimal):
        a, b = decimal.Decimal(a), decimal.Decimal(b)
    if op is exp.Add:
        return a + b
    if op is exp.Sub:
        return a - b
    if op is exp.Mul:
        return a * b
    if b == 0:
        raise ZeroDivisionError("division by zero in HAVING")
    if isinstance(a, int) and isinstance(b, int):
        q = abs(a) // abs(b)  # PostgreSQL's integer division truncates toward zero
        return q if (a < 0) == (b < 0) else -q
    if isinstance(a, decimal.Decimal):
        return numeric_div(a, b)
    return a / b


_COMPARE: dict[type[exp.Expr], Callable[[Any, Any], bool]] = {
    exp.EQ: lambda a, b: bool(a == b),
    exp.NEQ: lambda a, b: bool(a != b),
    exp.GT: lambda a, b: bool(a > b),
    exp.GTE: lambda a, b: bool(a >= b),
    exp.LT: lambda a, b: bool(a < b),
    exp.LTE: lambda a, b: bool(a <= b),
}


def evaluate(node: exp.Expr, args: Sequence[Any]) -> Any:
    """SQL semantics (NULL propagates; three-valued AND/OR) over :data:`scatter.HAVING_NODES`."""
    if isinstance(node, exp.Placeholder):
        return args[int(str(node.this))]
    if isinstance(node, exp.Literal):
        return node.this if node.is_string else _number(node.this)
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Paren):
        return evaluate(node.this, args)
    if isinstance(node, exp.Not):
        v = evaluate(node.this, args)
        return None if v is None else not v
    if isinstance(node, exp.Neg):
        v = evaluate(node.this, args)
        return None if v is None else -v
    if isinstance(node, exp.Is):
        return evaluate(node.this, args) is None
    a, b = evaluate(node.this, args), evaluate(node.expression, args)
    if isinstance(node, exp.And):
        if a is False or b is False:
            return False
        return None if a is None or b is None else True
    if isinstance(node, exp.Or):
        if a is True or b is True:
            return True
        return None if a is None or b is None else False
    if a is None or b is None:
        return None
    compare = _COMPARE.get(type(node))
    if compare is not None:
        if isinstance(a, float) != isinstance(b, float):
            a, b = float(a), float(b)
        return compare(a, b)
    return _arith(type(node), a, b)
