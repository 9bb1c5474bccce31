"""A merge-sorted scatter keeps a shard that runs ahead paused, whoever resumes it.

The session resumes every server it holds when the client drains its socket; a shard
the merge paused (its rows wait for a slower shard) must stay paused, or its rows
pile up in the proxy (the 1M-row bench's memory growth). Real server connections
over a transport that delivers a chunk only while reading.
"""

from __future__ import annotations

import asyncio
import struct

import sqlglot

from pgshard_proxy.execute import scatter as scatter_run
from pgshard_proxy.pool.backend import BackendConnection
from pgshard_proxy.routing import scatter


class _Transport:
    """Records whether its connection reads; nothing is sent anywhere."""

    def __init__(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str) -> None:
        return None

    def write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def _msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


def _description() -> bytes:
    column = struct.pack("!ihihih", 0, 0, 23, 4, -1, 0)
    body = struct.pack("!h", 2) + b"k\x00" + column + b"__pgshard_sort_0\x00" + column
    return _msg(b"T", body)


def _rows(start: int, n: int) -> bytes:
    out = []
    for k in range(start, start + n):
        v = str(k).encode()
        out.append(_msg(b"D", struct.pack("!h", 2) + (struct.pack("!i", len(v)) + v) * 2))
    return b"".join(out)


async def test_a_shard_ahead_of_the_merge_stays_paused() -> None:
    tree = sqlglot.parse_one("SELECT k FROM t ORDER BY k", dialect="postgres")
    plan = scatter.plan_scatter(tree)
    assert isinstance(plan, scatter.ScatterPlan) and plan.hidden == 1
    servers, transports = [], []
    for i in range(2):
        b = BackendConnection(f"s{i}", "127.0.0.1:1", "db")
        transports.append(_Transport())
        b.connection_made(transports[-1])  # type: ignore[arg-type]
        b.pending.append(0)  # type: ignore[arg-type]  # a request is outstanding
        servers.append(b)
    run = scatter_run.ScatterRun(plan, servers, lambda data: None)
    task = asyncio.get_running_loop().create_task(run.run(scatter_run.Request()))
    await asyncio.sleep(0)
    for b in servers:
        b.data_received(_description())
    worst = 0
    for chunk in range(40):
        if transports[0].reading:
            servers[0].data_received(_rows(chunk * 500, 500))  # the slow shard sends nothing
        else:
            for b in servers:
                b.pause_reading(True)  # the client's socket filled up, then drained
                b.pause_reading(False)
        assert run.rows is not None
        worst = max(worst, len(run.rows.buffers[0]))
    assert worst <= scatter_run.PAUSE_ROWS + 500, worst
    assert not transports[0].reading
    task.cancel()


async def test_a_shard_error_reads_the_paused_shard_to_its_end() -> None:
    tree = sqlglot.parse_one("SELECT k FROM t ORDER BY k", dialect="postgres")
    plan = scatter.plan_scatter(tree)
    assert isinstance(plan, scatter.ScatterPlan)
    servers, transports = [], []
    for i in range(2):
        b = BackendConnection(f"s{i}", "127.0.0.1:1", "db")
        transports.append(_Transport())
        b.connection_made(transports[-1])  # type: ignore[arg-type]
        b.pending.append(0)  # type: ignore[arg-type]
        servers.append(b)
    written: list[bytes] = []
    run = scatter_run.ScatterRun(plan, servers, written.append)
    task = asyncio.get_running_loop().create_task(run.run(scatter_run.Request()))
    await asyncio.sleep(0)
    for b in servers:
        b.data_received(_description())
    servers[0].data_received(_rows(0, 3000))
    assert not transports[0].reading  # ahead of shard 1: paused
    error = _msg(b"E", b"SERROR\x00C57014\x00Mcanceled\x00\x00")
    servers[1].data_received(error + _msg(b"Z", b"I"))
    assert transports[0].reading  # read on to its end, its rows dropped
    servers[0].data_received(_rows(3000, 10) + _msg(b"C", b"SELECT 3010\x00") + _msg(b"Z", b"I"))
    assert await asyncio.wait_for(task, 5) == ord("I")
    assert b"57014" in b"".join(written)
