"""Disk space for a member's data: measure it, and decide whether a snapshot fits.

Called by bootstrap.py: before a follower copies its primary, so that a copy that
cannot fit never starts — on a disk shared with the primary (every ``pgshard local``
cluster) a copy that fills the disk also stops the primary, which then cannot add
a WAL segment, not even to finish crash recovery — and after a copy failed anyway
(another writer, no inodes left) to say how much room there is. ``shortfall`` is
pure; ``measure`` is the only I/O here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Space:
    """The filesystem holding ``path``, as an unprivileged writer sees it."""

    path: Path
    total: int
    free: int
    """Bytes available to unprivileged users (``f_bavail``)."""
    free_inodes: int

    def describe(self) -> str:
        """``"54 MB free of 100 MB, 3912 inodes free"``."""
        return f"{mb(self.free)} free of {mb(self.total)}, {self.free_inodes} inodes free"


@dataclasses.dataclass(frozen=True)
class SnapshotSize:
    """What a snapshot of a primary takes, from the primary's own figures."""

    data: int
    """Bytes of the primary's databases (``pg_database_size``, all of them)."""
    wal_segment: int
    """The primary's ``wal_segment_size``: WAL is copied and written a whole segment at a time."""

    @property
    def copy(self) -> int:
        """The copy itself: the databases plus the WAL streamed alongside, which spans the
        segment the backup starts in and the one its end switches to."""
        return self.data + 2 * self.wal_segment

    @property
    def headroom(self) -> int:
        """Left free after the copy: the new follower must be able to start a WAL segment
        (to stream at all), and so must a primary sharing the disk."""
        return 2 * self.wal_segment


def mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


def measure(path: Path) -> Space:
    """The space of the filesystem that holds ``path`` (or its nearest existing parent)."""
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    st = os.statvfs(where)
    return Space(
        path=path,
        total=st.f_blocks * st.f_frsize,
        free=st.f_bavail * st.f_frsize,
        free_inodes=st.f_favail,
    )


def shortfall(need: SnapshotSize, space: Space) -> int:
    """Bytes missing for the copy plus its headroom; 0 when the snapshot fits."""
    return max(0, need.copy + need.headroom - space.free)
