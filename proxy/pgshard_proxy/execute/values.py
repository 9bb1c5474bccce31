"""Column values on the wire <-> Python, for what the scatter merge must look at (pure).

The merge compares sort keys and combines aggregates; everything else travels as
the shards' bytes. So only the types a sort key or an aggregate may have are
decoded here, in text and binary format, and the merged aggregates encoded back
exactly as PostgreSQL would send them (numeric text with its scale, binary
numeric in base-10000 digits). A type not listed is :class:`UnsupportedType`:
the executor refuses the statement before the client saw any row.
"""

from __future__ import annotations

import datetime
import decimal
import struct
import uuid
from collections.abc import Callable

BOOL, INT8, INT2, INT4, TEXT, OID, FLOAT4, FLOAT8 = 16, 20, 21, 23, 25, 26, 700, 701
BPCHAR, VARCHAR, DATE, TIMESTAMP, TIMESTAMPTZ, NUMERIC, UUID, NAME = (
    1042, 1043, 1082, 1114, 1184, 1700, 2950, 19,
)  # fmt: skip

_EPOCH_DATE = datetime.date(2000, 1, 1)
_EPOCH = datetime.datetime(2000, 1, 1)
_EPOCH_TZ = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NUMERIC_POS, _NUMERIC_NEG, _NUMERIC_NAN = 0x0000, 0x4000, 0xC000


class UnsupportedType(ValueError):
    """A sort key or aggregate of a type the proxy does not decode."""


def _text_float(s: str) -> float:
    # float() reads PostgreSQL's Infinity/-Infinity/NaN as well.
    return float(s)


def _text_timestamptz(s: str) -> datetime.datetime:
    # PostgreSQL prints +HH or +HH:MM offsets; Python wants +HH:MM.
    if len(s) > 3 and s[-3] in "+-" and s[-2:].isdigit():
        s += ":00"
    return datetime.datetime.fromisoformat(s)


_TEXT: dict[int, Callable[[str], object]] = {
    BOOL: lambda s: s == "t",
    INT2: int, INT4: int, INT8: int, OID: int,
    FLOAT4: _text_float, FLOAT8: _text_float,
    NUMERIC: decimal.Decimal,
    TEXT: str, VARCHAR: str, BPCHAR: str, NAME: str,
    DATE: datetime.date.fromisoformat,
    TIMESTAMP: datetime.datetime.fromisoformat,
    TIMESTAMPTZ: _text_timestamptz,
    UUID: uuid.UUID,
}  # fmt: skip


def _binary_numeric(b: bytes) -> decimal.Decimal:
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", b)
    if sign == _NUMERIC_NAN:
        return decimal.Decimal("NaN")
    digits = struct.unpack_from(f"!{ndigits}H", b, 8)
    value = 0
    for d in digits:
        value = value * 10000 + d
    # value * 10000 ** (weight - ndigits + 1), shown with dscale decimals
    exp4 = 4 * (weight - ndigits + 1)
    result = decimal.Decimal(value).scaleb(exp4)
    result = result.quantize(decimal.Decimal(1).scaleb(-dscale)) if dscale or exp4 < 0 else result
    return -result if sign == _NUMERIC_NEG else result


_BINARY: dict[int, Callable[[bytes], object]] = {
    BOOL: lambda b: b == b"\x01",
    INT2: lambda b: struct.unpack("!h", b)[0],
    INT4: lambda b: struct.unpack("!i", b)[0],
    INT8: lambda b: struct.unpack("!q", b)[0],
    OID: lambda b: struct.unpack("!I", b)[0],
    FLOAT4: lambda b: struct.unpack("!f", b)[0],
    FLOAT8: lambda b: struct.unpack("!d", b)[0],
    NUMERIC: _binary_numeric,
    TEXT: bytes.decode, VARCHAR: bytes.decode, BPCHAR: bytes.decode, NAME: bytes.decode,
    DATE: lambda b: _EPOCH_DATE + datetime.timedelta(days=struct.unpack("!i", b)[0]),
    TIMESTAMP: lambda b: _EPOCH + datetime.timedelta(microseconds=struct.unpack("!q", b)[0]),
    TIMESTAMPTZ: lambda b: _EPOCH_TZ + datetime.timedelta(microseconds=struct.unpack("!q", b)[0]),
    UUID: lambda b: uuid.UUID(bytes=b),
}  # fmt: skip


