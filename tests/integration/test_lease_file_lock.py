"""A process frozen while it holds the local lease file's lock stops nobody for long.

The local lease is a JSON file whose changes hold an ``fcntl`` lock. An agent
renewing its lease holds it for milliseconds, but a SIGSTOP at that moment keeps it
until SIGCONT: ``pgshard verify`` froze a primary's agent there, and the supervisor,
which read the lease under the same lock on its event loop, stopped every shard's
manager until the end of the run. Here another real process holds the lock: reads
still answer at once, changes give up with a clear error, and work again once the
holder is gone.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgshard_operator import atomicfile
from pgshard_operator.instance import lease

HOLD = """
import fcntl, os, sys, time
fcntl.flock(os.open(sys.argv[1], os.O_RDWR | os.O_CREAT), fcntl.LOCK_EX)
time.sleep(60)
"""
"""A process that takes the lock and keeps it, as a frozen agent would."""
BOUND = 10.0
"""Seconds any call may take here before the test calls it blocked."""


def _bounded(pool: concurrent.futures.ThreadPoolExecutor, fn: object, *args: object) -> object:
    future = pool.submit(fn, *args)  # type: ignore[arg-type]
    done, _ = concurrent.futures.wait([future], timeout=BOUND)
    if not done:
        raise AssertionError(f"{fn} blocked on the held lock")
    return future.result()


def test_a_held_lease_lock_blocks_no_reader_and_no_writer_for_long(pg_tmp: Path) -> None:
    store = lease.FileLeaseStore(pg_tmp / "lease-0.json")
    now = time.time()
    taken = store.take("s0m0", 5.0, now, epoch=1)
    assert taken is not None
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store.path.with_suffix(".lock"))])
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    try:
        deadline = time.monotonic() + BOUND
        while not atomicfile.is_locked(store.path.with_suffix(".lock")):
            assert time.monotonic() < deadline, "the holder never took the lock"
            time.sleep(0.01)

        assert _bounded(pool, store.read) == taken
        with pytest.raises(atomicfile.LockTimeout, match="stayed locked"):
            _bounded(pool, store.compare_and_set, taken, lease.Lease("s0m1", now + 5, 2))
        with pytest.raises(atomicfile.LockTimeout):
            _bounded(pool, store.renew, "s0m0", 5.0, now)

        holder.kill()
        holder.wait()
        moved = _bounded(pool, store.compare_and_set, taken, lease.Lease("s0m1", now + 5, 2))
        assert isinstance(moved, lease.Lease) and moved.holder == "s0m1"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        pool.shutdown(wait=False, cancel_futures=True)
