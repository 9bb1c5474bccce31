"""``COPY distributed FROM STDIN``: every shard copies its rows, all commit or none.

Called by the client session for a target of kind COPY_IN (a simple Query, outside
a client transaction). Each shard's primary opens a transaction and runs the
client's COPY statement; once all are ready the client gets shard 0's
CopyInResponse, and its CopyData stream is cut into rows by key
(``routing/copysplit.py``), each shard receiving its rows as CopyData. At the
client's CopyDone every shard ends its COPY; only when all succeeded are they
committed (``broadcast.commit_all``: otherwise all are rolled back, the error names
the shard), and the client gets ``COPY n`` with the total. A CopyFail, or a row
whose key cannot be read, fails the COPY on every shard. While a shard's socket is
full the client is not read (memory stays bounded by the sockets' buffers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from ..pool.backend import BackendConnection, Marker
from ..protocol import codec, messages
from ..protocol.sqlstate import error_response
from ..routing import copysplit
from . import broadcast
from .sink import MessageSink

BAD_COPY_FILE_FORMAT = "22P04"


def _msg(t: bytes, body: bytes) -> bytes:
    return t + (len(body) + 4).to_bytes(4, "big") + body


def _copy_fail(message: str) -> bytes:
    return _msg(b"f", message.encode() + b"\x00")


_COPY_DONE = _msg(b"c", b"")


class _Sink(MessageSink):
    """One shard's answers during the COPY: CopyInResponse, errors, the tag, the end."""

    def __init__(self, run: CopyIn, index: int) -> None:
        super().__init__()
        self._run = run
        self._i = index

    def message(self, t: int, buf: bytearray, start: int, end: int) -> None:
        self._run.message(self._i, t, bytes(buf[start:end]))

    def backend_lost(self, backend: BackendConnection, exc: Exception | None) -> None:
        self._run.lost(self._i, backend)

    def backend_paused(self, paused: bool) -> None:
        self._run.paused(self._i, paused)


class CopyIn:
    """One client COPY over ``backends`` (``shards[i]``'s primary is ``backends[i]``)."""

    def __init__(
        self,
        backends: Sequence[BackendConnection],
        shards: Sequence[int],
        splitter: copysplit.Splitter,
        pause: Callable[[bool], None],
        ended: Callable[[], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        self._backends = backends
        self._shards = list(shards)
        self._splitter = splitter
        self._pause = pause
        self._ended = ended
        """Called at the client's CopyDone/CopyFail: read no more until answered."""
        self._full: set[int] = set()
        self._started = [loop.create_future() for _ in backends]
        self._done: list[asyncio.Future[None]] = [loop.create_future() for _ in backends]
        self._answers = [broadcast.Answer() for _ in backends]
        self._end: asyncio.Future[None] = loop.create_future()
        self._bad_data: str | None = None
        self.response = b""
        """Shard 0's CopyInResponse, for the client."""

    # --- from the shards

    def message(self, i: int, t: int, data: bytes) -> None:
        if t == ord("G"):
            self.response = self.response or data
            _set(self._started[i])
        elif t == ord("E") and self._answers[i].error is None:
            self._answers[i].error = data
        elif t == ord("C"):
            self._answers[i].tag = data[5:].rstrip(b"\x00").decode()
        elif t == ord("Z"):
            _set(self._started[i])
            _set(self._done[i])

    def lost(self, i: int, backend: BackendConnection) -> None:
        e = ConnectionError(f"{backend.member_name} ({backend.address}) closed the connection")
        for f in (self._started[i], self._done[i]):
            if not f.done():
                f.set_exception(e)

    def paused(self, i: int, paused: bool) -> None:
        was = bool(self._full)
        self._full.add(i) if paused else self._full.discard(i)
        if bool(self._full) != was:
            self._pause(bool(self._full))

    # --- the steps

    async def start(self, sql: str) -> bytes | None:
        """BEGIN and the COPY on every shard; None when all wait for data, else the
        ErrorResponse for the client (everything rolled back)."""
        begun = await broadcast.on_all(self._backends, "BEGIN")
        if any(a.error for a in begun):
            return await broadcast.commit_all(self._backends, begun, [], self._shards)
        for i, b in enumerate(self._backends):
            b.attach(_Sink(self, i))
            b.send(messages.query(sql), Marker.SYNC)
            b.flush()
        await asyncio.gather(*self._started)
        if any(a.error for a in self._answers):
            return await self._fail("another shard refused the COPY")
        return None

    def frame(self, f: codec.Frame) -> None:
        """The client's CopyData, CopyDone or CopyFail (from the request loop)."""
        if self._end.done():
            return
        if f.type == ord("d"):
            if self._bad_data is None:
                try:
                    self._send(self._splitter.feed(f.body))
                except copysplit.CopyError as e:
                    self._bad_data = str(e)
            return
        if f.type == ord("c") and self._bad_data is None:
            try:
                self._send(self._splitter.finish())
            except copysplit.CopyError as e:
                self._bad_data = str(e)
        if f.type == ord("c") and self._bad_data is None:
            end = _COPY_DONE
        elif f.type == ord("c"):
            end = _copy_fail(f"the client's data cannot be split by key: {self._bad_data}")
        else:
            end = f.data  # the client's CopyFail, its message included
        for b in self._backends:
            b.send(end)
            b.flush()
        _set(self._end)
        self._ended()

    async def finish(self) -> tuple[str, bytes | None]:
        """After the client's CopyDone: the ``COPY n`` tag, or the client's error."""
        await self._end
        await asyncio.gather(*self._done)
        self._detach()
        if self._bad_data is not None:
            await broadcast.on_all(self._backends, "ROLLBACK")
            return "", error_response(
                BAD_COPY_FILE_FORMAT,
                f"COPY into a distributed table: {self._bad_data}",
                hint="nothing was copied to any shard; fix the row and copy again",
            )
        error = await broadcast.commit_all(self._backends, [], self._answers, self._shards)
        if error is not None:
            return "", error
        total = sum(int(a.tag.rsplit(" ", 1)[-1]) for a in self._answers if a.tag[:4] == "COPY")
        return f"COPY {total}", None

    async def _fail(self, why: str) -> bytes | None:
        """End the COPY on the shards that started it; roll every shard back."""
        for i, b in enumerate(self._backends):
            if not self._done[i].done():
                b.send(_copy_fail(why))
                b.flush()
        await asyncio.gather(*self._done)
        self._detach()
        return await broadcast.commit_all(self._backends, [], self._answers, self._shards)

    def _send(self, parts: dict[int, bytes]) -> None:
        for i, shard in enumerate(self._shards):
            data = parts.get(shard)
            if data:
                b = self._backends[i]
                b.send(_msg(b"d", data))
                b.flush()

    def _detach(self) -> None:
        for b in self._backends:
            b.attach(None)
        if self._full:
            self._full.clear()
            self._pause(False)


def _set(f: asyncio.Future[None]) -> None:
    if not f.done():
        f.set_result(None)
