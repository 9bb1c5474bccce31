"""Deterministic statements for statement-based replication (DESIGN §4, §6).

Pure (no I/O, no proxy session code): give :meth:`Rewriter.rewrite` a statement
and a per-transaction :class:`RewriteContext`; get a :class:`Rewritten` statement
(literals, plus values to capture on the primary) or a :class:`NotDeterministic`
refusal (SQLSTATE 0A000). The extended protocol uses :meth:`Rewriter.prepare`.
``catalog_pg`` fills a :class:`StaticCatalog` from a live server (asyncpg).
"""

from .catalog import ColumnInfo, FunctionInfo, Identity, StaticCatalog, TableInfo, Volatility
from .context import ContextError, RewriteContext
from .errors import CatalogNeed, NotDeterministic
from .rewriter import Prepared, Rewriter, Rewritten

__all__ = [
    "CatalogNeed",
    "ColumnInfo",
    "ContextError",
    "FunctionInfo",
    "Identity",
    "NotDeterministic",
    "Prepared",
    "RewriteContext",
    "Rewriter",
    "Rewritten",
    "StaticCatalog",
    "TableInfo",
    "Volatility",
]
