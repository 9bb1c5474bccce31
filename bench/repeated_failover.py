"""Primary failures in a row (issue 16's "done when"); prints numbers, asserts nothing.

Run: ``python3 -m bench.repeated_failover [--failures 10] [--gap 20-30] [--mode sync]``
from the repository root (PostgreSQL 15; about failures x gap seconds). One shard,
two followers, ``replication.mode`` sync by default, default lease (3 s) and
detection (2 s), cooldown 5 s. A writer inserts one row per transaction through the
proxy. Every ``gap`` seconds (uniform in the range, seeded) the current primary is
killed with SIGKILL, whether or not the last old primary has rejoined yet.

Printed per failure and at the end: seconds from the kill until the topology named
the next primary and until that primary acknowledged a write (the time without a
writable primary), worst and median; acknowledged rows lost once all are back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from tests.support import localcluster, writer
from tests.support import repeated_failures as rf


async def run(failures: int, gap: tuple[float, float], mode: str, seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="pgshard-bench-") as d:
        os.chmod(d, 0o755)
        with localcluster.running(
            Path(d), f"--replication-mode={mode}", "--cooldown-seconds=5", replicas=2
        ) as c:
            async with writer.running(c.status()["proxy"]["dsn"]) as w:
                await w.wait_acked(100)
                shard = await asyncio.to_thread(c.shard, 0)
                outages: list[rf.Outage] = []
                for i in range(failures):
                    t0 = time.monotonic()
                    outage, shard = await rf.fail_primary(c, w, shard, timeout=300)
                    outages.append(outage)
                    print(
                        f"failure {i + 1}: killed {outage.killed}, {outage.promoted} primary at "
                        f"epoch {outage.epoch}: published after {outage.published_after:.2f} s, "
                        f"first write after {outage.writable_after:.2f} s",
                        flush=True,
                    )
                    wait = rng.uniform(*gap) - (time.monotonic() - t0)
                    await asyncio.sleep(max(0.0, wait))
            shard = await rf.until_all_streaming(c, timeout=300)
            lost = set(w.acked) - await writer.ids_on(shard["primary"]["dsn"])
    published = [o.published_after for o in outages]
    writable = [o.writable_after for o in outages]
    print(
        f"\nrepeated failover bench: {mode} mode, 1 shard, 2 followers, {failures} kill -9 of "
        f"the primary {gap[0]:g}-{gap[1]:g} s apart (seed {seed})"
    )
    print(
        f"kill -> new primary published      median {statistics.median(published):6.2f} s   "
        f"worst {max(published):6.2f} s"
    )
    print(
        f"kill -> first write on new primary median {statistics.median(writable):6.2f} s   "
        f"worst {max(writable):6.2f} s"
    )
    print(f"acknowledged rows {len(w.acked)}, lost {len(lost)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--failures", type=int, default=10)
    p.add_argument("--gap", default="20-30", help="seconds between kills, LOW-HIGH")
    p.add_argument("--mode", choices=("sync", "quorum", "async"), default="sync")
    p.add_argument("--seed", type=int, default=16)
    a = p.parse_args()
    low, _, high = a.gap.partition("-")
    asyncio.run(run(a.failures, (float(low), float(high or low)), a.mode, a.seed))