def decoder(oid: int, fmt: int) -> Callable[[bytes | None], object]:
    """A decoder for one column; raises :class:`UnsupportedType` for other types."""
    if fmt:
        binary = _BINARY.get(oid)
        if binary is None:
            raise UnsupportedType(f"type oid {oid}")
        return lambda raw: None if raw is None else binary(raw)
    text = _TEXT.get(oid)
    if text is None:
        raise UnsupportedType(f"type oid {oid}")
    return lambda raw: None if raw is None else text(raw.decode())


def _numeric_text(d: decimal.Decimal) -> str:
    return "NaN" if d.is_nan() else format(d, "f")


def _numeric_binary(d: decimal.Decimal) -> bytes:
    if d.is_nan():
        return struct.pack("!hhHh", 0, 0, _NUMERIC_NAN, 0)
    sign = _NUMERIC_NEG if d.is_signed() and d != 0 else _NUMERIC_POS
    t = d.copy_abs().as_tuple()
    exponent = int(t.exponent)
    dscale = max(0, -exponent)
    digits = "".join(map(str, t.digits)).lstrip("0")
    if not digits:
        return struct.pack("!hhHh", 0, 0, sign, dscale)
    # Align to base-10000 groups: pad so the decimal point falls on a group boundary.
    int_len = len(digits) + exponent  # digits before the point (may be <= 0)
    lead = (-int_len) % 4
    text = "0" * lead + digits
    weight = (int_len + lead) // 4 - 1
    text += "0" * (-len(text) % 4)
    groups = [int(text[i : i + 4]) for i in range(0, len(text), 4)]
    while groups and groups[-1] == 0:
        groups.pop()
    return struct.pack(f"!hhHh{len(groups)}H", len(groups), weight, sign, dscale, *groups)


def _float_text(x: float) -> str:
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "Infinity" if x > 0 else "-Infinity"
    r = repr(x)
    return r[:-2] if r.endswith(".0") else r


def encode(oid: int, fmt: int, value: object) -> bytes | None:
    """A merged value (count/sum/avg/min/max/bool_*) as the client asked for it."""
    if value is None:
        return None
    if oid == BOOL:
        return (b"\x01" if value else b"\x00") if fmt else (b"t" if value else b"f")
    if oid == NUMERIC:
        d = value if isinstance(value, decimal.Decimal) else decimal.Decimal(str(value))
        return _numeric_binary(d) if fmt else _numeric_text(d).encode()
    if oid == FLOAT8:  # float4 text needs float4's shortest form: not computed here
        if not isinstance(value, int | float):
            raise UnsupportedType(f"type oid {oid}")
        return struct.pack("!d", value) if fmt else _float_text(float(value)).encode()
    if oid in (INT2, INT4, INT8):
        if not isinstance(value, int):
            raise UnsupportedType(f"type oid {oid}")
        if fmt:
            return struct.pack({INT2: "!h", INT4: "!i", INT8: "!q"}[oid], value)
        return str(value).encode()
    if fmt:
        binary = _ENCODE_BINARY.get(oid)
        if binary is not None:
            return binary(value)
    raise UnsupportedType(f"type oid {oid}")


def _str_bytes(value: object) -> bytes:
    if not isinstance(value, str):
        raise UnsupportedType("text")
    return value.encode()


def _micros(value: object, epoch: datetime.datetime) -> bytes:
    if not isinstance(value, datetime.datetime):
        raise UnsupportedType("timestamp")
    delta = value - epoch
    return struct.pack("!q", (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _days(value: object) -> bytes:
    if not isinstance(value, datetime.date):
        raise UnsupportedType("date")
    return struct.pack("!i", (value - _EPOCH_DATE).days)


def _uuid_bytes(value: object) -> bytes:
    if not isinstance(value, uuid.UUID):
        raise UnsupportedType("uuid")
    return value.bytes


_ENCODE_BINARY: dict[int, Callable[[object], bytes]] = {
    TEXT: _str_bytes, VARCHAR: _str_bytes, BPCHAR: _str_bytes, NAME: _str_bytes,
    DATE: _days,
    TIMESTAMP: lambda v: _micros(v, _EPOCH),
    TIMESTAMPTZ: lambda v: _micros(v, _EPOCH_TZ),
    UUID: _uuid_bytes,
}  # fmt: skip
"""Binary forms of the types whose min/max or group values pass through the merge."""
