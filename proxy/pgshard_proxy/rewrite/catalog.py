"""What the rewriter needs to know about the primary's schema, as a lookup protocol.

The caller (the proxy, or ``pgshard rewrite --catalog-dsn``) fills a
:class:`StaticCatalog` from the primary with :mod:`.catalog_pg`; unit tests build
one by hand. The core never performs I/O: it only calls these lookups.
Table and function names are the lower-cased, unqualified names (the proxy's
``search_path`` is ``public``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Protocol


class Volatility(enum.Enum):
    """pg_proc.provolatile."""

    IMMUTABLE = "i"
    STABLE = "s"
    VOLATILE = "v"


class Identity(enum.Enum):
    """pg_attribute.attidentity."""

    NONE = ""
    ALWAYS = "a"
    BY_DEFAULT = "d"


@dataclasses.dataclass(frozen=True)
class FunctionInfo:
    """The most volatile overload of a function name, and whether it ships with PostgreSQL."""

    volatility: Volatility
    builtin: bool


@dataclasses.dataclass(frozen=True)
class ColumnInfo:
    """One column in table order; ``default`` is ``pg_get_expr(adbin)`` (identity columns
    get ``nextval('<their sequence>'::regclass)``)."""

    name: str
    default: str | None = None
    identity: Identity = Identity.NONE


@dataclasses.dataclass(frozen=True)
class TableInfo:
    """Columns in attnum order, the column sets of unique indexes over NOT NULL columns,
    and the functions its triggers call."""

    columns: tuple[ColumnInfo, ...]
    unique_keys: tuple[frozenset[str], ...] = ()
    # Number of unique constraints/indexes of any kind (ON CONFLICT arbiters).
    unique_constraints: int = 0
    # Functions of the table's user triggers (pg_trigger, not internal): each server runs
    # them again when it replays a write.
    trigger_functions: tuple[str, ...] = ()

    def column(self, name: str) -> ColumnInfo | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None


class Catalog(Protocol):
    """Lookups the rewriter performs; ``None`` means "not in the catalog". Implementations
    must be hashable (identity is fine): analyses are cached per catalog and version."""

    @property
    def version(self) -> int:
        """Bumped by the caller whenever the schema changes; part of the analysis cache key."""
        ...

    def table(self, name: str) -> TableInfo | None: ...

    def function(self, name: str) -> FunctionInfo | None: ...


@dataclasses.dataclass(frozen=True, eq=False)
class StaticCatalog:
    """A catalog snapshot held in memory (what :mod:`.catalog_pg` builds). Compared and
    hashed by identity: the rewriter's cache keys hold the snapshot itself."""

    tables: Mapping[str, TableInfo] = dataclasses.field(default_factory=dict)
    functions: Mapping[str, FunctionInfo] = dataclasses.field(default_factory=dict)
    version: int = 0

    def table(self, name: str) -> TableInfo | None:
        return self.tables.get(name)

    def function(self, name: str) -> FunctionInfo | None:
        return self.functions.get(name)
