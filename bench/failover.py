"""Failover timings of a real ``pgshard local`` cluster; prints numbers, asserts nothing.

Run: ``python3 -m bench.failover [--runs 5]`` from the repository root (needs
PostgreSQL 15; takes a few minutes). One shard, two followers, default lease
(3 s) and detection (2 s) settings; cooldown 0 so that runs can follow each
other. A writer inserts rows one per transaction through ``DIR/topology.json``
(as the proxy would) and records when each was acknowledged and by whom.

Measured, median and max over the runs:
- kill -9 of the primary -> first acknowledged write on the new primary;
- SIGSTOP of the primary -> first write on the new primary (bounded by the lease);
- ``pgshard switchover`` -> first write on the new primary;
- acknowledged rows lost by a kill -9 under write load, async vs sync mode.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.support import localcluster, writer

from pgshard_operator import cli

Fault = Callable[[localcluster.LocalCluster, str], Awaitable[None]]


def _kill(sig: str) -> Fault:
    async def fault(c: localcluster.LocalCluster, primary: str) -> None:
        args = ["local", "kill", f"--dir={c.dir}", "--shard=0", f"--member={primary}"]
        await asyncio.to_thread(cli.main, [*args, f"--signal={sig}"])

    return fault


async def _switchover(c: localcluster.LocalCluster, primary: str) -> None:
    await asyncio.to_thread(cli.main, ["switchover", f"--dir={c.dir}", "--shard=0"])


async def _healthy(c: localcluster.LocalCluster, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shard = await asyncio.to_thread(c.shard, 0)
        if shard["primary"] and all(f["state"] == "streaming" for f in shard["followers"]):
            return shard
        await asyncio.sleep(0.3)
    raise TimeoutError("the shard did not become healthy again")


async def _first_write_elsewhere(w: writer.Writer, t0: float, old_dsn: str) -> None:
    deadline = time.monotonic() + 120
    # Polls the writer's acknowledgements (filled by its own task); 10 ms resolution is plenty.
    while not any(a.at > t0 and a.dsn != old_dsn for a in w.acks):
        if time.monotonic() > deadline:
            raise TimeoutError("no write reached a new primary within 120 s")
        await asyncio.sleep(0.01)


async def one_run(
    c: localcluster.LocalCluster, fault: Fault, resume: str | None
) -> tuple[float, int]:
    """Seconds from the fault to the first write on the new primary; rows lost."""
    shard = await _healthy(c)
    old = shard["primary"]
    assert isinstance(old, dict)
    # Short client timeouts: a frozen primary must not hold the writer longer than this.
    async with writer.running(c.dir / "topology.json", timeout=1.0) as w:
        await w.wait_acked(200)
        t0 = time.monotonic()
        await fault(c, old["name"])
        try:
            await _first_write_elsewhere(w, t0, str(old["dsn"]))
        finally:
            if resume is not None:
                await _kill(resume)(c, old["name"])
        first = min(a.at for a in w.acks if a.at > t0 and a.dsn != old["dsn"])
        await w.wait_acked(50)
    shard = await _healthy(c)
    primary = shard["primary"]
    assert isinstance(primary, dict)
    lost = len(set(w.acked) - await writer.ids_on(primary["dsn"]))
    return first - t0, lost


def report(name: str, values: list[float], unit: str = "s") -> None:
    print(
        f"{name:<44} median {statistics.median(values):7.2f} {unit}   "
        f"max {max(values):7.2f} {unit}   n={len(values)}"
    )


async def scenario(mode: str, runs: int, base: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with localcluster.running(
        base, f"--replication-mode={mode}", "--cooldown-seconds=0", replicas=2
    ) as c:
        plans: list[tuple[str, Fault, str | None]] = [("kill -9", _kill("KILL"), None)]
        if mode == "async":
            plans += [("SIGSTOP", _kill("STOP"), "CONT"), ("switchover", _switchover, None)]
        for name, fault, resume in plans:
            for _ in range(runs):
                try:
                    secs, lost = await one_run(c, fault, resume)
                except TimeoutError as e:
                    print(f"{mode}: {name}: run failed: {e}", file=sys.stderr)
                    out.setdefault(f"{mode}: {name}, failed runs", []).append(1)
                    continue
                out.setdefault(f"{mode}: {name} -> first write", []).append(secs)
                print(f"{mode}: {name}: first write after {secs:.2f} s, {lost} rows lost")
                if name == "kill -9":
                    out.setdefault(f"{mode}: kill -9, acknowledged rows lost", []).append(lost)
    return out


async def main(runs: int) -> None:
    results: dict[str, list[float]] = {}
    for mode in ("async", "sync"):
        with tempfile.TemporaryDirectory(prefix="pgshard-bench-") as d:
            os.chmod(d, 0o755)
            results.update(await scenario(mode, runs, Path(d)))
    print(f"\nfailover bench: 1 shard, 2 followers, lease 3 s, detection 2 s, {runs} runs each")
    for name, values in results.items():
        unit = "rows" if "lost" in name else "runs" if "failed" in name else "s"
        report(name, values, unit)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=5)
    asyncio.run(main(p.parse_args().runs))
