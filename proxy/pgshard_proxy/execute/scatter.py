"""Run a scatter read on several shards' servers and answer the client as one PostgreSQL.

The seam the client session calls for a request whose shard plan is a scatter (or
a keyed read over several shards): one :class:`ScatterRun` per request, over one
server connection per shard (lent by the session, attached to the run while it
runs). Each shard gets ``shard_sql`` (simple Query, or unnamed Parse/Bind/Describe/
Execute/Sync with the client's parameters); the run answers with what one server
would send for the client's request: RowDescription (when the client described
the portal, or always in the simple protocol), DataRows, CommandComplete
``SELECT n`` — or the first shard's ErrorResponse — and reports the combined
transaction status for the ReadyForQuery.

Plain rows are relayed as the shards' DataRow bytes (hidden sort columns cut off)
while shards still send: a connection stops reading while more than
``PAUSE_ROWS`` of its rows wait in the merge for a slower shard (memory: shards times
that many rows). Aggregates are decoded, combined
(``routing/merge.py``) and encoded once every shard has answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any

from ..pool.backend import BackendConnection, Marker
from ..protocol import messages
from ..protocol.sqlstate import error_response, parse_error_fields
from ..routing import keyroute, merge, scatter
from . import values
from .sink import MessageSink

log = logging.getLogger(__name__)

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_ROW, _DESC, _DONE, _ERROR, _READY, _NODATA = b"DTCEZn"
_TX_ORDER = {b"I"[0]: 0, b"T"[0]: 1, b"E"[0]: 2}


PROGRAM_LIMIT_EXCEEDED = "54000"
PAUSE_ROWS = 2000
"""Rows of one shard waiting in the merge before its connection stops reading."""
_MERGE = "merge"
"""The reason a shard is not read: its rows wait in the merge for a slower shard (the
session's own reason, a slow client, is kept apart: resuming one leaves the other)."""


class ScatterFailed(Exception):
    """A shard could not answer (connection lost); the message names it."""


@dataclasses.dataclass(frozen=True)
class Request:
    """What the client asked, as far as the run needs it."""

    bind: keyroute.BindValues | None = None
    """Extended protocol: the parameters; None for a simple Query."""
    result_formats: tuple[int, ...] = ()
    describe: bool = True
    """Send a RowDescription (simple Query; extended with Describe portal)."""
    max_rows: int = 0
    """The Execute's row limit (0: all): at most that many rows, then PortalSuspended."""
    parameter_types: bytes = b"\x00\x00"
    """The client's Parse: count and OIDs of the parameter types (binary values need them)."""


@dataclasses.dataclass
class _Field:
    name: bytes
    rest: bytes
    """table oid, attnum, type oid, typlen, typmod (16 bytes); the format follows."""
    fmt: int

    @property
    def type_oid(self) -> int:
        return int(_I32.unpack_from(self.rest, 6)[0])

    def encode(self, name: bytes | None = None, fmt: int | None = None) -> bytes:
        return (
            (self.name if name is None else name)
            + b"\x00"
            + self.rest
            + _I16.pack(self.fmt if fmt is None else fmt)
        )


def _fields(body: bytes) -> list[_Field]:
    (n,) = _I16.unpack_from(body, 0)
    pos, out = 2, []
    for _ in range(n):
        end = body.index(0, pos)
        name = body[pos:end]
        rest = body[end + 1 : end + 17]
        (fmt,) = _I16.unpack_from(body, end + 17)
        out.append(_Field(name, rest, fmt))
        pos = end + 19
    return out


def _columns(body: bytes | memoryview) -> list[tuple[int, int]]:
    """(start, end) of each column value in a DataRow body; start -1 for NULL."""
    (n,) = _I16.unpack_from(body, 0)
    pos, out = 2, []
    for _ in range(n):
        (length,) = _I32.unpack_from(body, pos)
        pos += 4
        if length < 0:
            out.append((-1, -1))
        else:
            out.append((pos, pos + length))
            pos += length
    return out


def _msg(t: bytes, body: bytes) -> bytes:
    return t + _I32.pack(len(body) + 4) + body


def _data_row(cells: Sequence[bytes | None]) -> bytes:
    parts = [_I16.pack(len(cells))]
    for c in cells:
        parts.append(_I32.pack(-1) if c is None else _I32.pack(len(c)) + c)
    return _msg(b"D", b"".join(parts))


class _ShardSink(MessageSink):
    """One shard's messages, parsed and handed to the run."""

    def __init__(self, run: ScatterRun, index: int) -> None:
        super().__init__()
        self.run = run
        self.index = index

    def message(self, t: int, buf: bytearray, start: int, end: int) -> None:
        self.run._message(self.index, t, bytes(buf[start + 5 : end]))

    def backend_lost(self, backend: BackendConnection, exc: Exception | None) -> None:
        self.run._lost(self.index, backend)


class ScatterRun:
    """One scatter read over ``backends`` (one per shard), answering through ``write``."""

    def __init__(
        self,
        plan: scatter.ScatterPlan,
        backends: Sequence[BackendConnection],
        write: Callable[[bytes], None],
    ) -> None:
        self.plan = plan
        self.backends = list(backends)
        self.write = write
        self.fields: list[list[_Field] | None] = [None] * len(backends)
        self.error: bytes | None = None
        self.statuses: list[int] = [b"I"[0]] * len(backends)
        self.done = asyncio.get_running_loop().create_future()
        self.finished: set[int] = set()
        """Shards whose CommandComplete arrived."""
        self.ready: set[int] = set()
        self.sent = 0
        self.header_sent = False
        self.request = Request()
        self.decoders: list[Callable[[bytes | None], object]] = []
        self.rows: merge.RowMerge | None = None
        self.groups: merge.GroupMerge | None = None
        self.paused: set[int] = set()
        self.waiting: list[list[bytes]] = [[] for _ in backends]
        """Rows that arrived before every shard described its columns."""

    # -- sending -------------------------------------------------------------------------

    def _shard_formats(self, request: Request) -> tuple[int, ...]:
        """Result formats for the shards: the client's, plus text for hidden columns."""
        f = request.result_formats
        if self.plan.grouping is not None:
            return (0,)  # decoded and encoded by the run
        if len(f) > 1:
            return (*f, *(0,) * self.plan.hidden)
        return f

    async def run(self, request: Request) -> int:
        """Send, merge, answer; returns the transaction status byte for ReadyForQuery."""
        self.request = request
        for i, b in enumerate(self.backends):
            b.attach(_ShardSink(self, i))
            if request.bind is None:
                b.send(messages.query(self.plan.shard_sql), Marker.SYNC)
            else:
                b.send(
                    _extended(
                        self.plan.shard_sql,
                        request.bind,
                        self._shard_formats(request),
                        request.parameter_types,
                    ),
                    Marker.SYNC,
                )
            b.flush()
        try:
            await self.done
        finally:
            for b in self.backends:
                b.attach(None)
                b.pause_reading(False, _MERGE)
        return max(self.statuses, key=lambda s: _TX_ORDER.get(s, 0))

    # -- receiving -----------------------------------------------------------------------

    def _message(self, shard: int, t: int, body: bytes) -> None:
        if t == _READY:
            self._ready(shard, body[0])
            return
        if self.error is not None:
            return
        if t == _DESC:
            self.fields[shard] = _fields(body)
            if all(f is not None for f in self.fields):
                self._start()
        elif t == _ROW:
            if self.rows is None and self.groups is None:
                self.waiting[shard].append(body)
            else:
                self._rows(shard, [body])
        elif t == _ERROR:
            self._fail(_msg(b"E", body))
        elif t == _DONE:
            self.finished.add(shard)
            if self.rows is not None:
                self.rows.finish(shard)
                self._rows(shard, [])  # what waited for this shard's end
        # ParseComplete, BindComplete, NoData, notices: the run answers for itself.

    def _ready(self, shard: int, status: int) -> None:
        self.statuses[shard] = status
        self.ready.add(shard)
        if len(self.ready) == len(self.backends) and not self.done.done():
            self._finish()

    def _lost(self, shard: int, backend: BackendConnection) -> None:
        if not self.done.done():
            self.done.set_exception(
                ScatterFailed(f"shard {shard} ({backend.member_name}) closed the connection")
            )

    # -- merging -------------------------------------------------------------------------

    def _start(self) -> None:
        """Every shard described its columns: decoders, the client's RowDescription."""
        first = self.fields[0]
        assert first is not None
        try:
            if self.plan.grouping is None:
                self._start_rows(first)
            else:
                self._start_groups(first)
        except values.UnsupportedType as e:
            self.error = _refusal(f"a sort key or aggregate of {e} in a scatter read")
            return
        for shard, waiting in enumerate(self.waiting):
            if waiting:
                self._rows(shard, waiting)
            self.waiting[shard] = []

    def _start_rows(self, fields: list[_Field]) -> None:
        visible = len(fields) - self.plan.hidden
        self.decoders = [decoder_for(f) for f in fields[visible:]]
        self.rows = merge.RowMerge(self.plan, len(self.backends))
        if self.request.describe:
            self.write(_row_description([f.encode() for f in fields[:visible]]))
        self.header_sent = True
        for shard in self.finished:
            self.rows.finish(shard)

    def _start_groups(self, fields: list[_Field]) -> None:
        g = self.plan.grouping
        assert g is not None
        self.decoders = [decoder_for(f) for f in fields]
        self.groups = merge.GroupMerge(self.plan)

    def _rows(self, shard: int, bodies: list[bytes]) -> None:
        try:
            self._merge(shard, bodies)
        except merge.TooLarge as e:
            self._fail(
                error_response(
                    PROGRAM_LIMIT_EXCEEDED,
                    str(e),
                    hint="narrow the read (its shard key in WHERE, fewer groups or distinct "
                    "rows), or read each shard's rows on its own",
                )
            )

    def _fail(self, error: bytes) -> None:
        """The answer is this error: the rest of the shards' rows are read and dropped
        (a shard the merge paused is read again, so that its ReadyForQuery arrives)."""
        self.error = error
        for shard in self.paused:
            self.backends[shard].pause_reading(False, _MERGE)
        self.paused.clear()

    def _merge(self, shard: int, bodies: list[bytes]) -> None:
        if self.groups is not None:
            self.groups.feed([self._decode_all(b) for b in bodies])
            return
        assert self.rows is not None
        hidden = self.plan.hidden
        rows = []
        for body in bodies:
            cols = _columns(body)
            cut = len(cols) - hidden
            start = cols[cut][0] if hidden else len(body)
            if hidden and start < 0:  # a NULL: its length word starts 4 bytes earlier
                start = _null_offset(body, cut)
            visible = _I16.pack(cut) + body[2 : start - 4 if hidden else len(body)]
            keys = tuple(
                self.decoders[k](None if s < 0 else body[s:e])
                for k, (s, e) in enumerate(cols[cut:])
            )
            rows.append((visible, *keys))
        self.rows.feed(shard, rows)
        if len(self.rows.buffers[shard]) > PAUSE_ROWS and shard not in self.paused:
            self.paused.add(shard)  # a slower shard holds the merge back: stop reading
            self.backends[shard].pause_reading(True, _MERGE)
        self._flush_rows()

    def _flush_rows(self) -> None:
        assert self.rows is not None
        out = self._limited(self.rows.ready())
        if out:
            self.write(b"".join(_msg(b"D", r[0]) for r in out))
            self.sent += len(out)
        for shard in [s for s in self.paused if len(self.rows.buffers[s]) < PAUSE_ROWS // 4]:
            self.paused.discard(shard)
            self.backends[shard].pause_reading(False, _MERGE)  # the client's pause stays

    def _limited(self, rows: list[Any]) -> list[Any]:
        """At most the Execute's row limit in all: PostgreSQL then suspends the portal."""
        limit = self.request.max_rows
        if not limit:
            return rows
        return rows[: max(0, limit - self.sent)]

    def _decode_all(self, body: bytes) -> tuple[Any, ...]:
        cols = _columns(body)
        g = self.plan.grouping
        assert g is not None
        passthrough = {c.source for c in (*g.columns, *g.having_columns) if c.agg in _PASS}
        passthrough |= set(g.keys)
        out: list[Any] = []
        for i, (s, e) in enumerate(cols):
            raw = None if s < 0 else body[s:e]
            value = self.decoders[i](raw)
            out.append(merge.Cell(value, raw) if i in passthrough and raw is not None else value)
        return tuple(out)

    def _finish(self) -> None:
        if self.error is None and self.groups is not None:
            try:
                self._answer_groups()
            except values.UnsupportedType as e:
                self.error = _refusal(f"an aggregate result of {e} in a scatter read")
            except (ArithmeticError, TypeError, ValueError) as e:
                log.exception("merging a scatter read failed")
                self.error = error_response(
                    "XX000", f"pgshard-proxy could not merge the shards' answers: {e}"
                )
        if self.error is not None:
            self.write(self.error)
        else:
            if self.rows is not None:
                self._flush_rows()
            if self.request.max_rows and self.sent >= self.request.max_rows:
                self.write(b"s\x00\x00\x00\x04")  # PortalSuspended: the limit was reached
            else:
                self.write(messages.command_complete(f"SELECT {self.sent}"))
        self.done.set_result(None)

    def _answer_groups(self) -> None:
        g = self.plan.grouping
        fields = self.fields[0]
        assert g is not None and self.groups is not None and fields is not None
        formats = self.request.result_formats
        out_formats = [
            (formats[i] if len(formats) > 1 else formats[0] if formats else 0)
            for i in range(len(g.columns))
        ]
        desc = []
        for i, c in enumerate(g.columns):
            name = g.names[i].encode()
            if c.agg is scatter.Agg.AVG:
                float_sum = fields[c.source].type_oid in (values.FLOAT4, values.FLOAT8)
                oid, size = (values.FLOAT8, 8) if float_sum else (values.NUMERIC, -1)
                rest = _I32.pack(0) + _I16.pack(0) + _I32.pack(oid) + _I16.pack(size)
                desc.append(name + b"\x00" + rest + _I32.pack(-1) + _I16.pack(out_formats[i]))
            else:
                desc.append(fields[c.source].encode(name, out_formats[i]))
        rows = self._limited(self.groups.result())
        encoded = []
        for row in rows:
            cells: list[bytes | None] = []
            for i, (c, v) in enumerate(zip(g.columns, row, strict=True)):
                if isinstance(
                    v, merge.Cell
                ):  # the shard's text; binary only for types encoded here
                    fmt = out_formats[i]
                    oid = fields[c.source].type_oid
                    cells.append(values.encode(oid, fmt, v.value) if fmt else v.raw)
                    continue
                oid = values.NUMERIC if c.agg is scatter.Agg.AVG else fields[c.source].type_oid
                if c.agg is scatter.Agg.AVG and isinstance(v, float):
                    oid = values.FLOAT8
                cells.append(values.encode(oid, out_formats[i], v))
            encoded.append(_data_row(cells))
        if self.request.describe:
            self.write(_row_description(desc))
        self.write(b"".join(encoded))
        self.sent = len(rows)


_PASS = frozenset((None, scatter.Agg.MIN, scatter.Agg.MAX))


def decoder_for(field: _Field) -> Callable[[bytes | None], object]:
    return values.decoder(field.type_oid, field.fmt)


def _null_offset(body: bytes, column: int) -> int:
    """The start (past its length word) a NULL ``column`` would have."""
    pos = 2
    for _ in range(column):
        (length,) = _I32.unpack_from(body, pos)
        pos += 4 + max(length, 0)
    return pos + 4


def _row_description(fields: list[bytes]) -> bytes:
    return _msg(b"T", _I16.pack(len(fields)) + b"".join(fields))


def _refusal(what: str) -> bytes:
    return error_response(
        "0A000",
        f"{what} is not supported",
        hint="give the shard key so one shard answers, or cast the column to a plain type",
    )


def _extended(
    sql: str, bind: keyroute.BindValues, formats: tuple[int, ...], types: bytes = b"\x00\x00"
) -> bytes:
    parse = _msg(b"P", b"\x00" + sql.encode() + b"\x00" + types)
    params = [_I16.pack(len(bind.formats)), *(_I16.pack(f) for f in bind.formats)]
    params.append(_I16.pack(len(bind.values)))
    for v in bind.values:
        params.append(_I32.pack(-1) if v is None else _I32.pack(len(v)) + v)
    params.append(_I16.pack(len(formats)))
    params.extend(_I16.pack(f) for f in formats)
    bind_msg = _msg(b"B", b"\x00\x00" + b"".join(params))
    return (
        parse + bind_msg + _msg(b"D", b"P\x00") + _msg(b"E", b"\x00" + _I32.pack(0))
        + _msg(b"S", b"")
    )  # fmt: skip


def parameter_types(parse_body: bytes) -> bytes:
    """The parameter-type section (count and OIDs) of a Parse message body."""
    pos = parse_body.index(0) + 1
    return parse_body[parse_body.index(0, pos) + 1 :]


def error_fields(error: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse message (tests and logs)."""
    return dict(parse_error_fields(error[5:]))
