"""SQLSTATE codes the proxy itself raises, and the ErrorResponse builder.

Errors that come from PostgreSQL are forwarded untouched; these are for the
proxy's own answers (authentication, protocol violations, routing failures).
Called by the codec (ProtocolViolation), the auth exchange and the session.
"""

from __future__ import annotations

import enum
import struct


class SqlState(enum.Enum):
    """The codes the proxy answers with (PostgreSQL's meanings, Appendix A)."""

    PROTOCOL_VIOLATION = "08P01"
    CONNECTION_FAILURE = "08006"
    INVALID_AUTHORIZATION = "28000"
    INVALID_PASSWORD = "28P01"
    FEATURE_NOT_SUPPORTED = "0A000"
    TRANSACTION_RESOLUTION_UNKNOWN = "08007"
    CANNOT_CONNECT_NOW = "57P03"
    TOO_MANY_CONNECTIONS = "53300"
    INVALID_PARAMETER_VALUE = "22023"
    QUERY_CANCELED = "57014"
    IN_FAILED_SQL_TRANSACTION = "25P02"


class Severity(enum.Enum):
    ERROR = "ERROR"
    FATAL = "FATAL"
    WARNING = "WARNING"


def _fields(
    severity: Severity, code: SqlState | str, message: str, detail: str | None, hint: str | None
) -> bytes:
    sqlstate = code.value if isinstance(code, SqlState) else code
    parts = [
        b"S" + severity.value.encode() + b"\0",
        b"V" + severity.value.encode() + b"\0",
        b"C" + sqlstate.encode() + b"\0",
        b"M" + message.encode() + b"\0",
    ]
    if detail:
        parts.append(b"D" + detail.encode() + b"\0")
    if hint:
        parts.append(b"H" + hint.encode() + b"\0")
    parts.append(b"\0")
    return b"".join(parts)


def error_response(
    code: SqlState | str,
    message: str,
    *,
    hint: str | None = None,
    detail: str | None = None,
    severity: Severity = Severity.ERROR,
) -> bytes:
    """An encoded ErrorResponse ('E') message."""
    body = _fields(severity, code, message, detail, hint)
    return b"E" + struct.pack("!I", len(body) + 4) + body


def notice_response(code: str, message: str, *, detail: str | None = None) -> bytes:
    """An encoded NoticeResponse ('N') message of severity WARNING."""
    body = _fields(Severity.WARNING, code, message, detail, None)
    return b"N" + struct.pack("!I", len(body) + 4) + body


def parse_error_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body, keyed by their one-letter code."""
    out: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode(errors="replace")
    return out
