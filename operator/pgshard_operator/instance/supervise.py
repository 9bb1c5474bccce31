"""Run one PostgreSQL server as a child process: start, restart after a crash, stop.

Owned by the instance agent (agent.py), which decides *whether* the server should
run (``wanted``); this module only makes reality follow: a server that exits
while wanted is restarted after a back-off that doubles up to ``MAX_BACKOFF``
and resets once it has stayed up for ``STABLE_AFTER`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

from .. import proctree
from . import postgres

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.5
MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0


def next_backoff(previous: float, ran_for: float) -> float:
    """Pure: the delay before the next restart, given the last one and how long it ran."""
    if ran_for >= STABLE_AFTER:
        return MIN_BACKOFF
    return min(MAX_BACKOFF, max(MIN_BACKOFF, previous * 2))


class PostgresSupervisor:
    def __init__(
        self,
        bins: postgres.Binaries,
        datadir: Path,
        log_path: Path,
        may_restart: Callable[[], bool] = lambda: True,
    ) -> None:
        self._may_restart = may_restart
        self._bins = bins
        self._datadir = datadir
        self._log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._backoff = 0.0
        self._changed = asyncio.Event()
        self.wanted = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        if self._proc is None or self._proc.returncode is not None:
            return None
        return self._proc.pid

    @property
    def process(self) -> asyncio.subprocess.Process | None:
        return self._proc

    async def start(self) -> asyncio.subprocess.Process:
        """Start the server now (it must not be running) and keep it running."""
        self.wanted = True
        if self.pid is None:
            self._proc = await postgres.spawn(self._bins, self._datadir, self._log_path)
            self._started_at = time.monotonic()
            log.info("postgres started (pid %d)", self._proc.pid)
        self._changed.set()
        return self._proc  # type: ignore[return-value]

    async def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, WAL is sent to followers first."""
        self.wanted = False
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), wait)
                return
            except TimeoutError:
                log.warning("postgres (pid %d) did not stop after %s", proc.pid, sig.name)
        self.kill()
        await proc.wait()

    def kill(self) -> None:
        """Kill the server and all its backends at once; no restart follows."""
        self.wanted = False
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proctree.kill_tree(proc.pid)

    def fence(self, grace: float) -> None:
        """Stop the server so it acknowledges no further commit, keeping what it acked.

        A fast shutdown (SIGINT) ends every backend at once, so nothing new commits, but
        lets the WAL senders ship the WAL of commits already acknowledged before the
        server exits (a SIGKILL drops what an async follower had not received yet).
        If the server has not exited ``grace`` seconds later, it is killed: the agent
        passes half its fence margin, so the kill lands before its lease can expire.
        No restart follows."""
        self.wanted = False
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        asyncio.get_running_loop().call_later(grace, self._kill_unless_ended, proc)

    def _kill_unless_ended(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None and not self.wanted:
            log.warning(
                "postgres (pid %d) still running after the fence's grace: killing it", proc.pid
            )
            proctree.kill_tree(proc.pid)

    async def run(self) -> None:
        """Forever: restart the server whenever it exits while wanted."""
        while True:
            proc = self._proc
            if proc is None or not self.wanted:
                self._changed.clear()
                await self._changed.wait()
                continue
            # Returns at once for a server that already exited while this loop was not
            # watching it (e.g. one started by a rejoin during our back-off): it is wanted,
            # so it must be restarted like any other crash, not waited on forever.
            code = await proc.wait()
            if not self.wanted or proc is not self._proc:
                continue
            ran = time.monotonic() - self._started_at
            self._backoff = next_backoff(self._backoff, ran)
            log.warning(
                "postgres exited with status %s after %.1fs; restarting in %.1fs",
                code,
                ran,
                self._backoff,
            )
            await asyncio.sleep(self._backoff)
            # A primary's server restarts only while its lease is still valid (the agent
            # renews it in this check), so a crashed primary never serves past its lease.
            if self.wanted and (self._proc is proc) and self._may_restart():
                self.restarts += 1
                self._proc = None
                await self.start()
