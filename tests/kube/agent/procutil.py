"""Process identities that survive pid reuse, and stopping a process group by pid.

A process is recorded as (pid, start time in clock ticks since boot, from /proc/PID/stat);
a recorded process is only signalled while both still match, so a stale record can never
hit an unrelated process. Used by the cluster (control-plane processes) and the node
agent (containers); never kills by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from typing import Any


@dataclasses.dataclass(frozen=True)
class Identity:
    pid: int
    start: int


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of ``pid``, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def identity(pid: int) -> dict[str, Any]:
    stat = _stat(pid)
    return dataclasses.asdict(Identity(pid, stat[1] if stat else 0))


def alive(ident: Identity) -> bool:
    """True while the recorded process runs (a zombie counts as gone; it is reaped here)."""
    stat = _stat(ident.pid)
    if stat is None or stat[1] != ident.start:
        return False
    if stat[0] in ("Z", "X"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(ident.pid, os.WNOHANG)
        return False
    return True


def signal_group(ident: Identity, sig: signal.Signals) -> bool:
    """Send ``sig`` to the process group led by the recorded process (if it still runs)."""
    if not alive(ident):
        return False
    try:
        os.killpg(ident.pid, sig)
    except ProcessLookupError:
        return False
    return True


def stop_group(ident: Identity, grace: float) -> None:
    """SIGTERM the recorded process's group, wait up to ``grace`` seconds, then SIGKILL it."""
    if not signal_group(ident, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(ident):
            return
        time.sleep(0.1)
    signal_group(ident, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(ident) and time.monotonic() < deadline:
        time.sleep(0.05)
