"""The shards a keyed plan goes to, from its literals or its Bind parameters (pure).

Called with a ``shardplan`` plan of kind KEYED when the statement's values are
known: at once for a simple Query, at Bind time for a prepared statement (its
``$n`` values arrive in the Bind, in text or binary format). The key column's type
(``placement.KeyType``) comes from the catalogue; the value is hashed as PostgreSQL
would hash it after the cast to that type.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid
from collections.abc import Sequence

from ..contract import placement, topology
from . import shardplan

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


class BadKey(ValueError):
    """A key value that cannot be placed; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class BindValues:
    """A Bind message's parameters: raw values (None for NULL) and their format codes."""

    values: tuple[bytes | None, ...]
    formats: tuple[int, ...]

    def format_of(self, i: int) -> int:
        """PostgreSQL's rule: no codes = all text, one code = all, else one per parameter."""
        if not self.formats:
            return 0
        return self.formats[0] if len(self.formats) == 1 else self.formats[i]


def parse_bind(body: bytes) -> BindValues:
    """The parameters of a Bind message body (portal, statement, formats, values…)."""
    pos = body.index(0) + 1
    pos = body.index(0, pos) + 1
    (n,) = _I16.unpack_from(body, pos)
    pos += 2
    formats = struct.unpack_from(f"!{n}h", body, pos)
    pos += 2 * n
    (count,) = _I16.unpack_from(body, pos)
    pos += 2
    values: list[bytes | None] = []
    for _ in range(count):
        (length,) = _I32.unpack_from(body, pos)
        pos += 4
        if length < 0:
            values.append(None)
            continue
        values.append(bytes(body[pos : pos + length]))
        pos += length
    return BindValues(tuple(values), tuple(formats))


def from_text(text: str, key_type: placement.KeyType) -> object:
    if key_type is placement.KeyType.INTEGER:
        try:
            return int(text.strip())
        except ValueError:
            raise BadKey(f"{text!r} is not an integer shard key") from None
    if key_type is placement.KeyType.UUID:
        try:
            return uuid.UUID(text.strip())
        except ValueError:
            raise BadKey(f"{text!r} is not a uuid shard key") from None
    return text


def from_binary(data: bytes, key_type: placement.KeyType) -> object:
    if key_type is placement.KeyType.INTEGER:
        if len(data) not in (2, 4, 8):
            raise BadKey(f"a binary integer shard key has 2, 4 or 8 bytes, not {len(data)}")
        return int.from_bytes(data, "big", signed=True)
    if key_type is placement.KeyType.UUID:
        if len(data) != 16:
            raise BadKey(f"a binary uuid shard key has 16 bytes, not {len(data)}")
        return uuid.UUID(bytes=data)
    return data.decode()


def key_value(
    ref: shardplan.KeyRef, key_type: placement.KeyType, bind: BindValues | None
) -> object | None:
    """The key as a Python value of ``key_type``; None for NULL."""
    if ref.param is None:
        v = ref.value
        return from_text(str(v), key_type) if v is not None else None
    if bind is None or ref.param > len(bind.values):
        raise BadKey(f"the shard key is ${ref.param}, but the Bind has no such parameter")
    raw = bind.values[ref.param - 1]
    if raw is None:
        return None
    if bind.format_of(ref.param - 1):
        return from_binary(raw, key_type)
    return from_text(raw.decode(), key_type)


def shard_of_each(
    keys: Sequence[shardplan.KeyRef],
    key_type: placement.KeyType,
    bind: BindValues | None,
    shards: Sequence[topology.Shard],
) -> tuple[int, ...]:
    """The shard of each key in order (an INSERT's rows); a NULL key's row goes to the
    first shard, whose NOT NULL constraint refuses it."""
    out = []
    for ref in keys:
        value = key_value(ref, key_type, bind)
        if value is None:
            out.append(shards[0].index)
            continue
        h = placement.hash_key(value, key_type)
        out.append(placement.shard_of(placement.reduce(h), shards))
    return tuple(out)


def shards_for(
    keys: Sequence[shardplan.KeyRef],
    key_type: placement.KeyType,
    bind: BindValues | None,
    shards: Sequence[topology.Shard],
) -> tuple[int, ...]:
    """The sorted distinct shards of ``keys``; NULL keys match no row, so place nowhere.

    A statement whose keys are all NULL still needs a server to answer it (with no
    rows, or PostgreSQL's own NOT NULL error): shard 0.
    """
    found: set[int] = set()
    for ref in keys:
        value = key_value(ref, key_type, bind)
        if value is None:
            continue
        h = placement.hash_key(value, key_type)
        found.add(placement.shard_of(placement.reduce(h), shards))
    return tuple(sorted(found)) or (shards[0].index,)
