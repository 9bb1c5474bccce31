"""What a rewrite rule sees of one statement: :class:`View`, and small tree helpers.

Built by :mod:`.analyze` for every parsed statement; read by the rules in
:mod:`.rules` and :mod:`.row_order`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Set
from typing import TypeVar

from sqlglot import exp

from . import catalog as catalog_mod
from . import defaults, scope, tokens, volatility
from .errors import CatalogNeed
from .template import Edit

E = TypeVar("E", bound=exp.Expr)


@dataclasses.dataclass(frozen=True)
class View:
    """One statement as the rules see it."""

    stmt: tokens.Statement
    tree: exp.Expr
    catalog: catalog_mod.Catalog | None
    safe_functions: Set[str]
    read_only: bool
    needs: list[CatalogNeed]
    """Accumulates decisions that need the catalog (when ``catalog`` is None or lacks a name)."""
    analyze_default: defaults.DefaultAnalyzer

    def text(self, start: int, end: int) -> str:
        return self.stmt.sql[start:end]

    def need(self, construct: str, position: int, reason: str) -> None:
        self.needs.append(CatalogNeed(construct, position, reason))

    @functools.cached_property
    def nodes(self) -> tuple[exp.Expr, ...]:
        """Every node of the tree, breadth first: walked once, filtered by each rule."""
        return tuple(self.tree.walk())

    def find_all(self, *types: type[E]) -> list[E]:
        """The nodes of these types, like ``tree.find_all`` without walking again."""
        return [n for n in self.nodes if isinstance(n, types)]

    @functools.cached_property
    def catalogue_tokens(self) -> tuple[int, ...]:
        """Indexes of tokens naming a catalogue entry (one scan per statement): bare words,
        and quoted names of functions called (``"now"()`` is ``now()``)."""
        toks = self.stmt.tokens
        return tuple(
            i
            for i, t in enumerate(toks)
            if t.text.lower() in _CATALOGUE_WORDS
            and (tokens.is_unquoted_word(t, _CATALOGUE_WORDS) or tokens.is_quoted_call(toks, i))
        )

    def evaluation(self, node: exp.Expr) -> scope.Evaluation:
        """Like :func:`scope.evaluation`, but an UPDATE pinned to one row by a unique key
        (``UPDATE t SET x = random() WHERE id = 1``) evaluates its SET list once."""
        where = scope.evaluation(node, self.read_only)
        if where.evaluation is scope.Evaluation.PER_ROW and self.one_row(where):
            return scope.Evaluation.ONCE
        return where.evaluation

    def one_row(self, where: scope.Where) -> bool:
        """Whether ``where`` is the SET list of an UPDATE pinned to one row by a unique key
        (without a catalog: noted as needed, and assumed)."""
        single = scope.single_row_update(where)
        if single is None:
            return False
        table, pinned = single
        if self.catalog is None:
            self.need(f"UPDATE of one {table} row", -1, "unique keys are in pg_index")
            return True
        info = self.catalog.table(table)
        return info is not None and any(key <= pinned for key in info.unique_keys)


Rule = Callable[[View], list[Edit]]
"""A rule: edits to splice, or NotDeterministic raised, or catalog needs recorded."""

_CATALOGUE_WORDS = frozenset(volatility.KEYWORDS) | frozenset(volatility.FUNCTIONS)


def position(node: exp.Expr) -> int:
    for n in node.walk():
        start = n.meta.get("start") if isinstance(n, exp.Expr) else None
        if start is not None:
            return int(start)
    return -1


def table_name(t: exp.Expr) -> str | None:
    return t.name.lower() if isinstance(t, exp.Table) and t.name else None
