"""The shard's primary lease: a record in a store, taken and renewed with compare-and-set.

Only the member holding an unexpired lease may act as primary. The instance agent
of the primary renews it every ``ttl / 3``; if it cannot renew, it fences its
server before the lease runs out (see agent.py), so when the shard manager sees
the lease expire, the old primary no longer acknowledges writes.

The agent talks to a :class:`LeaseStore` (async, so a store may call an API).
Two implementations: :class:`FileLeases` here, a JSON file guarded by an
``fcntl`` lock (the local platform; all operations are compare-and-set under
that lock), and ``k8s.lease.KubeLeases``, a ``coordination.k8s.io/v1`` Lease
(compare-and-set on its resourceVersion). Expiry in the store is wall-clock time
(``time.time()``); the shard manager, on another machine, allows for clock skew
(``maxClockSkew``) before it treats a lease as expired. The holder does not trust
wall clocks for itself: it fences a safety margin before ``ttl`` has passed, on the
monotonic clock, since it *sent* its last successful renewal (:class:`Deadline`). A
process that was paused (SIGSTOP) sees the jump when it wakes. ``classify`` and
``may_recover`` are pure so their high-consequence branches are unit-tested.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .. import atomicfile


@dataclasses.dataclass(frozen=True)
class Lease:
    holder: str | None
    """Member name, or None once released or broken."""
    expires_at: float
    """Wall-clock seconds; the holder's claim is void after this."""
    epoch: int = 0
    """The shard epoch the holder became primary in (informational)."""
    version: int = 0
    """Grows at every write (compare-and-set counter)."""

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


FREE = Lease(holder=None, expires_at=0.0)


class LeaseView(enum.Enum):
    FREE = "free"
    """Nobody holds it (never taken, released or broken)."""
    MINE = "mine"
    MINE_EXPIRED = "mine-expired"
    OTHERS = "others"
    OTHERS_EXPIRED = "others-expired"


def classify(lease: Lease, me: str, now: float) -> LeaseView:
    if lease.holder is None:
        return LeaseView.FREE
    expired = now >= lease.expires_at
    if lease.holder == me:
        return LeaseView.MINE_EXPIRED if expired else LeaseView.MINE
    return LeaseView.OTHERS_EXPIRED if expired else LeaseView.OTHERS


def may_take(view: LeaseView) -> bool:
    """Whether ``me`` may (re)take the lease: never while another's claim may be valid."""
    return view is not LeaseView.OTHERS


FENCE_MARGIN = 0.2
"""Fraction of the TTL by which the holder fences *before* its lease could expire."""


def fence_margin(ttl: float) -> float:
    return ttl * FENCE_MARGIN


def may_recover(held: Lease, me: str, now: float, margin: float, by_control_plane: bool) -> bool:
    """Whether a fenced primary may take its lease back and serve again.

    Only if it fenced itself (never after the control plane fenced it, even when handing
    the lease back failed), the lease is still its own, and still unexpired with
    ``margin`` to spare: an expired lease may already be counted as free by the
    manager, whatever the store still says."""
    return (
        not by_control_plane
        and classify(held, me, now) is LeaseView.MINE
        and held.expires_at - now > margin
    )


class Deadline:
    """The holder's own end of the lease, on the event loop's monotonic clock.

    ``granted(sent_at)`` after each successful take or renewal, with the loop time taken
    *before* the request was sent (the store computed the expiry from no earlier a
    moment). ``on_expiry`` runs ``margin`` before ``sent_at + ttl``: a timer, so it fires
    on time even while the renewal loop waits on a slow store or probe."""

    def __init__(self, ttl: float, margin: float, on_expiry: Callable[[], None]) -> None:
        self.ttl = ttl
        self.margin = margin
        self._on_expiry = on_expiry
        self.until: float = 0.0
        """Loop time at which the lease may have run out (0: never granted)."""
        self._timer: asyncio.TimerHandle | None = None

    def granted(self, sent_at: float) -> None:
        self.until = max(self.until, sent_at + self.ttl)
        self.cancel()
        self._timer = asyncio.get_running_loop().call_at(self.until - self.margin, self._fire)

    def passed(self, margin: float | None = None) -> bool:
        """Whether the fence point (``margin`` before the end; default this one's) is past."""
        now = asyncio.get_running_loop().time()
        return now >= self.until - (self.margin if margin is None else margin)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._on_expiry()


def must_fence(valid_until: float, now: float, margin: float) -> bool:
    """Whether a primary whose lease runs until ``valid_until`` must stop serving now.

    ``margin`` leaves time to kill the server before the lease actually expires.
    """
    return now >= valid_until - margin


_CHANGE_ATTEMPTS = 20
LOCK_TIMEOUT = 1.0
"""How long a lease change waits for the file's lock: its holder (an agent renewing,
the control plane promoting) keeps it for microseconds unless it was frozen inside,
and then nobody may wait for it forever."""


