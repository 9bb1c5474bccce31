"""The per-transaction facts a rewritten statement is pinned to.

Built by the caller at the start of each transaction in statement mode (the
transaction timestamp it also writes to the statement log) and passed to
:meth:`pgshard_proxy.rewrite.rewriter.Rewriter.rewrite` for every statement.
"""

from __future__ import annotations

import dataclasses
import datetime
import zoneinfo
from collections.abc import Set

from . import catalog as catalog_mod


class ContextError(ValueError):
    """The context cannot be used (naive timestamp, unknown time zone)."""


@dataclasses.dataclass(frozen=True)
class RewriteContext:
    """Values every rewritten statement of one transaction shares."""

    timestamp: datetime.datetime
    """The transaction timestamp (``now()``); must be timezone-aware."""
    time_zone: str = "UTC"
    """The session's ``TimeZone``; the applier runs the statement with the same setting."""
    seed: int = 0
    """Source of ``random()``/``gen_random_uuid()`` literals; vary it per statement
    (the proxy uses the statement log's sequence number)."""
    catalog: catalog_mod.Catalog | None = None
    """The primary's catalog; ``None`` reports decisions needing it instead of making them."""
    safe_functions: Set[str] = frozenset()
    """Lower-cased names of non-immutable user functions configured as safe to replay."""
    statement_timestamp: datetime.datetime | None = None
    """``statement_timestamp()``/``clock_timestamp()``; the transaction timestamp if unset."""

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is None:
            raise ContextError(
                f"timestamp {self.timestamp.isoformat()} has no time zone; give an offset"
            )
        try:
            zoneinfo.ZoneInfo(self.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
            raise ContextError(
                f"unknown time zone {self.time_zone!r}; use an IANA name like 'Europe/Paris'"
            ) from e

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    @property
    def local_time(self) -> datetime.datetime:
        """The transaction timestamp in the pinned time zone."""
        return self.timestamp.astimezone(self.zone)

    @property
    def local_statement_time(self) -> datetime.datetime:
        return (self.statement_timestamp or self.timestamp).astimezone(self.zone)
