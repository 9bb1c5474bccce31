"""Cancel keys: the BackendKeyData the proxy hands clients, mapped to their sessions.

A client cancels by opening a new connection with a CancelRequest carrying the
key the proxy gave it; the listener looks the key up here and the session
forwards a CancelRequest to every server still working for it.
"""

from __future__ import annotations

import secrets
from typing import Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class CancelRegistry:
    """(pid, secret) -> session; pids are random and unique among live sessions."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[int, int], Cancellable] = {}
        self._pids: set[int] = set()

    def register(self, session: Cancellable) -> tuple[int, int]:
        while True:
            pid = secrets.randbelow(1 << 31 - 1) + 1
            if pid not in self._pids:
                break
        secret = secrets.randbits(32)
        self._pids.add(pid)
        self._by_key[(pid, secret)] = session
        return pid, secret

    def unregister(self, key: tuple[int, int]) -> None:
        self._by_key.pop(key, None)
        self._pids.discard(key[0])

    def lookup(self, pid: int, secret: int) -> Cancellable | None:
        return self._by_key.get((pid, secret))
