"""Run a command under a pseudo-terminal (stdlib ``pty``), as a user at a terminal would.

For commands whose output depends on stdout being a terminal (rich displays):
stdout and stderr both go to the terminal, so the output is what the user sees."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from collections.abc import Mapping, Sequence


def run(argv: Sequence[str], env: Mapping[str, str], timeout: float) -> tuple[int, str]:
    """The command's exit status and everything it wrote to the terminal (escape
    sequences included); killed (and an AssertionError) after ``timeout`` seconds."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm-256color", "COLUMNS": "120"},
            start_new_session=True,
        )
    finally:
        os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            out += data
        else:
            proc.kill()
            proc.wait(timeout=30)
            raise AssertionError(f"{argv} still running after {timeout}s:\n{out.decode()}")
        return proc.wait(timeout=30), out.decode(errors="replace")
    finally:
        with contextlib.suppress(OSError):
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
