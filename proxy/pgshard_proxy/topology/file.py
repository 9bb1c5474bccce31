"""Follow a topology file, ``DIR/topology.json``, as the local cluster writes it.

Used by ``pgshard-proxy`` in local mode (``pgshard local up`` starts it pointing
here). The writer replaces the file atomically (tmp + rename) and bumps
``version``; we still cope with a half-written or invalid file, which can appear
when someone edits it by hand: the last good topology stays in force and the
problem is logged once, naming the file and the field.

Polling (``os.stat`` every ``poll_interval`` seconds; the file is read when its
mtime/size/inode changed) is simple, works on every filesystem and costs nothing
next to the proxy's traffic. A change that leaves all three as they were (coarse
timestamps, an in-place edit of the same size, a copy keeping the old mtime) is
still seen: the file is read anyway every ``resync_seconds``, and at once when
the proxy doubts its view (:meth:`FileTopologySource.refresh`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from pgshard_proxy.contract import topology
from pgshard_proxy.contract.topology import Topology

log = logging.getLogger(__name__)

_Signature = tuple[int, int, int]
"""(mtime_ns, size, inode): changes whenever the file is rewritten or replaced."""


def read(path: Path) -> Topology:
    """Parse the file; raises :class:`topology.BadTopology` (with the path) or OSError."""
    text = path.read_text(encoding="utf-8")
    try:
        return topology.from_json(text)
    except topology.BadTopology as e:
        raise topology.BadTopology(f"{path}: {e}") from None


class FileTopologySource:
    """A :class:`~.source.TopologySource` over one JSON file."""

    def __init__(
        self, path: Path | str, poll_interval: float = 0.2, resync_seconds: float = 2.0
    ) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval
        self.resync_seconds = resync_seconds
        """Longest time between two reads of the file, changed or not."""
        self._doubted = False

    def refresh(self) -> None:
        """Read the file on the next poll, whatever its signature says."""
        self._doubted = True

    async def __aiter__(self) -> AsyncIterator[Topology]:
        loop = asyncio.get_running_loop()
        last: Topology | None = None
        seen: _Signature | None = (-1, -1, -1)  # matches no file, not even a missing one
        read_at = loop.time()
        problem: str | None = None
        while True:
            signature = self._signature()
            due = self._doubted or loop.time() - read_at >= self.resync_seconds
            if signature != seen or (due and signature is not None):
                seen = signature
                self._doubted = False
                read_at = loop.time()
                try:
                    current = await asyncio.to_thread(read, self.path)
                except (OSError, UnicodeDecodeError, topology.BadTopology) as e:
                    message = str(e) if isinstance(e, topology.BadTopology) else f"{self.path}: {e}"
                    if message != problem:
                        action = "keeping the last good one" if last else "waiting for a valid one"
                        log.error("bad topology file, %s: %s", action, message)
                        problem = message
                else:
                    if problem is not None:
                        log.info("topology file %s is valid again", self.path)
                        problem = None
                    if current != last:
                        last = current
                        yield current
            await asyncio.sleep(self.poll_interval)

    def _signature(self) -> _Signature | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)
