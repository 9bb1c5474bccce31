"""The rewriter's entry points: :class:`Rewriter` with its analysis cache.

The proxy keeps one Rewriter per process and calls :meth:`Rewriter.rewrite` for
each write of the simple protocol, :meth:`Rewriter.prepare` at each Parse and
:meth:`Prepared.bind_values` at each Bind of the extended protocol. Results are
either a deterministic statement or a :class:`NotDeterministic` refusal
(returned, not raised, so the caller decides how to report it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

from . import analyze as analyze_mod
from . import context as context_mod
from . import template as template_mod
from .errors import CatalogNeed, NotDeterministic


@dataclasses.dataclass(frozen=True, slots=True)
class Rewritten:
    """A statement made deterministic for one transaction.

    When ``captures`` is empty, ``text()`` is the statement to execute on the primary
    and to log. Otherwise run ``capture_query`` on the primary first (same transaction),
    and pass its row (text values, NULL as None) to ``text()``.
    """

    original: str
    analysis: analyze_mod.Analysis
    times: template_mod.TimeTexts
    seed: int

    @property
    def template(self) -> template_mod.Template:
        return self.analysis.template

    @property
    def needs_catalog(self) -> tuple[CatalogNeed, ...]:
        """Decisions not made for lack of a catalog: the text is not known to be
        deterministic while this is not empty."""
        return self.analysis.needs_catalog

    @property
    def changed(self) -> bool:
        return self.template.changed

    @property
    def captures(self) -> tuple[template_mod.Capture, ...]:
        return self.template.captures

    @property
    def capture_query(self) -> str | None:
        return capture_query(self.template.captures)

    def text(self, captured: Sequence[str | None] = ()) -> str:
        template = self.analysis.template
        if not template.values:
            return self.original
        texts = template_mod.value_texts(template, self.times, self.seed, captured)
        return template_mod.render(template, texts)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A statement of the extended protocol, rewritten once at Parse.

    ``text`` uses the client's parameters ``$1…$parameters`` unchanged and extra
    parameters ``$parameters+1…`` (typed by casts in the text, so their type OIDs in
    Parse may stay 0); :meth:`bind_values` gives their values at each Bind.
    """

    text: str
    parameters: int
    extra: int
    template: template_mod.Template
    needs_catalog: tuple[CatalogNeed, ...]

    @property
    def captures(self) -> tuple[template_mod.Capture, ...]:
        return self.template.captures

    @property
    def capture_query(self) -> str | None:
        return capture_query(self.template.captures)

    def bind_values(
        self, ctx: context_mod.RewriteContext, captured: Sequence[str | None] = ()
    ) -> list[str | None]:
        """Text-format values of the extra parameters for one execution."""
        times = template_mod.TimeTexts.of(ctx)
        return template_mod.value_texts(self.template, times, ctx.seed, captured)


def capture_query(captures: Sequence[template_mod.Capture]) -> str | None:
    """One query evaluating every capture, left to right, as text."""
    if not captures:
        return None
    return "SELECT " + ", ".join(f"({c.sql})::text" for c in captures)


class Rewriter:
    """Rewrites statements, caching analyses by (text, catalog version, safe functions).

    ``cache_size=0`` disables the statement cache (column-default analyses stay cached).
    """

    def __init__(self, cache_size: int = 4096) -> None:
        self._cache: dict[Hashable, analyze_mod.Analysis | NotDeterministic] = {}
        # Column-default analyses for the latest (catalog, version, safe functions).
        self._defaults_key: Hashable = None
        self._defaults: analyze_mod.DefaultCache = {}
        self._cache_size = cache_size
        self._times_key: Hashable = None
        self._times: template_mod.TimeTexts | None = None

    def analyze(
        self, sql: str, ctx: context_mod.RewriteContext
    ) -> analyze_mod.Analysis | NotDeterministic:
        catalog = ctx.catalog
        # The catalog itself (not its id(), which a new snapshot could reuse) and its version.
        key = (sql, catalog, catalog.version if catalog is not None else 0, ctx.safe_functions)
        found = self._cache.get(key)
        if found is None:
            if key[1:] != self._defaults_key:
                self._defaults_key, self._defaults = key[1:], {}
            try:
                found = analyze_mod.analyze(sql, catalog, ctx.safe_functions, self._defaults)
            except NotDeterministic as refusal:
                found = refusal
            if self._cache_size > 0:
                if len(self._cache) >= self._cache_size:
                    # Drop the oldest entry (dicts keep insertion order).
                    del self._cache[next(iter(self._cache))]
                self._cache[key] = found
        return found

    def rewrite(self, sql: str, ctx: context_mod.RewriteContext) -> Rewritten | NotDeterministic:
        """The simple-protocol form: literals in the text."""
        found = self.analyze(sql, ctx)
        if isinstance(found, NotDeterministic):
            return found
        return Rewritten(sql, found, self._time_texts(ctx), ctx.seed)

    def prepare(
        self, sql: str, param_types: Sequence[int], ctx: context_mod.RewriteContext
    ) -> Prepared | NotDeterministic:
        """The extended-protocol form: extra parameters instead of literals."""
        found = self.analyze(sql, ctx)
        if isinstance(found, NotDeterministic):
            return found
        parameters = max(len(param_types), found.parameters)
        text = (
            template_mod.render_parameters(found.template, parameters + 1)
            if found.template.changed
            else sql
        )
        return Prepared(
            text, parameters, len(found.template.values), found.template, found.needs_catalog
        )

    def _time_texts(self, ctx: context_mod.RewriteContext) -> template_mod.TimeTexts:
        # Formatting the timestamp costs more than the cached rewrite itself: do it
        # once per transaction.
        key = (ctx.timestamp, ctx.time_zone, ctx.statement_timestamp)
        if self._times is None or key != self._times_key:
            self._times = template_mod.TimeTexts.of(ctx)
            self._times_key = key
        return self._times
