"""PositionMonitor.update never holds up the proxy's topology loop (issue 15).

The proxy applies topologies one after the other and awaits ``monitor.update`` for
each; a member's watch task that does not stop when cancelled once (Python 3.11's
``asyncio.wait_for`` can swallow a cancellation that meets the awaited result)
must not keep every later topology from being applied.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pgshard_proxy.consistency.monitor import MonitorSettings, PositionMonitor
from pgshard_proxy.contract.topology import Member, Shard, Topology

OLD = Member("old", "198.18.0.3:5432", "postgresql://x@198.18.0.3:5432/app")
NEW = Member("new", "198.18.0.4:5432", "postgresql://x@198.18.0.4:5432/app")


async def connect_ignoring_one_cancel(dsn: str, timeout: float) -> Any:
    """A connect that never completes and shrugs off the first cancellation."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def test_a_watch_that_ignores_its_cancellation_does_not_block_update() -> None:
    settings = MonitorSettings(connect_timeout=3600)
    monitor = PositionMonitor(settings, connect=connect_ignoring_one_cancel)
    await monitor.update(Topology(shards=(Shard(0, 0, OLD),)))
    await asyncio.sleep(0.05)  # the watch of "old" is connecting
    loop = asyncio.get_running_loop()
    try:
        start = loop.time()
        update = asyncio.ensure_future(monitor.update(Topology(shards=(Shard(0, 1, NEW),))))
        await asyncio.wait({update}, timeout=10)
        took = loop.time() - start
        assert update.done()
        assert took < 3, f"update took {took:.1f}s"
    finally:
        await asyncio.wait({asyncio.ensure_future(monitor.close())}, timeout=10)
