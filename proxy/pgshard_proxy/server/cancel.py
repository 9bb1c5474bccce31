"""Cancel keys: the BackendKeyData the proxy hands clients, mapped to their sessions.

A client cancels by opening a new connection with a CancelRequest carrying the
key the proxy gave it; the listener looks the key up here and the session
forwards a CancelRequest to every server still working for it.

With several worker processes (``--workers``, all listening on one port with
``SO_REUSEPORT``) the new connection may reach any worker, so the key's pid
carries its worker's index in its low bits (:func:`worker_of`); a worker that
gets another worker's key passes the request on over that worker's Unix socket
(:class:`CancelRelay`), where it is looked up as if it had arrived there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
from pathlib import Path
from typing import Protocol

from ..settings import MAX_WORKERS

log = logging.getLogger(__name__)

WORKER_BITS = (MAX_WORKERS - 1).bit_length()
_KEY = struct.Struct("!II")


class Cancellable(Protocol):
    def cancel(self) -> None: ...


def worker_of(pid: int) -> int:
    """The index of the worker that handed out a key with this pid."""
    return pid & (MAX_WORKERS - 1)


class CancelRegistry:
    """(pid, secret) -> session, each key unique among live sessions.

    One process (``alone``): the pid is the session's primary backend's, as drivers
    compare it with ``pg_backend_pid()`` and notification pids (issue 17); the random
    secret is the proxy's own. Several workers: the pid is random and ends in the
    worker's index, so a cancel reaching another worker finds its way."""

    def __init__(self, worker: int = 0, *, alone: bool = True) -> None:
        if not 0 <= worker < MAX_WORKERS:
            raise ValueError(f"worker index {worker} out of range 0..{MAX_WORKERS - 1}")
        self.worker = worker
        self.alone = alone
        self._by_key: dict[tuple[int, int], Cancellable] = {}

    def register(self, session: Cancellable, server_pid: int = 0) -> tuple[int, int]:
        """A new key for ``session``; ``server_pid``: its primary backend's pid (0: none)."""
        while True:
            if self.alone and server_pid > 0:
                pid = server_pid
            else:
                pid = (secrets.randbelow((1 << (31 - WORKER_BITS)) - 1) + 1) << WORKER_BITS
                pid |= self.worker
            key = (pid, secrets.randbits(32))
            if key not in self._by_key:
                break
        self._by_key[key] = session
        return key

    def unregister(self, key: tuple[int, int]) -> None:
        self._by_key.pop(key, None)

    def lookup(self, pid: int, secret: int) -> Cancellable | None:
        return self._by_key.get((pid, secret))


class CancelRelay:
    """Cancel requests between the worker processes of one proxy (one per worker).

    Each worker listens on ``DIR/cancel-<index>.sock``; a request for another
    worker's key is written there as the key's 8 bytes. Without a directory (one
    process) every key is this worker's.
    """

    def __init__(self, registry: CancelRegistry, directory: Path | None) -> None:
        self._registry = registry
        self._dir = directory
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _path(self, worker: int) -> Path:
        assert self._dir is not None
        return self._dir / f"cancel-{worker}.sock"

    async def start(self) -> None:
        if self._dir is None:
            return
        path = self._path(self._registry.worker)
        path.unlink(missing_ok=True)  # left by this worker's previous process
        self._server = await asyncio.start_unix_server(self._receive, str(path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel(self, pid: int, secret: int) -> None:
        """A CancelRequest arrived here: cancel the session, wherever it lives."""
        worker = worker_of(pid)
        if worker == self._registry.worker or self._dir is None:
            target = self._registry.lookup(pid, secret)
            if target is not None:
                target.cancel()
            return
        task = asyncio.get_running_loop().create_task(self._forward(worker, pid, secret))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, worker: int, pid: int, secret: int) -> None:
        try:
            async with asyncio.timeout(5):
                _, writer = await asyncio.open_unix_connection(str(self._path(worker)))
                writer.write(_KEY.pack(pid, secret))
                await writer.drain()
                writer.close()
                await writer.wait_closed()
        except (OSError, TimeoutError) as e:
            log.warning("cannot pass a cancel request to worker %d: %s", worker, e)

    async def _receive(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            async with asyncio.timeout(5):
                pid, secret = _KEY.unpack(await reader.readexactly(_KEY.size))
            if worker_of(pid) == self._registry.worker:
                target = self._registry.lookup(pid, secret)
                if target is not None:
                    target.cancel()
        writer.close()
