"""``pgshard local upgrade`` PostgreSQL 15 -> 18 under a writer through the proxy.

Run: ``python3 -m bench.upgrade [--replicas N]`` from the repository root (needs
PostgreSQL 15 and installs PostgreSQL 18 with scripts/install-postgres18; about a
minute). One local cluster (one shard, ``--replicas`` followers, statement method) on
PostgreSQL 15; one writer (tests/support/writer.py: autocommit inserts, each its own
transaction) through the proxy while ``local upgrade`` moves every member to 18.
Prints how long the upgrade took, the writer's longest pause between two
acknowledged inserts during it (the write pause), its failed requests, and whether
every acknowledged insert is on every member once the followers caught up. Asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support import localcluster, pg18, writer


async def settled(c: localcluster.LocalCluster, timeout: float = 120) -> dict[str, Any]:
    """Shard 0 once every follower applied all the primary logged (or after ``timeout``:
    then what is missing on a follower may still be on its way)."""
    deadline = time.monotonic() + timeout
    while True:
        shard: dict[str, Any] = await asyncio.to_thread(c.shard, 0)
        target = shard["primary"]["position"]
        if time.monotonic() > deadline or all(
            (f["state"], f["position"]) == ("streaming", target) for f in shard["followers"]
        ):
            return shard
        await asyncio.sleep(0.3)


async def run(base: Path, replicas: int) -> None:
    new = pg18.install()
    with localcluster.running(
        base,
        "--replication-method=statement",
        "--cooldown-seconds=0",
        "--no-tls",  # the PostgreSQL 18 of scripts/install-postgres18 is built without SSL
        shards=1,
        replicas=replicas,
    ) as c:
        dsn = c.status()["proxy"]["dsn"]
        async with writer.running(dsn, timeout=10) as w:
            await w.wait_acked(50)
            began = time.monotonic()
            await asyncio.to_thread(
                c.cli, "local", "upgrade", f"--dir={c.dir}", f"--bindir={new}", "--timeout=600"
            )
            ended = time.monotonic()
            await w.wait_acked(50)
        during = [a.at for a in w.acks if began <= a.at <= ended]
        edges = [max((a.at for a in w.acks if a.at < began), default=began), *during]
        edges.append(min((a.at for a in w.acks if a.at > ended), default=ended))
        pause = max(b - a for a, b in itertools.pairwise(edges))
        shard = await settled(c)
        acked = set(w.acked)
        lost = {
            m["name"]: len(acked - await writer.ids_on(m["dsn"]))
            for m in (shard["primary"], *shard["followers"])
        }
        versions = c.status()["serverVersions"]
    print(f"upgrade 15 -> 18, 1 shard, {replicas} follower(s): {ended - began:.1f} s")
    print(f"  writer: {len(w.acks)} inserts acknowledged ({len(during)} during the upgrade), "
          f"{len(w.errors)} failed, {len(w.hung)} hung")  # fmt: skip
    print(f"  write pause (longest gap between acknowledged inserts): {pause * 1000:.0f} ms")
    print(f"  acknowledged inserts missing afterwards: {lost}; server versions: {versions}")
    for e in w.errors[:5]:
        print(f"  error: {e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--replicas", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgshard-bench-") as d:
        os.chmod(d, 0o755)
        asyncio.run(run(Path(d), args.replicas))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
