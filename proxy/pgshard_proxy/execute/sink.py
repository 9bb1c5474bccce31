"""The shared part of the proxy's own listeners on server connections (scatter,
broadcast, COPY in and out): whole server messages cut from the relayed bytes, and the
answers to the relay's questions that are the same for all of them."""

from __future__ import annotations

from ..pool.backend import BackendConnection
from ..protocol import codec


class MessageSink:
    """Buffers what a server sends and hands each complete message to :meth:`message`
    as ``(type, buffer, start, end)``: a subclass copies only what it keeps."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def backend_data(self, backend: BackendConnection, data: bytes | bytearray) -> None:
        buf = self._buf
        buf += data
        pos, n = 0, len(buf)
        while n - pos >= 5:
            t, end = codec.backend_header(buf, pos)
            if end > n:
                break
            self.message(t, buf, pos, end)
            pos = end
        del buf[:pos]

    def message(self, t: int, buf: bytearray, start: int, end: int) -> None:
        raise NotImplementedError

    def backend_ready(self, backend: BackendConnection) -> None:
        """ReadyForQuery arrives with the data (the relay reports it first)."""

    def backend_paused(self, paused: bool) -> None:
        """Flow control toward the client is the session's."""

    def backend_read_only(
        self, backend: BackendConnection, retry: bool, error: bytes
    ) -> bytes | None:
        """A primary that turned read-only: its error is the answer (no retry here)."""
        return error

    def backend_needs_primary(self, backend: BackendConnection, retry: bool) -> bool:
        """No retry on the primary: only primaries are attached, or (a scatter read on
        followers) the other shards' rows may already have reached the client."""
        return False
