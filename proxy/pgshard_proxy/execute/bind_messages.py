"""Extended-protocol messages the statement-log writer builds (pure byte work).

A client's write arrives as Parse/Bind of its own text; the writer runs the
rewritten text instead, whose extra parameters (values the rewriter fixed) are
appended to the client's: :func:`bind_with_extra` re-encodes the Bind, the others
build the proxy's own Parse/Describe/Bind/Execute.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ..routing import keyroute

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


def _msg(t: bytes, body: bytes) -> bytes:
    return t + _I32.pack(len(body) + 4) + body


def _z(s: str) -> bytes:
    return s.encode() + b"\x00"


def parse(name: str, sql: str, types: Sequence[int] = ()) -> bytes:
    body = _z(name) + _z(sql) + _I16.pack(len(types)) + b"".join(_I32.pack(t) for t in types)
    return _msg(b"P", body)


def describe_statement(name: str) -> bytes:
    return _msg(b"D", b"S" + _z(name))


def execute(portal: str = "") -> bytes:
    return _msg(b"E", _z(portal) + _I32.pack(0))


def sync() -> bytes:
    return _msg(b"S", b"")


def _values(values: Sequence[bytes | None]) -> bytes:
    out = [_I16.pack(len(values))]
    for v in values:
        out.append(_I32.pack(-1) if v is None else _I32.pack(len(v)) + v)
    return b"".join(out)


def bind(
    portal: str,
    statement: str,
    formats: Sequence[int],
    values: Sequence[bytes | None],
    result_formats: Sequence[int] = (),
) -> bytes:
    body = (
        _z(portal)
        + _z(statement)
        + _I16.pack(len(formats))
        + b"".join(_I16.pack(f) for f in formats)
        + _values(values)
        + _I16.pack(len(result_formats))
        + b"".join(_I16.pack(f) for f in result_formats)
    )
    return _msg(b"B", body)


def result_formats(bind_body: bytes) -> bytes:
    """The raw result-format tail of a Bind body (count and codes)."""
    values = keyroute.parse_bind(bind_body)
    pos = bind_body.index(0) + 1
    pos = bind_body.index(0, pos) + 1
    pos += 2 + 2 * len(values.formats) + 2
    for v in values.values:
        pos += 4 + (len(v) if v is not None else 0)
    return bind_body[pos:]


def bind_with_extra(bind_body: bytes, statement: str, extra: Sequence[str | None]) -> bytes:
    """The client's Bind (body ``bind_body``) on ``statement``, with ``extra`` text
    values appended after its own parameters."""
    portal = bind_body[: bind_body.index(0)].decode()
    got = keyroute.parse_bind(bind_body)
    formats = [got.format_of(i) for i in range(len(got.values))] + [0] * len(extra)
    values = [*got.values, *(None if e is None else e.encode() for e in extra)]
    body = (
        _z(portal)
        + _z(statement)
        + _I16.pack(len(formats))
        + b"".join(_I16.pack(f) for f in formats)
        + _values(values)
        + result_formats(bind_body)
    )
    return _msg(b"B", body)


def parse_types(parse_body: bytes) -> tuple[int, ...]:
    """The parameter type OIDs a Parse body declares (0: let the server infer)."""
    pos = parse_body.index(0) + 1
    pos = parse_body.index(0, pos) + 1
    (n,) = _I16.unpack_from(parse_body, pos)
    return struct.unpack_from(f"!{n}i", parse_body, pos + 2)
