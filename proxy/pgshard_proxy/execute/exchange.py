"""Requests the proxy itself runs on a borrowed server, one at a time, awaited.

Used by the statement-log writer (``execute.statement_log``): while it holds a
primary connection, the connection's sink is an :class:`Exchange` instead of the
client session. Each request ends with a ReadyForQuery; its answer is either
collected (rows as text, for the proxy's own queries) or relayed to the client
(everything but the ReadyForQuery, which the caller writes when the whole
client request is done).
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from collections.abc import Callable

from ..pool.backend import BackendConnection, Marker
from ..protocol import codec, messages
from ..protocol.sqlstate import parse_error_fields

Row = list[str | None]


@dataclasses.dataclass
class Answer:
    """One request's outcome."""

    rows: list[Row] = dataclasses.field(default_factory=list)
    tags: list[str] = dataclasses.field(default_factory=list)
    error: bytes | None = None
    """The first ErrorResponse, as the server sent it."""
    status: messages.TxStatus = messages.TxStatus.IDLE
    param_types: list[int] = dataclasses.field(default_factory=list)
    """The ParameterDescription of a collected Describe."""

    @property
    def error_text(self) -> str:
        if self.error is None:
            return ""
        fields = parse_error_fields(self.error[5:])
        return f"{fields.get('M', 'error')} (SQLSTATE {fields.get('C', '?')})"

    def one(self) -> Row:
        """The last row (of the last statement that returned rows)."""
        if self.error is not None or not self.rows:
            raise ExchangeFailed(self.error_text or "no row returned")
        return self.rows[-1]


class ExchangeFailed(Exception):
    """A query the proxy needed failed, or the server went away."""


def _data_row(body: bytes) -> Row:
    (n,) = struct.unpack_from("!h", body, 0)
    pos = 2
    out: Row = []
    for _ in range(n):
        (size,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if size < 0:
            out.append(None)
        else:
            out.append(body[pos : pos + size].decode())
            pos += size
    return out


class Exchange:
    """The sink of ``b`` while the proxy drives it (see the module docstring)."""

    def __init__(self, b: BackendConnection, client_write: Callable[[bytes], None]) -> None:
        self.b = b
        self._client_write = client_write
        self._buf = bytearray()
        self._answer = Answer()
        self._relay = False
        self._done: asyncio.Future[Answer] | None = None

    # --- requests

    async def query(self, sql: str) -> Answer:
        """``sql`` as a simple query; its answer collected."""
        return await self._run(messages.query(sql), relay=False)

    async def relay(self, data: bytes) -> Answer:
        """Client messages ``data`` ending with a Query or Sync; the answer goes to the
        client except its ReadyForQuery."""
        return await self._run(data, relay=True)

    async def collect(self, data: bytes) -> Answer:
        """Extended-protocol messages ``data`` ending with a Sync; the answer collected."""
        return await self._run(data, relay=False)

    async def _run(self, data: bytes, relay: bool) -> Answer:
        if self.b.broken:
            raise ExchangeFailed(f"{self.b.member_name} ({self.b.address}): connection closed")
        self._answer = Answer()
        self._relay = relay
        self._done = asyncio.get_running_loop().create_future()
        self.b.send(data, Marker.SYNC)
        self.b.flush()
        return await self._done

    # --- backend.Sink

    def backend_data(self, backend: BackendConnection, data: bytes | bytearray) -> None:
        self._buf += data
        pos, n = 0, len(self._buf)
        relayed_from = 0
        while n - pos >= 5:
            t, end = codec.backend_header(self._buf, pos)
            if end > n:
                break
            if t == ord("Z"):
                if self._relay and pos > relayed_from:
                    self._client_write(bytes(self._buf[relayed_from:pos]))
                relayed_from = end
                self._answer.status = messages.TX_STATUS[self._buf[pos + 5]]
                if self._done is not None and not self._done.done():
                    self._done.set_result(self._answer)
            elif t == ord("E") and self._answer.error is None:
                self._answer.error = bytes(self._buf[pos:end])
            elif not self._relay:
                if t == ord("D"):
                    self._answer.rows.append(_data_row(bytes(self._buf[pos + 5 : end])))
                elif t == ord("C"):
                    self._answer.tags.append(self._buf[pos + 5 : end - 1].decode())
                elif t == ord("t"):
                    (count,) = struct.unpack_from("!h", self._buf, pos + 5)
                    self._answer.param_types = list(
                        struct.unpack_from(f"!{count}I", self._buf, pos + 7)
                    )
            pos = end
        if self._relay and pos > relayed_from:
            self._client_write(bytes(self._buf[relayed_from:pos]))
        del self._buf[:pos]

    def backend_ready(self, backend: BackendConnection) -> None:
        """Seen in the data (``backend_data``)."""

    def backend_lost(self, backend: BackendConnection, exc: Exception | None) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(
                ExchangeFailed(f"{backend.member_name} ({backend.address}) closed the connection")
            )

    def backend_paused(self, paused: bool) -> None:
        """Answers here are small or go straight to the client's transport."""

    def backend_needs_primary(self, backend: BackendConnection, retry: bool) -> bool:
        """Only primaries run the proxy's requests."""
        return False

    def backend_read_only(
        self, backend: BackendConnection, retry: bool, error: bytes
    ) -> bytes | None:
        """A primary that turned read-only: its error is the answer (no retry here)."""
        return error
