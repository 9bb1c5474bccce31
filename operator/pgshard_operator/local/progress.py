"""What ``local up``/``scale``/``upgrade`` and ``switchover --dir`` show while they wait (issue 18).

While the command blocks on the supervisor, a thread polls the cluster every
``POLL_SECONDS`` (cluster.json, topology.json and each agent's ``GET /status`` with
a short timeout; whatever fails is simply not known yet) and shows it on stderr:
a rich live display when stdout and stderr are terminals, otherwise plain lines
(``PlainLines``: one per change of state, copy progress at most every
``PLAIN_EVERY_SECONDS`` per member) so that logs and CI stay readable. stdout keeps
only the command's final summary, which scripts parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from . import status, topofile, view
from .layout import ClusterDir

POLL_SECONDS = 0.5
PLAIN_EVERY_SECONDS = 5.0
"""Plain output: at most one copy-progress line per member this often."""

QUIET = frozenset({"primary", "streaming"})
"""States of members already there when the wait starts that are not worth a line."""


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    state: str
    """``primary``, a follower state of ``local status``, or ``not answering``."""
    copied: int = 0
    total: int = 0
    """Bootstrap copy in bytes (the agent's ``bootstrap``), 0 when none runs."""


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    primary: str | None
    epoch: int
    switching_to: str | None


@dataclasses.dataclass(frozen=True)
class Snapshot:
    shards: tuple[Shard, ...]
    members: tuple[Member, ...]


def snapshot(cdir: ClusterDir, shards: frozenset[int] | None = None) -> Snapshot:
    """The cluster as its files and agents show it now (``shards``: only those)."""
    cfg = cdir.load_config()
    topo = topofile.read(cdir)
    docs = asyncio.run(status.fetch_statuses(cdir, cfg))
    out_shards: list[Shard] = []
    members: list[Member] = []
    records = {s.index: s for s in topo.shards} if topo is not None else {}
    creds = cdir.load_credentials(cfg) if topo is not None else None
    for index in range(cfg.shards):
        if shards is not None and index not in shards:
            continue
        specs = cfg.members(index)
        states: dict[str, str] = {}
        if (record := records.get(index)) is not None and creds is not None:
            live = view.build_shard(record, specs, docs, creds, topo.method if topo else "wal")
            if live.primary is not None:
                states[live.primary.name] = "primary"
            states.update((f.name, f.state) for f in live.followers)
            switching = record.switching.target if record.switching else None
            primary = record.primary.name if record.primary else None
            out_shards.append(Shard(index, primary, record.epoch, switching))
        for m in specs:
            doc = docs.get(m.name)
            state = states.get(m.name) or str((doc or {}).get("role") or "down")
            copy = (doc or {}).get("bootstrap") or {}
            members.append(
                Member(
                    name=m.name,
                    state="not answering" if doc is None else state,
                    copied=int(copy.get("copiedBytes") or 0),
                    total=int(copy.get("totalBytes") or 0),
                )
            )
    return Snapshot(tuple(out_shards), tuple(members))


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


class PlainLines:
    """Plain progress: the lines a new snapshot calls for (pure; unit-tested).

    A member's state and a shard's primary or switchover print when they change; a
    member already quiet (primary, streaming) in the first snapshot prints nothing
    until it changes; copy progress prints at most every ``every`` seconds a member."""

    def __init__(self, every: float = PLAIN_EVERY_SECONDS) -> None:
        self.every = every
        self._first = True
        self._states: dict[str, str] = {}
        self._shards: dict[int, tuple[str | None, str | None]] = {}
        self._copy_at: dict[str, float] = {}
        self._copied: dict[str, int] = {}

    def lines(self, snap: Snapshot, elapsed: float) -> list[str]:
        out: list[str] = []
        for s in snap.shards:
            now = (s.primary, s.switching_to)
            before = self._shards.get(s.index)
            self._shards[s.index] = now
            if s.switching_to is not None and (before is None or before[1] != s.switching_to):
                out.append(f"shard {s.index}: switching from {s.primary} to {s.switching_to}")
            elif before is not None and before[0] != s.primary:
                out.append(f"shard {s.index}: primary {s.primary} (epoch {s.epoch})")
        for m in snap.members:
            before_state = self._states.get(m.name)
            self._states[m.name] = m.state
            if m.state != before_state and not (self._first and m.state in QUIET):
                out.append(f"{m.name}: {m.state}")
            if m.total and m.copied != self._copied.get(m.name):
                last = self._copy_at.get(m.name)
                if last is None or elapsed - last >= self.every:
                    self._copy_at[m.name] = elapsed
                    self._copied[m.name] = m.copied
                    pct = min(100, 100 * m.copied // m.total)
                    out.append(f"{m.name}: copied {_mib(m.copied)} of {_mib(m.total)} ({pct}%)")
        self._first = False
        return [f"[{elapsed:6.1f}s] {line}" for line in out]


class _Live:
    """The terminal display: a pulsing bar for the wait, one row per member that is not
    (or was not) quiet, with its copy as a byte bar, and one per shard switching over."""

    def __init__(self, label: str, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[size]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.wait = self.progress.add_task(label, total=None, size="")
        self._tasks: dict[str, TaskID] = {}
        self._copied: dict[str, int] = {}
        self._seen: set[str] = set()
        self._first = True

    def show(self, snap: Snapshot) -> None:
        for s in snap.shards:
            key = f"shard {s.index}"
            if s.switching_to is None and key not in self._tasks:
                continue
            text = (
                f"{key}: switching {s.primary} → {s.switching_to}"
                if s.switching_to
                else f"{key}: primary {s.primary} (epoch {s.epoch})"
            )
            done = s.switching_to is None
            self._update(key, text, total=1, completed=1 if done else 0)
        for m in snap.members:
            known = self._first or m.name in self._seen
            self._seen.add(m.name)
            if m.name not in self._tasks and known and m.state in QUIET:
                continue
            text = f"{m.name}: {m.state}"
            if m.total:
                self._copied[m.name] = m.total
                size = f"{_mib(m.copied)} / {_mib(m.total)}"
                self._update(m.name, text, total=m.total, completed=m.copied, size=size)
            elif m.state in QUIET or m.name in self._copied:
                # (rich cannot make a bar indeterminate again: after a copy it stays full)
                whole = self._copied.get(m.name, 1)
                self._update(m.name, text, total=whole, completed=whole)
            else:
                self._update(m.name, text, total=None, completed=0)
        self._first = False

    def _update(
        self, key: str, text: str, total: int | None, completed: int, size: str = ""
    ) -> None:
        if key not in self._tasks:
            self._tasks[key] = self.progress.add_task(
                text, total=total, completed=completed, size=size
            )
        else:
            self.progress.update(
                self._tasks[key], description=text, total=total, completed=completed, size=size
            )


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def watching(
    cdir: ClusterDir,
    label: str,
    shards: frozenset[int] | None = None,
    poll: Callable[[], Snapshot] | None = None,
) -> Iterator[None]:
    """Show the cluster's progress on stderr while the block runs (see the module doc).

    ``poll`` replaces the cluster's snapshot (tests). A first snapshot is taken before
    the block runs and a last one when it ends, so the state the command waited for is
    always in the output."""
    take = poll or (lambda: snapshot(cdir, shards))
    live = _is_terminal(sys.stdout) and _is_terminal(sys.stderr)
    start = time.monotonic()
    stop = threading.Event()
    if live:
        display = _Live(label, Console(stderr=True))

        def show(snap: Snapshot) -> None:
            display.show(snap)
    else:
        plain = PlainLines()
        print(f"{label} …", file=sys.stderr, flush=True)

        def show(snap: Snapshot) -> None:
            for line in plain.lines(snap, time.monotonic() - start):
                print(line, file=sys.stderr, flush=True)

    def once() -> None:
        with contextlib.suppress(Exception):  # best effort: the command itself decides
            show(take())

    def loop() -> None:
        while not stop.is_set():
            once()
            stop.wait(POLL_SECONDS)

    thread = threading.Thread(target=loop, name="pgshard-progress", daemon=True)
    context = display.progress if live else contextlib.nullcontext()
    with context:
        once()  # before the command acts: what changes after it is the command's doing
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            if not thread.is_alive():
                once()
            if live:
                display.progress.update(display.wait, total=1, completed=1)
