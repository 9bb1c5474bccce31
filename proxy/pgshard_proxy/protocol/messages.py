"""Decoded forms of the messages the proxy must understand, and encoders.

Most messages are forwarded as bytes and never decoded. The proxy decodes only
what it acts on: the startup packets, the SQL of Query/Parse, statement and
portal names of Bind/Describe/Close, authentication exchanges, and a few backend
messages (ParameterStatus, BackendKeyData, ReadyForQuery). Encoders build the
messages the proxy originates itself. Pure functions; used by the codec, the
auth exchanges and the server package.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Iterable, Mapping, Sequence

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_V3 = 196608

_INT32 = struct.Struct("!I")
_INT16 = struct.Struct("!H")


class MalformedMessage(ValueError):
    """A message whose body does not match its type (missing terminator, short field)."""


@dataclasses.dataclass(frozen=True)
class Startup:
    params: Mapping[str, str]
    version: int = PROTOCOL_V3

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    @property
    def database(self) -> str:
        return self.params.get("database") or self.user


@dataclasses.dataclass(frozen=True)
class SSLRequest:
    pass


@dataclasses.dataclass(frozen=True)
class GSSENCRequest:
    pass


@dataclasses.dataclass(frozen=True)
class CancelRequest:
    pid: int
    secret: int


class TxStatus(enum.Enum):
    """The transaction status byte of ReadyForQuery."""

    IDLE = ord("I")
    IN_TRANSACTION = ord("T")
    FAILED = ord("E")


TX_STATUS = {s.value: s for s in TxStatus}
"""Status byte -> :class:`TxStatus` (a dict lookup; the Enum constructor costs ~10x more
and runs once per request)."""


def _cstr(body: bytes, pos: int) -> tuple[str, int]:
    end = body.find(b"\0", pos)
    if end < 0:
        raise MalformedMessage("string field without terminating NUL")
    return body[pos:end].decode(errors="replace"), end + 1


def decode_startup(body: bytes, version: int = PROTOCOL_V3) -> Startup:
    """Name/value pairs of a StartupMessage body (after length and version)."""
    params: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        name, pos = _cstr(body, pos)
        value, pos = _cstr(body, pos)
        params[name] = value
    if pos != len(body) - 1:
        raise MalformedMessage("invalid startup packet layout: expected terminator as last byte")
    if "user" not in params:
        raise MalformedMessage("no PostgreSQL user name specified in startup packet")
    return Startup(params=params, version=version)


# --- decoding the SQL-carrying frontend messages (body = message without its 5-byte header)


def query_sql(body: bytes) -> str:
    """The SQL text of a Query message."""
    if not body or body[-1] != 0:
        raise MalformedMessage("Query message without terminating NUL")
    return body[:-1].decode(errors="replace")


def parse_fields(body: bytes) -> tuple[str, str]:
    """``(statement name, SQL)`` of a Parse message."""
    name, pos = _cstr(body, 0)
    sql, _ = _cstr(body, pos)
    return name, sql


def bind_names(body: bytes) -> tuple[str, str]:
    """``(portal, statement)`` of a Bind message."""
    portal, pos = _cstr(body, 0)
    statement, _ = _cstr(body, pos)
    return portal, statement


def execute_portal(body: bytes) -> str:
    """The portal name of an Execute message."""
    portal, _ = _cstr(body, 0)
    return portal


def bind_result_format(body: bytes) -> int:
    """The result format a Bind asks for its first column: 0 text, 1 binary."""
    try:
        _, pos = _cstr(body, 0)
        _, pos = _cstr(body, pos)
        (n,) = _INT16.unpack_from(body, pos)
        pos += 2 + 2 * n
        (n,) = _INT16.unpack_from(body, pos)
        pos += 2
        for _ in range(n):
            (length,) = struct.unpack_from("!i", body, pos)
            pos += 4 + max(length, 0)
        (n,) = _INT16.unpack_from(body, pos)
        return _INT16.unpack_from(body, pos + 2)[0] if n else 0
    except struct.error:
        raise MalformedMessage("Bind message shorter than its counts say") from None


def target(body: bytes) -> tuple[int, str]:
    """``(kind, name)`` of a Describe or Close: kind is ``ord('S')`` or ``ord('P')``."""
    if not body:
        raise MalformedMessage("Describe/Close without a target")
    name, _ = _cstr(body, 1)
    return body[0], name


def decode_parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = _cstr(body, 0)
    value, _ = _cstr(body, pos)
    return name, value


# --- encoders


def _msg(type_: bytes, body: bytes) -> bytes:
    return type_ + _INT32.pack(len(body) + 4) + body


def _z(s: str) -> bytes:
    return s.encode() + b"\0"


def startup_message(params: Mapping[str, str]) -> bytes:
    body = _INT32.pack(PROTOCOL_V3) + b"".join(_z(k) + _z(v) for k, v in params.items()) + b"\0"
    return _INT32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _INT32.pack(8) + _INT32.pack(SSL_REQUEST_CODE)


def cancel_request(pid: int, secret: int) -> bytes:
    return _INT32.pack(16) + _INT32.pack(CANCEL_REQUEST_CODE) + struct.pack("!II", pid, secret)


def auth_ok() -> bytes:
    return _msg(b"R", _INT32.pack(0))


def auth_md5(salt: bytes) -> bytes:
    return _msg(b"R", _INT32.pack(5) + salt)


def auth_sasl(mechanisms: Iterable[str]) -> bytes:
    return _msg(b"R", _INT32.pack(10) + b"".join(_z(m) for m in mechanisms) + b"\0")


def auth_sasl_continue(data: bytes) -> bytes:
    return _msg(b"R", _INT32.pack(11) + data)


def auth_sasl_final(data: bytes) -> bytes:
    return _msg(b"R", _INT32.pack(12) + data)


def parameter_status(name: str, value: str) -> bytes:
    return _msg(b"S", _z(name) + _z(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return _msg(b"K", struct.pack("!II", pid, secret))


def ready_for_query(status: TxStatus) -> bytes:
    return _msg(b"Z", bytes((status.value,)))


def command_complete(tag: str) -> bytes:
    return _msg(b"C", _z(tag))


def parse_complete() -> bytes:
    return _msg(b"1", b"")


def bind_complete() -> bytes:
    return _msg(b"2", b"")


def close_complete() -> bytes:
    return _msg(b"3", b"")


def no_data() -> bytes:
    """The Describe answer for a statement or portal that returns no rows."""
    return _msg(b"n", b"")


def close_portal(name: str) -> bytes:
    return _msg(b"C", b"P" + _z(name))


def no_parameters() -> bytes:
    """ParameterDescription of a statement that takes no parameters."""
    return _msg(b"t", _INT16.pack(0))


def text_row_description(column: str, format_code: int = 0) -> bytes:
    """RowDescription of one text column (format 0 text, 1 binary: the same bytes for text)."""
    # table oid 0, column 0, type text (25), typlen -1, typmod -1, format
    return _msg(
        b"T", _INT16.pack(1) + _z(column) + struct.pack("!IhIhih", 0, 0, 25, -1, -1, format_code)
    )


def text_table(columns: Sequence[str], rows: Sequence[Sequence[str | None]], tag: str) -> bytes:
    """RowDescription (text columns), the DataRows and CommandComplete of a small table."""
    fields = b"".join(_z(c) + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0) for c in columns)
    out = [_msg(b"T", _INT16.pack(len(columns)) + fields)]
    for row in rows:
        cells = [_INT16.pack(len(row))]
        for v in row:
            data = None if v is None else v.encode()
            cells.append(
                struct.pack("!i", -1) if data is None else struct.pack("!i", len(data)) + data
            )
        out.append(_msg(b"D", b"".join(cells)))
    out.append(command_complete(tag))
    return b"".join(out)


def text_data_row(value: str) -> bytes:
    raw = value.encode()
    return _msg(b"D", _INT16.pack(1) + _INT32.pack(len(raw)) + raw)


def text_result(column: str, value: str, tag: str) -> bytes:
    """RowDescription + DataRow + CommandComplete of a one-row, one-text-column result."""
    return text_row_description(column) + text_data_row(value) + command_complete(tag)


def query(sql: str) -> bytes:
    return _msg(b"Q", _z(sql))


def sync() -> bytes:
    return b"S\0\0\0\4"


def password(secret: str) -> bytes:
    return _msg(b"p", _z(secret))


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return _msg(b"p", _z(mechanism) + _INT32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return _msg(b"p", data)


def close_statement(name: str) -> bytes:
    return _msg(b"C", b"S" + _z(name))


def terminate() -> bytes:
    return _msg(b"X", b"")


def decode_sasl_initial(body: bytes) -> tuple[str, bytes]:
    """``(mechanism, client-first-message)`` of a SASLInitialResponse body."""
    mechanism, pos = _cstr(body, 0)
    if len(body) < pos + 4:
        raise MalformedMessage("SASLInitialResponse too short")
    (n,) = _INT32.unpack_from(body, pos)
    data = body[pos + 4 :]
    if n == 0xFFFFFFFF:
        data = b""
    elif n != len(data):
        raise MalformedMessage("SASLInitialResponse length does not match its data")
    return mechanism, data


def decode_password(body: bytes) -> str:
    secret, _ = _cstr(body, 0)
    return secret
