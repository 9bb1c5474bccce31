"""Which built-in functions are not immutable, and what the rewriter does about each.

Read by :mod:`.rules`. Names are lower-cased as written in the statement (the
token text), so the table does not depend on how sqlglot models a function.
Functions absent from this table are looked up in the catalog (pg_proc).
"""

from __future__ import annotations

import dataclasses
import enum


class Strategy(enum.Enum):
    """What happens to a call."""

    TRANSACTION_TIME = "transaction time: one typed literal per transaction"
    ONCE = "a literal per evaluation; refused where evaluated per row"
    CAPTURE_ONCE = "captured on the primary per evaluation; refused where evaluated per row"
    CAPTURE_STABLE = "captured on the primary once per statement"


class TimeKind(enum.Enum):
    """The type of a transaction-time value, and how its text is formatted."""

    TIMESTAMPTZ = "timestamptz"
    TIMESTAMP = "timestamp"
    DATE = "date"
    TIMETZ = "timetz"
    TIME = "time"


class OnceKind(enum.Enum):
    """Volatile values the proxy chooses itself (no need to ask the primary)."""

    RANDOM = "float8"
    UUID = "uuid"
    STATEMENT_TIME = "timestamptz"
    TIMEOFDAY = "text"


@dataclasses.dataclass(frozen=True)
class Known:
    """A function of the catalogue; ``type_sql`` is the SQL type of its value."""

    strategy: Strategy
    type_sql: str
    time: TimeKind | None = None
    once: OnceKind | None = None


def _time(kind: TimeKind) -> Known:
    return Known(Strategy.TRANSACTION_TIME, kind.value, time=kind)


def _once(kind: OnceKind) -> Known:
    return Known(Strategy.ONCE, kind.value, once=kind)


# Called with parentheses: name -> treatment.
FUNCTIONS: dict[str, Known] = {
    "now": _time(TimeKind.TIMESTAMPTZ),
    "transaction_timestamp": _time(TimeKind.TIMESTAMPTZ),
    "statement_timestamp": _once(OnceKind.STATEMENT_TIME),
    "clock_timestamp": _once(OnceKind.STATEMENT_TIME),
    "timeofday": _once(OnceKind.TIMEOFDAY),
    "random": _once(OnceKind.RANDOM),
    "gen_random_uuid": _once(OnceKind.UUID),
    "uuid_generate_v4": _once(OnceKind.UUID),
    "nextval": Known(Strategy.CAPTURE_ONCE, "bigint"),
    "setval": Known(Strategy.CAPTURE_ONCE, "bigint"),
    "currval": Known(Strategy.CAPTURE_STABLE, "bigint"),
    "lastval": Known(Strategy.CAPTURE_STABLE, "bigint"),
    "txid_current": Known(Strategy.CAPTURE_STABLE, "bigint"),
    "txid_current_if_assigned": Known(Strategy.CAPTURE_STABLE, "bigint"),
    "pg_current_xact_id": Known(Strategy.CAPTURE_STABLE, "xid8"),
    "pg_current_xact_id_if_assigned": Known(Strategy.CAPTURE_STABLE, "xid8"),
    "pg_backend_pid": Known(Strategy.CAPTURE_STABLE, "integer"),
    "inet_client_addr": Known(Strategy.CAPTURE_STABLE, "inet"),
    "inet_client_port": Known(Strategy.CAPTURE_STABLE, "integer"),
    "inet_server_addr": Known(Strategy.CAPTURE_STABLE, "inet"),
    "inet_server_port": Known(Strategy.CAPTURE_STABLE, "integer"),
    "version": Known(Strategy.CAPTURE_STABLE, "text"),
    "current_setting": Known(Strategy.CAPTURE_STABLE, "text"),
    "current_database": Known(Strategy.CAPTURE_STABLE, "name"),
    "current_schema": Known(Strategy.CAPTURE_STABLE, "name"),
    "pg_postmaster_start_time": Known(Strategy.CAPTURE_STABLE, "timestamptz"),
}

# SQL keywords that are function calls without parentheses (some take a precision).
KEYWORDS: dict[str, Known] = {
    "current_timestamp": _time(TimeKind.TIMESTAMPTZ),
    "localtimestamp": _time(TimeKind.TIMESTAMP),
    "current_date": _time(TimeKind.DATE),
    "current_time": _time(TimeKind.TIMETZ),
    "localtime": _time(TimeKind.TIME),
    "current_user": Known(Strategy.CAPTURE_STABLE, "name"),
    "session_user": Known(Strategy.CAPTURE_STABLE, "name"),
    "user": Known(Strategy.CAPTURE_STABLE, "name"),
    "current_role": Known(Strategy.CAPTURE_STABLE, "name"),
    "current_catalog": Known(Strategy.CAPTURE_STABLE, "name"),
    "current_schema": Known(Strategy.CAPTURE_STABLE, "name"),
}

# Literals that PostgreSQL evaluates when cast to a date/time type.
SPECIAL_TIME_WORDS: frozenset[str] = frozenset({"now", "today", "tomorrow", "yesterday"})

# Type names (first word) that make a string literal a date/time input.
TEMPORAL_TYPE_WORDS: frozenset[str] = frozenset(
    {"timestamp", "timestamptz", "date", "time", "timetz"}
)
