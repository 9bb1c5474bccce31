"""Holding requests while a shard's primary is switched over (Vitess's buffering idea).

The control plane publishes a shard as ``switching`` (``contract.topology.Switching``)
before it fences the primary, and drops that when it publishes the new one. A
session whose next request needs that shard's primary, with no transaction open
on it, asks :meth:`SwitchBuffer.hold` to wait instead of sending the request to a
primary about to stop. The wait ends when the topology shows the shard no longer
switching (the request then runs on the new primary) or the announcement's own
deadline passes (a stale announcement: the request runs wherever the topology
says), or with an error: at once when ``buffer_max_requests`` requests of the
shard already wait, or after ``buffer_window_ms``.

Owned by ``server.context.ServerContext`` (one per worker); sessions call it from
``session.client``. Requests inside an open transaction are never held: they run
on the old primary until it stops, and then end with the session's 08007.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable

from ..contract import topology


def holds(shard: topology.Shard, now: float, window_ms: int) -> bool:
    """Whether a request for ``shard``'s primary waits now (Unix time ``now``)."""
    sw = shard.switching
    return window_ms > 0 and sw is not None and now < sw.until


@dataclasses.dataclass
class Counts:
    """Requests held since the proxy started (metrics; the failover record's counts)."""

    buffered: int = 0
    """Requests held and then run on the new primary."""
    failed: int = 0
    """Requests held (or refused a place) that ended with an error instead."""
    waiting: int = 0
    """Requests held right now: until it is 0 again, ``buffered`` and ``failed`` may
    still grow for a switch that is already published (the control plane waits for it
    before it records a switchover's counts)."""


class SwitchBuffer:
    def __init__(
        self,
        window_ms: int,
        max_requests: int,
        current: Callable[[], topology.Topology | None],
        changed: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``current``: the topology now; ``changed``: waits for the next one."""
        self.window_ms = window_ms
        self.max_requests = max_requests
        self._current = current
        self._changed = changed
        self._clock = clock
        self.waiting: dict[int, int] = {}
        """Shard -> requests held right now."""
        self.counts = Counts()

    def holds(self, shard: topology.Shard) -> bool:
        # Asked for every request to a primary: no clock read unless a switch is announced.
        return shard.switching is not None and holds(shard, self._clock(), self.window_ms)

    async def hold(self, index: int) -> str | None:
        """Wait while shard ``index`` is switching; None when the request may go on,
        else the message of the error that ends it (nothing was sent)."""
        waiting = self.waiting.get(index, 0)
        if waiting >= self.max_requests:
            self.counts.failed += 1
            return (
                f"shard {index} is switching over to a new primary and {waiting} requests "
                f"already wait for it (proxy bufferMaxRequests); this one was not run: "
                f"retry it"
            )
        self.waiting[index] = waiting + 1
        self.counts.waiting += 1
        try:
            started = self._clock()
            end = started + self.window_ms / 1000
            while True:
                shard = self._shard(index)
                if shard is None or not self.holds(shard):
                    self.counts.buffered += 1
                    return None
                assert shard.switching is not None
                now = self._clock()
                if now >= end:
                    self.counts.failed += 1
                    return (
                        f"shard {index} is switching over to {shard.switching.target} and "
                        f"its new primary was not published within {(now - started) * 1000:.0f}"
                        f" ms (proxy bufferWindowMs {self.window_ms}); this request was not "
                        f"run: retry it"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed(), min(end, shard.switching.until) - now)
        finally:
            self.waiting[index] -= 1
            self.counts.waiting -= 1

    def _shard(self, index: int) -> topology.Shard | None:
        topo = self._current()
        if topo is None:
            return None
        try:
            return topo.shard(index)
        except KeyError:
            return None
