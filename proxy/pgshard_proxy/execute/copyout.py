"""``COPY distributed TO STDOUT``: every shard's rows, gathered into one COPY answer.

Called by the client session for a target of kind COPY_OUT (a simple Query; text or
CSV without a header, so that each CopyData the shards send is whole rows that may
be interleaved). Every shard's primary runs the client's COPY statement; the client
gets one CopyOutResponse, the shards' CopyData as they arrive (while the client's
socket is full the session stops reading the shards), then one CopyDone and
``COPY n`` with the total — or the first shard's error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from ..pool.backend import BackendConnection, Marker
from ..protocol import codec, messages
from .sink import MessageSink

_COPY_DONE = b"c\x00\x00\x00\x04"


class _Sink(MessageSink):
    """One shard's COPY OUT: runs of CopyData relayed as they are, other messages to
    the run (so it does not use :meth:`MessageSink.message`)."""

    def __init__(self, run: _Gather, index: int) -> None:
        super().__init__()
        self._run = run
        self._i = index

    def backend_data(self, backend: BackendConnection, data: bytes | bytearray) -> None:
        self._buf += data
        pos, n = 0, len(self._buf)
        start = 0
        while n - pos >= 5:
            t, end = codec.backend_header(self._buf, pos)
            if end > n:
                break
            if t != ord("d"):
                if pos > start:
                    self._run.rows(bytes(self._buf[start:pos]))
                self._run.message(self._i, t, bytes(self._buf[pos:end]))
                start = end
            pos = end
        if pos > start:
            self._run.rows(bytes(self._buf[start:pos]))  # CopyData messages, relayed as is
        del self._buf[:pos]

    def backend_lost(self, backend: BackendConnection, exc: Exception | None) -> None:
        self._run.lost(self._i, backend)


class _Gather:
    def __init__(self, shards: int, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._started = False
        self._done = [asyncio.get_running_loop().create_future() for _ in range(shards)]
        self.error: bytes | None = None
        self.total = 0

    def rows(self, data: bytes) -> None:
        if self.error is None:
            self._write(data)

    def message(self, i: int, t: int, data: bytes) -> None:
        if t == ord("H") and not self._started:
            self._started = True
            self._write(data)
        elif t == ord("E") and self.error is None:
            self.error = data
        elif t == ord("C"):
            tag = data[5:].rstrip(b"\x00").decode()
            self.total += int(tag.rsplit(" ", 1)[-1]) if tag.startswith("COPY") else 0
        elif t == ord("Z") and not self._done[i].done():
            self._done[i].set_result(None)

    def lost(self, i: int, backend: BackendConnection) -> None:
        if not self._done[i].done():
            self._done[i].set_exception(
                ConnectionError(f"{backend.member_name} ({backend.address}) closed the connection")
            )

    async def wait(self) -> None:
        await asyncio.gather(*self._done)


async def gather(
    backends: Sequence[BackendConnection], sql: str, write: Callable[[bytes], None]
) -> bytes:
    """Run ``sql`` (a COPY TO STDOUT) on every backend, relaying the rows through
    ``write``; the ending for the client (CopyDone and the tag, or the error)."""
    run = _Gather(len(backends), write)
    try:
        for i, b in enumerate(backends):
            b.attach(_Sink(run, i))
            b.send(messages.query(sql), Marker.SYNC)
            b.flush()
        await run.wait()
    finally:
        for b in backends:
            b.attach(None)
    if run.error is not None:
        return run.error
    return _COPY_DONE + messages.command_complete(f"COPY {run.total}")
