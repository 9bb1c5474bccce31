"""Refusals of the rewriter: a statement that cannot be made deterministic.

Owned here so the proxy (which will send the refusal to its client as an
ErrorResponse) and the ``pgshard rewrite`` command share one shape. Raised or
returned by :mod:`pgshard_proxy.rewrite.rules` and :mod:`.analyze`.
"""

from __future__ import annotations

import dataclasses

# feature_not_supported: the statement is valid SQL, statement-based replication
# just cannot reproduce it.
SQLSTATE_FEATURE_NOT_SUPPORTED = "0A000"


@dataclasses.dataclass(frozen=True)
class NotDeterministic(Exception):
    """``construct`` makes the statement's effect depend on where/when/in which order it runs.

    ``position`` is the 0-based character offset of the construct in the
    statement text (or -1 when unknown); ``hint`` says what to write instead.
    """

    construct: str
    position: int
    hint: str
    sqlstate: str = SQLSTATE_FEATURE_NOT_SUPPORTED

    def __str__(self) -> str:
        return self.message

    @property
    def message(self) -> str:
        return f"statement-based replication cannot reproduce {self.construct}"


@dataclasses.dataclass(frozen=True)
class CatalogNeed:
    """A decision the rewriter could not make without the catalog of the primary."""

    construct: str
    position: int
    reason: str

    def __str__(self) -> str:
        return f"{self.construct} (at {self.position}): {self.reason}"
