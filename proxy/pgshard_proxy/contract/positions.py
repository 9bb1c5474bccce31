"""Replication positions shared by the proxy and the control plane.

In ``wal`` mode a position is a PostgreSQL LSN, written ``X/Y`` (two hex halves
of a 64-bit byte offset); in ``statement`` mode it is the statement log's
sequence number. Both are carried as plain ``int`` so comparison is cheap on the
proxy's hot path; this module converts at the edges (SQL results, JSON).
"""

from __future__ import annotations

from typing import NewType

Position = NewType("Position", int)

ZERO = Position(0)


class BadPosition(ValueError):
    """A value that is neither an LSN ``X/Y`` nor a non-negative integer."""


def parse_lsn(text: str) -> Position:
    """``'16/B374D848'`` -> byte offset. Accepts what ``pg_lsn`` prints."""
    hi, sep, lo = text.strip().partition("/")
    if not sep or not hi or not lo:
        raise BadPosition(f"not an LSN (expected X/Y in hex): {text!r}")
    try:
        high, low = int(hi, 16), int(lo, 16)
    except ValueError:
        raise BadPosition(f"not an LSN (expected X/Y in hex): {text!r}") from None
    if not (0 <= high < 1 << 32 and 0 <= low < 1 << 32):
        raise BadPosition(f"LSN out of range: {text!r}")
    return Position(high << 32 | low)


def format_lsn(pos: int) -> str:
    """Byte offset -> ``'X/Y'`` as PostgreSQL prints it (upper-case hex)."""
    if not 0 <= pos < 1 << 64:
        raise BadPosition(f"LSN out of range: {pos}")
    return f"{pos >> 32:X}/{pos & 0xFFFFFFFF:X}"


def parse(value: object) -> Position | None:
    """A position from JSON or SQL: ``None``, an ``int``, or an LSN string."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadPosition(f"not a position: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise BadPosition(f"negative position: {value}")
        return Position(value)
    if isinstance(value, str):
        return parse_lsn(value)
    raise BadPosition(f"not a position: {value!r}")
