"""Where a shard key's row lives: PostgreSQL's own extended hashes, in Python.

A key's shard is the hash PostgreSQL's hash partitioning computes for it with seed
0 (``hashint8extended``, ``hashtextextended``, ``uuid_hash_extended``: Bob
Jenkins' lookup3 in ``src/common/hashfn.c``), reduced to the topology's 32-bit
space by keeping its low 32 bits, and looked up in ``shards[].hashRange``
(``[lo, hi)``). Because it is PostgreSQL's function, every shard can check in SQL
which of its rows belong to it (:func:`hash32_sql`). A contract module: the
proxy's router and the control plane's placement check (``pgshard local
check-placement``) must agree on it. No well-kept Python library
ships these functions; tests/integration/test_placement_hash.py proves this code
equal to a real server's for thousands of values of each type.

Integers of every width hash alike: PostgreSQL hashes an ``int2``/``int4`` as the
``int4`` value and folds an ``int8`` so that values in ``int4`` range hash as
``int4`` does (so a key compared across integer types finds its shard). Text hashes
its UTF-8 bytes (deterministic collations only: PostgreSQL's own rule).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence

from . import topology

_M32 = 0xFFFFFFFF


class KeyType(enum.Enum):
    """Shard key types, by the hash function PostgreSQL uses for them."""

    INTEGER = "integer"
    TEXT = "text"
    UUID = "uuid"

    @classmethod
    def of(cls, pg_type: str) -> KeyType:
        """From a column's type name (``format_type``/``information_schema``)."""
        name = pg_type.split("(")[0].strip().lower()
        found = _TYPES.get(name)
        if found is None:
            raise ValueError(
                f"a shard key of type {pg_type} is not supported; use an integer "
                "(smallint/integer/bigint), text/varchar or uuid column"
            )
        return found


_TYPES = {
    **dict.fromkeys(
        ("smallint", "int2", "integer", "int", "int4", "bigint", "int8"), KeyType.INTEGER
    ),
    **dict.fromkeys(("text", "character varying", "varchar"), KeyType.TEXT),
    "uuid": KeyType.UUID,
}


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


_A, _B, _C = 0, 1, 2
_MIX = ((_A, _C, _B, 4), (_B, _A, _C, 6), (_C, _B, _A, 8),
        (_A, _C, _B, 16), (_B, _A, _C, 19), (_C, _B, _A, 4))  # fmt: skip
"""lookup3's mix: for (x, y, z, k): x -= y; x ^= rot(y, k); y += z."""
_FINAL = ((_C, _B, 14), (_A, _C, 11), (_B, _A, 25), (_C, _B, 16),
          (_A, _C, 4), (_B, _A, 14), (_C, _B, 24))  # fmt: skip
"""lookup3's final: for (x, y, k): x ^= y; x -= rot(y, k)."""


def _mix(v: list[int]) -> None:
    for x, y, z, k in _MIX:
        v[x] = ((v[x] - v[y]) & _M32) ^ _rot(v[y], k)
        v[y] = (v[y] + v[z]) & _M32


def _final(v: list[int]) -> int:
    """lookup3's final mix; the 64-bit result ``b << 32 | c`` as PostgreSQL's int8."""
    for x, y, k in _FINAL:
        v[x] = ((v[x] ^ v[y]) - _rot(v[y], k)) & _M32
    h = (v[_B] << 32) | v[_C]
    return h - (1 << 64) if h >= 1 << 63 else h


def hash_uint32(k: int) -> int:
    """``hash_uint32_extended(k, 0)``."""
    init = (0x9E3779B9 + 4 + 3923095) & _M32
    return _final([(init + (k & _M32)) & _M32, init, init])


def hash_bytes(data: bytes) -> int:
    """``hash_any_extended(data, len, 0)`` on a little-endian machine."""
    n = len(data)
    init = (0x9E3779B9 + n + 3923095) & _M32
    v = [init, init, init]
    pos = 0
    while n - pos >= 12:
        for i in range(3):
            v[i] = (v[i] + int.from_bytes(data[pos + 4 * i : pos + 4 * i + 4], "little")) & _M32
        _mix(v)
        pos += 12
    tail = data[pos:]
    # The last 11 bytes: a and b take theirs as little-endian words; c's lowest byte
    # is reserved (for the length, in lookup3's terms), so its bytes start at bit 8.
    v[_A] = (v[_A] + int.from_bytes(tail[0:4], "little")) & _M32
    v[_B] = (v[_B] + int.from_bytes(tail[4:8], "little")) & _M32
    v[_C] = (v[_C] + (int.from_bytes(tail[8:11], "little") << 8)) & _M32
    return _final(v)


def hash_integer(value: int) -> int:
    """``hashint8extended(value, 0)``, equal to ``hashint4extended``/``hashint2extended``
    for values of their range."""
    if not -(1 << 63) <= value < 1 << 63:
        raise ValueError(f"{value} is out of range for a bigint shard key")
    lo, hi = value & _M32, (value >> 32) & _M32
    lo ^= hi if value >= 0 else (~hi & _M32)
    return hash_uint32(lo)


def hash_text(value: str) -> int:
    """``hashtextextended(value, 0)`` (a deterministic collation; UTF-8 database)."""
    return hash_bytes(value.encode())


def hash_uuid(value: uuid.UUID | str) -> int:
    """``uuid_hash_extended(value, 0)``."""
    return hash_bytes((value if isinstance(value, uuid.UUID) else uuid.UUID(value)).bytes)


def hash_key(value: object, key_type: KeyType) -> int:
    """The extended hash of a key given as a Python value or its text form."""
    match key_type:
        case KeyType.INTEGER:
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError(f"{value!r} is not an integer shard key")
            return hash_integer(int(value))
        case KeyType.TEXT:
            if not isinstance(value, str):
                raise ValueError(f"{value!r} is not a text shard key")
            return hash_text(value)
        case KeyType.UUID:
            if not isinstance(value, uuid.UUID | str):
                raise ValueError(f"{value!r} is not a uuid shard key")
            return hash_uuid(value)


def reduce(h: int) -> int:
    """The 64-bit hash's place in the topology's ``[0, 2**32)`` space: its low 32 bits."""
    return h & _M32


def shard_of(hash32: int, shards: Sequence[topology.Shard]) -> int:
    """The index of the shard whose ``hashRange`` holds ``hash32``."""
    for s in shards:
        lo, hi = s.hash_range
        if lo <= hash32 < hi:
            return s.index
    raise LookupError(f"no shard's hashRange holds {hash32}: the topology does not cover it")


_SQL_FUNCTIONS = {
    KeyType.INTEGER: "hashint8extended",
    KeyType.TEXT: "hashtextextended",
    KeyType.UUID: "uuid_hash_extended",
}


def hash32_sql(column_sql: str, key_type: KeyType) -> str:
    """SQL computing :func:`reduce` of the key's hash on a shard: ``column_sql`` is a
    quoted column reference."""
    cast = {KeyType.INTEGER: "int8", KeyType.TEXT: "text", KeyType.UUID: "uuid"}[key_type]
    return f"({_SQL_FUNCTIONS[key_type]}(({column_sql})::{cast}, 0) & 4294967295)"