class FileLeaseStore:
    """A lease in a JSON file. Changes are atomic under the file's lock, taken for at most
    :data:`LOCK_TIMEOUT` (then :class:`atomicfile.LockTimeout`); reads take no lock (the
    file is replaced atomically), so a holder frozen inside the lock blocks no reader."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = path.with_suffix(".lock")

    def _read(self) -> Lease:
        doc = atomicfile.read_json(self.path)
        if not isinstance(doc, dict):
            return FREE
        return Lease(
            holder=doc.get("holder"),
            expires_at=float(doc.get("expires_at", 0.0)),
            epoch=int(doc.get("epoch", 0)),
            version=int(doc.get("version", 0)),
        )

    def read(self) -> Lease:
        return self._read()

    def _change(self, change: Callable[[Lease], Lease | None]) -> Lease | None:
        """Write ``change(current)`` (None: leave it) as the next version, atomically.

        The new file is written and fsynced *before* the lock is taken; under the lock
        only the version is checked and the file renamed into place, so the lock is held
        for microseconds and a process frozen at a random moment almost never holds it
        (an fsync under the lock made it milliseconds). If another writer got in between,
        the change is decided again on what it wrote."""
        for _ in range(_CHANGE_ATTEMPTS):
            cur = self._read()
            new = change(cur)
            if new is None:
                return None
            new = dataclasses.replace(new, version=cur.version + 1)
            staged = atomicfile.staged(self.path, json.dumps(new.to_dict(), indent=2) + "\n")
            try:
                with atomicfile.locked(self._lock, LOCK_TIMEOUT):
                    if self._read().version == cur.version:
                        staged.install()
                        return new
            finally:
                staged.discard()
        raise atomicfile.LockTimeout(f"{self.path} kept changing under {_CHANGE_ATTEMPTS} tries")

    def take(self, me: str, ttl: float, now: float, epoch: int | None = None) -> Lease | None:
        """Acquire or renew for ``me`` unless another member holds a valid claim."""

        def change(cur: Lease) -> Lease | None:
            if not may_take(classify(cur, me, now)):
                return None
            return Lease(me, now + ttl, cur.epoch if epoch is None else epoch)

        return self._change(change)

    def renew(self, me: str, ttl: float, now: float) -> Lease | None:
        """Extend only a lease ``me`` still holds (even if it just expired, when untaken)."""
        return self._change(
            lambda cur: dataclasses.replace(cur, expires_at=now + ttl) if cur.holder == me else None
        )

    def compare_and_set(self, expected: Lease | None, new: Lease) -> Lease | None:
        """Write ``new`` only if the stored record still matches ``expected`` (holder, epoch
        and expiry; ``None`` = nobody holds it); ``None`` when it did not."""

        def change(cur: Lease) -> Lease | None:
            if expected is None:
                matches = cur.holder is None
            else:
                matches = (cur.holder, cur.epoch, cur.expires_at) == (
                    expected.holder,
                    expected.epoch,
                    expected.expires_at,
                )
            return new if matches else None

        return self._change(change)

    def release(self, holder: str) -> bool:
        """Give the lease up (clean stop, switchover, or the holder is known dead)."""
        released = self._change(
            lambda cur: (
                dataclasses.replace(cur, holder=None, expires_at=0.0)
                if cur.holder == holder
                else None
            )
        )
        return released is not None


class LeaseStore(Protocol):
    """What the instance agent needs from a lease store. Every write is a
    compare-and-set; a call may raise (e.g. the API is unreachable): the agent then
    counts the lease as not renewed and fences before it runs out."""

    async def read(self) -> Lease:
        """The stored record (:data:`FREE` when nobody holds it)."""
        ...

    async def take(self, me: str, ttl: float, now: float, epoch: int | None) -> Lease | None:
        """Acquire or renew for ``me`` unless another member's claim may be valid;
        ``epoch`` None keeps the stored epoch. None when refused."""
        ...

    async def renew(self, me: str, ttl: float, now: float) -> Lease | None:
        """Extend a lease ``me`` still holds; None once anybody else took it."""
        ...

    async def release(self, holder: str, now: float) -> bool:
        """Give the lease up if ``holder`` holds it."""
        ...


class FileLeases:
    """:class:`LeaseStore` over a :class:`FileLeaseStore`, run inline on the agent's loop:
    the new file is fsynced before the lock is taken and the lock is then held for
    microseconds, while a thread can keep it while it waits for the GIL (milliseconds
    on a busy agent): long enough for a SIGSTOP of the agent to land
    inside it now and then and keep every promotion waiting for it."""

    def __init__(self, path: Path) -> None:
        self.file = FileLeaseStore(path)

    async def read(self) -> Lease:
        return self.file.read()

    async def take(self, me: str, ttl: float, now: float, epoch: int | None) -> Lease | None:
        return self.file.take(me, ttl, now, epoch)

    async def renew(self, me: str, ttl: float, now: float) -> Lease | None:
        return self.file.renew(me, ttl, now)

    async def release(self, holder: str, now: float) -> bool:
        return self.file.release(holder)
