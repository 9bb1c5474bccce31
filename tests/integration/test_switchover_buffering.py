"""Planned switchovers that clients of the proxy do not notice (issue 14).

A real local cluster; four writers through its proxy (asyncpg and psycopg, each
in autocommit and in explicit transactions) across several ``pgshard switchover``
runs. The control plane publishes the shard as ``switching`` before it fences the
primary; the proxy holds new requests for it until the new primary is published.
Autocommit writes and transactions that had not begun see no error; only a
transaction open on the old primary may end with 08007; no acknowledged write is
lost. Pauses are printed, not asserted.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.support import localcluster, switch_load


async def _all_streaming(c: localcluster.LocalCluster, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        shard = await asyncio.to_thread(c.shard, 0)
        if shard["followers"] and all(f["state"] == "streaming" for f in shard["followers"]):
            return shard
        if time.monotonic() > deadline:
            raise TimeoutError(f"followers not all streaming in {timeout}s: {shard['followers']}")
        await asyncio.sleep(0.3)


async def test_switchovers_under_writers_through_the_proxy(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, *localcluster.FAST, replicas=2) as c:
        dsn = c.status()["proxy"]["dsn"]
        await switch_load.create_table(dsn)
        async with switch_load.running(dsn) as load:
            await load.wait_acked(20)
            for target in ("s0m1", "s0m2", "s0m0"):
                await _all_streaming(c)
                out = await asyncio.to_thread(
                    c.cli, "switchover", f"--dir={c.dir}", "--shard=0", f"--to={target}"
                )
                assert f"to {target}" in out.stdout
                await load.wait_acked(20)
        switch_load.report(load)
        shard = await asyncio.to_thread(c.shard, 0)
        assert shard["primary"]["name"] == "s0m0"
        on_primary = await switch_load.ids_on(shard["primary"]["dsn"])
        assert not switch_load.problems(load, on_primary)
