"""Processes by pid: descendants of a process and signalling a whole tree.

PostgreSQL backends make themselves process-group leaders, so a process group
does not cover a server; we walk ``/proc`` parent links instead. Used by the
instance agent's fencing and by ``pgshard local kill``/``down``. Linux only.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def _parents() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid …": comm may contain spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1:
            out[int(entry.name)] = int(fields[1])
    return out


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children before grandchildren)."""
    parents = _parents()
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    out: list[int] = []
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants, freezing them first.

    The root is stopped first so it forks nothing new, then the children are
    stopped, then all are killed: no process of the tree runs another
    instruction after the first step (a stopped backend cannot acknowledge a
    commit).
    """
    signal_all([pid], signal.SIGSTOP)
    tree = descendants(pid)
    signal_all(tree, signal.SIGSTOP)
    signal_all([pid, *tree], signal.SIGKILL)
