"""A small tmpfs visible only inside a private mount namespace, for disk-full tests.

The host's mounts are never touched: ``unshare --mount --propagation private`` makes a
namespace whose first process (the *holder*, a bounded ``sleep``) mounts a tmpfs on an
empty directory and keeps the namespace alive. Commands run inside it through
``nsenter --target HOLDER --mount`` (``argv``), so a cluster started there — its
background supervisor, agents and servers included — sees the small disk, while its
pids stay in the test's pid namespace and can be signalled as usual. The test reads
the tmpfs from outside through ``/proc/HOLDER/root`` (``view``).

Teardown kills, by pid, every process still in the namespace, then the holder: the
tmpfs goes away with its last process.

    with mountns.private_tmpfs(pg_tmp / "cluster", size_mb=100) as disk:
        subprocess.run(disk.argv(["df", str(disk.path)]))
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

HOLDER_SECONDS = 600
"""The holder exits by itself after this long even if a test never tears it down."""


@dataclasses.dataclass
class PrivateTmpfs:
    path: Path
    """The mount point (an empty directory outside; the tmpfs inside the namespace)."""
    holder: subprocess.Popen[str]
    namespace: str
    """``mnt:[inode]`` of the namespace, as ``/proc/PID/ns/mnt`` links read."""

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--", *argv]

    def view(self, path: Path | None = None) -> Path:
        """``path`` (default: the mount point) as seen from inside, readable from outside."""
        return Path(f"/proc/{self.holder.pid}/root{(path or self.path).resolve()}")

    def resize(self, size_mb: int) -> None:
        """Give the tmpfs another size (a remount inside the namespace)."""
        subprocess.run(
            self.argv(["mount", "-o", f"remount,size={size_mb}m", str(self.path)]),
            check=True,
            timeout=30,
        )

    def pids(self) -> list[int]:
        """Processes in the namespace other than the holder (cluster processes left over)."""
        ns = self.namespace
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.holder.pid:
                continue
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "mnt") == ns:
                    out.append(int(entry.name))
        return sorted(out)

    def kill_all(self) -> None:
        """SIGKILL (after SIGCONT) every process in the namespace but the holder."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def private_tmpfs(path: Path, size_mb: int, nr_inodes: int | None = None) -> Iterator[PrivateTmpfs]:
    """A tmpfs of ``size_mb`` (and at most ``nr_inodes`` files) on ``path``, privately."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_mb}m,mode=0755" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
    holder = subprocess.Popen(
        [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", 'mount -t tmpfs -o "$1" tmpfs "$2" && echo mounted && exec sleep "$3"',
            "holder", options, str(path), str(HOLDER_SECONDS),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "mounted":
            raise RuntimeError(f"could not mount a tmpfs on {path} in a private namespace")
        disk = PrivateTmpfs(path, holder, os.readlink(f"/proc/{holder.pid}/ns/mnt"))
        try:
            yield disk
        finally:
            deadline = time.monotonic() + 30
            while disk.pids() and time.monotonic() < deadline:
                disk.kill_all()
                time.sleep(0.1)
    finally:
        holder.kill()
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
