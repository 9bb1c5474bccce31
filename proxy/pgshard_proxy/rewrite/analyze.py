"""From statement text to a cacheable :class:`Analysis` (or a refusal).

Tokenises the whole text once, splits it into statements, recognises utility
statements without sqlglot, parses the rest with sqlglot from the same tokens,
runs :data:`.rules.RULES` and splices their edits into the original text.
Independent of the transaction: :mod:`.rewriter` caches the result by text and
fills it per transaction. No I/O.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Set

from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from . import catalog as catalog_mod
from . import rules, scope, template, tokens
from . import view as view_mod
from .errors import CatalogNeed, NotDeterministic


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The deterministic form of a text, independent of the transaction."""

    template: template.Template
    needs_catalog: tuple[CatalogNeed, ...]
    parameters: int
    """The highest ``$n`` the text itself uses."""


_PREFIX = "SELECT "

log = logging.getLogger(__name__)


DefaultCache = dict[str, "tuple[template.Piece, ...] | NotDeterministic"]
"""Analyses of column default expressions, valid for one catalog version."""


def analyze(
    sql: str,
    catalog: catalog_mod.Catalog | None,
    safe_functions: Set[str] = frozenset(),
    default_cache: DefaultCache | None = None,
) -> Analysis:
    """Raises :class:`NotDeterministic` when some statement of ``sql`` must be refused.

    ``default_cache`` (kept by the caller per catalog version) saves re-parsing the
    same column defaults for every INSERT."""
    analyzer = _Analyzer(catalog, safe_functions, {} if default_cache is None else default_cache)
    try:
        statements, edits, needs = analyzer.run(sql, defaults_mode=False)
        pieces = template.splice(sql, 0, len(sql), edits)
    except NotDeterministic:
        raise
    except Exception as e:
        # A bug or an input no rule foresaw: refuse rather than replicate something
        # unanalysed (a wrong follower is worse than a refused statement).
        log.exception("rewriter failed on %r", sql)
        raise NotDeterministic(
            "a statement the rewriter failed to analyse",
            -1,
            f"{type(e).__name__}: {e}; run it outside statement mode and report it",
        ) from e
    top = max((s.max_parameter() for s in statements), default=0)
    return Analysis(template.build(pieces), tuple(needs), top)


@dataclasses.dataclass
class _Analyzer:
    catalog: catalog_mod.Catalog | None
    safe_functions: Set[str]
    default_cache: DefaultCache

    def run(
        self, sql: str, defaults_mode: bool
    ) -> tuple[list[tokens.Statement], list[template.Edit], list[CatalogNeed]]:
        try:
            toks = tokens.tokenize(sql)
        except TokenError as e:
            raise NotDeterministic(
                "text the SQL tokenizer cannot read", -1, f"{e}; check quoting and dollar quotes"
            ) from e
        statements = tokens.split(sql, toks)
        edits: list[template.Edit] = []
        needs: list[CatalogNeed] = []
        for stmt in statements:
            if not defaults_mode and tokens.is_utility(stmt):
                continue
            edits.extend(self._statement(stmt, needs, defaults_mode))
        return statements, edits, needs

    def _statement(
        self, stmt: tokens.Statement, needs: list[CatalogNeed], defaults_mode: bool
    ) -> list[template.Edit]:
        try:
            trees = tokens.DIALECT.parser().parse(list(stmt.tokens), stmt.sql)
        except ParseError as e:
            raise NotDeterministic(
                f"a statement the SQL parser cannot read ({stmt.first_word} …)",
                stmt.start,
                f"{_first_line(e)}; statement mode only replicates statements it can "
                "analyse: rewrite it, or use WAL replication for this cluster",
            ) from e
        edits: list[template.Edit] = []
        for tree in trees:
            if tree is None:
                continue
            chosen = self._rules_for(tree, stmt)
            view = view_mod.View(
                stmt=stmt,
                tree=tree,
                catalog=self.catalog,
                safe_functions=self.safe_functions,
                read_only=False if defaults_mode else scope.is_read_only(tree),
                needs=needs,
                analyze_default=self.default,
            )
            for rule in chosen:
                edits.extend(rule(view))
        return edits

    def _rules_for(self, tree: exp.Expr, stmt: tokens.Statement) -> tuple[view_mod.Rule, ...]:
        if isinstance(tree, exp.Copy):
            raise NotDeterministic(
                "COPY",
                stmt.start,
                "its rows do not pass through the rewriter; use INSERT statements",
            )
        if isinstance(tree, exp.Create) and isinstance(tree.expression, exp.Query):
            return rules.RULES  # CREATE TABLE … AS SELECT writes rows
        if isinstance(tree, (exp.Query, exp.Insert, exp.Update, exp.Delete, exp.Merge)):
            return rules.RULES
        if stmt.first_word in tokens.DDL_WORDS:
            # Definitions store their expressions rather than evaluate them: pass through
            # byte-identical (a DEFAULT now() in CREATE TABLE must stay now()).
            return rules.DDL_RULES
        raise NotDeterministic(
            f"a {stmt.first_word} statement",
            stmt.start,
            "the rewriter does not know whether it writes deterministically; "
            "run it outside statement mode",
        )

    def default(self, expression: str) -> tuple[template.Piece, ...]:
        """Rewrite a column default as if evaluated once (for :mod:`.defaults`)."""
        found = self.default_cache.get(expression)
        if found is None:
            try:
                found = self._default(expression)
            except NotDeterministic as e:
                found = e
            self.default_cache[expression] = found
        if isinstance(found, NotDeterministic):
            raise found
        return found

    def _default(self, expression: str) -> tuple[template.Piece, ...]:
        sql = _PREFIX + expression
        _, edits, needs = self.run(sql, defaults_mode=True)
        if needs:
            raise NotDeterministic(needs[0].construct, -1, needs[0].reason)
        pieces = template.splice(sql, len(_PREFIX), len(sql), edits)
        return pieces


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
