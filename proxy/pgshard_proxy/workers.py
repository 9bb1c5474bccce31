"""Worker processes: ``--workers N`` copies of the proxy sharing one listening port.

Called by ``main`` before any event loop exists. The parent forks one child per
worker; each child runs the whole proxy (its own sessions, pools and position
monitor) and listens with ``SO_REUSEPORT``, so the kernel spreads new
connections over the workers. A CancelRequest may reach any worker; the cancel
key names the worker that owns the session (``server.cancel``), and workers pass
such requests to each other over Unix sockets in a private directory made here.

The parent only supervises: a worker that dies (killed, crashed) is started again,
at most once a second per worker, and the others never notice; SIGTERM/SIGINT are
passed to every worker and waited for (killed after ``STOP_TIMEOUT``). A worker
that fails within ``STARTUP_GRACE`` seconds of its start with an error status
(a port in use, a bad setting) stops the whole proxy with that status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0
STARTUP_GRACE = 5.0


def supervise(
    count: int, run_worker: Callable[[int, Path], int], exit_with_parent: bool = False
) -> int:
    """Run ``run_worker(index, cancel_dir)`` in ``count`` child processes until stopped."""
    cancel_dir = Path(tempfile.mkdtemp(prefix="pgshard-proxy-"))
    children: dict[int, int] = {}  # pid -> worker index
    started: dict[int, float] = {}
    stop_at: float | None = None
    status = 0

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = run_worker(index, cancel_dir)
            finally:
                os._exit(code)
        children[pid] = index
        started[index] = time.monotonic()
        log.warning("worker %d started (pid %d)", index, pid)

    def stop(signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        nonlocal stop_at
        if stop_at is None:
            stop_at = time.monotonic() + STOP_TIMEOUT
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    parent = os.getppid()
    try:
        for index in range(count):
            start(index)
        while children:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.2)
                if stop_at is None and exit_with_parent and os.getppid() != parent:
                    log.warning("parent process %d exited; stopping the workers", parent)
                    stop()
                if stop_at is not None and time.monotonic() > stop_at:
                    for child in children:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child, signal.SIGKILL)
                continue
            index = children.pop(pid)
            if stop_at is not None:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            if code > 0 and time.monotonic() - started[index] < STARTUP_GRACE:
                log.error("worker %d failed at start (status %d); stopping", index, code)
                status = code
                stop()
                continue
            log.error("worker %d (pid %d) ended (status %d); starting it again", index, pid, code)
            time.sleep(max(0.0, started[index] + 1 - time.monotonic()))
            start(index)
    finally:
        shutil.rmtree(cancel_dir, ignore_errors=True)
    return status
