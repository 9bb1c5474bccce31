"""Small, crash-safe file primitives: atomic replace and fcntl locks (local platform, agent).

Every state file in a cluster directory is replaced atomically (write a temporary
file next to it, fsync, rename), so a reader never sees half a document, and
read-modify-write cycles hold an exclusive ``fcntl`` lock on a sibling lock file,
so concurrent writers (supervisor, agents, CLI) serialise. Nothing here knows
what the documents mean.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` so readers see either the old or the new file."""
    new = staged(path, text, mode)
    try:
        new.install()
    finally:
        new.discard()


@dataclasses.dataclass
class Staged:
    """A complete, fsynced temporary file that :meth:`install` renames over ``path``."""

    tmp: Path | None
    path: Path

    def install(self) -> None:
        assert self.tmp is not None
        os.replace(self.tmp, self.path)
        self.tmp = None

    def discard(self) -> None:
        """Remove the temporary file unless it was installed."""
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)
            self.tmp = None


def staged(path: Path, text: str, mode: int = 0o644) -> Staged:
    """Write and fsync ``text`` next to ``path``, to be installed later (e.g. under a
    lock held only for the rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Staged(Path(tmp), path)


def write_json(path: Path, doc: Any, mode: int = 0o644) -> None:
    atomic_write(path, json.dumps(doc, indent=2) + "\n", mode)


def read_json(path: Path) -> Any:
    """The parsed document, or ``None`` when the file does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class LockTimeout(TimeoutError):
    """The lock stayed held by another process (which may be frozen: SIGSTOP keeps it)."""


@contextlib.contextmanager
def locked(lock_path: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if missing) for the block.

    ``timeout``: give up after that many seconds with :class:`LockTimeout` instead of
    waiting for a holder that may never let go."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(
                            f"{lock_path} stayed locked for {timeout:g}s by another process "
                            f"(a frozen one keeps it until it runs again)"
                        ) from None
                    time.sleep(0.01)
        yield
    finally:
        os.close(fd)


class AlreadyLocked(Exception):
    """Another process holds the lock (e.g. a running supervisor owns the directory)."""


def hold_lock(lock_path: Path) -> int:
    """Take an exclusive lock without waiting; returns the fd, which keeps it while open."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyLocked(str(lock_path)) from None
    return fd


def is_locked(lock_path: Path) -> bool:
    """Whether some process holds ``lock_path`` right now; creates nothing.

    (Asking must not create the lock file: ``local up`` refuses a non-empty new DIR, so
    a probe that left ``supervisor.lock`` behind would make an empty DIR unusable.)
    """
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
