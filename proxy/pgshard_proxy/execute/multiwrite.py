"""An INSERT whose rows fall on several shards: all its rows are written, or none.

Called by the client session for a target of kind SPLIT (outside a client
transaction: inside one, rows on other shards are refused before this runs). Each
shard's primary runs its part (``routing/rowsplit.py``) inside its own transaction;
only when every part succeeded are they all committed, otherwise all are rolled back
and the client gets the first error, naming the shard (``broadcast.commit_all``). A
COMMIT that fails after another shard committed (the shard went away in between) is
reported naming the shards that committed and those that did not. The client gets
one ``INSERT 0 n`` with the total.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

from ..pool.backend import BackendConnection
from ..protocol import messages
from ..routing import keyroute, rowsplit
from . import broadcast

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


def _msg(t: bytes, body: bytes) -> bytes:
    return t + _I32.pack(len(body) + 4) + body


def _oids(types: bytes) -> tuple[int, ...]:
    """The OIDs of a Parse message's parameter-type section."""
    (n,) = _I16.unpack_from(types, 0)
    return struct.unpack_from(f"!{n}I", types, 2)


def request(part: rowsplit.ShardInsert, bind: keyroute.BindValues | None, types: bytes) -> bytes:
    """One shard's INSERT: a simple Query, or with the client's parameters (those of
    its rows, renumbered) an unnamed Parse/Bind/Execute/Sync."""
    if bind is None:
        return messages.query(part.sql)
    oids = _oids(types)
    picked = [oids[i] if i < len(oids) else 0 for i in part.params]
    parse = _msg(
        b"P",
        b"\x00"
        + part.sql.encode()
        + b"\x00"
        + _I16.pack(len(picked))
        + b"".join(struct.pack("!I", o) for o in picked),
    )
    body = [_I16.pack(len(part.params))]
    body += [_I16.pack(bind.format_of(i)) for i in part.params]
    body.append(_I16.pack(len(part.params)))
    for i in part.params:
        v = bind.values[i]
        body.append(_I32.pack(-1) if v is None else _I32.pack(len(v)) + v)
    body.append(_I16.pack(0))
    bind_msg = _msg(b"B", b"\x00\x00" + b"".join(body))
    return parse + bind_msg + _msg(b"E", b"\x00" + _I32.pack(0)) + _msg(b"S", b"")


async def insert(
    backends: Sequence[BackendConnection],
    parts: Sequence[rowsplit.ShardInsert],
    bind: keyroute.BindValues | None,
    types: bytes,
) -> tuple[str, bytes | None]:
    """Run ``parts[i]`` on ``backends[i]`` (its shard's primary, idle); the command tag
    with the total row count, or the ErrorResponse for the client."""
    begun = await broadcast.on_all(backends, "BEGIN")
    if any(a.error for a in begun):
        shards = [p.shard for p in parts]
        return "", await broadcast.commit_all(backends, begun, [], shards)
    answers = await asyncio.gather(
        *(broadcast.send(b, request(p, bind, types)) for b, p in zip(backends, parts, strict=True))
    )
    error = await broadcast.commit_all(backends, begun, answers, [p.shard for p in parts])
    if error is not None:
        return "", error
    total = sum(int(a.tag.rsplit(" ", 1)[-1]) for a in answers if a.tag.startswith("INSERT"))
    return f"INSERT 0 {total}", None
