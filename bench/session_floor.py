"""The cost of cross-session causality: a new session's first read, ``session`` vs ``eventual``.

Run: ``python3 -m bench.session_floor [--sessions 300] [--workers 1] [--writers 0]`` from
the repository root. Starts a primary, a streaming follower and pgshard-proxy; then,
alternating the two modes, opens a connection (not timed), times its first read (a
one-row SELECT by key) and closes it. ``session`` sessions take a floor before that
read (a primary position read after they connected); ``eventual`` ones do not, so the
difference of the medians is the floor's cost. ``--writers N`` keeps N sessions
updating meanwhile: the follower is then often behind a new session's floor and the
read waits for it (up to maxWaitMs) or goes to the primary. Prints medians, p90 and
where the reads went; asserts nothing. Everything it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "proxy")]

import asyncpg  # noqa: E402
from tests.support import pgserver  # noqa: E402
from tests.support import proxy as proxy_support  # noqa: E402

from pgshard_proxy.contract import topology  # noqa: E402

READ = "SELECT v, pg_last_wal_replay_lsn() IS NOT NULL FROM floor_kv WHERE k = $1"


async def first_read(dsn: str, mode: str, key: int) -> tuple[float, bool]:
    """Seconds the first read of a new ``mode`` session took; True if a follower served it."""
    conn = await asyncpg.connect(dsn, server_settings={"pgshard.consistency": mode})
    try:
        started = time.perf_counter()
        row = await conn.fetchrow(READ, key)
        return time.perf_counter() - started, bool(row[1])
    finally:
        await conn.close()


async def write_until(dsn: str, stop: asyncio.Event) -> int:
    conn = await asyncpg.connect(dsn)
    n = 0
    try:
        while not stop.is_set():
            await conn.execute("UPDATE floor_kv SET v = v + 1 WHERE k = $1", n % 100)
            n += 1
    finally:
        await conn.close()
    return n


async def measure(dsn: str, sessions: int, writers: int) -> None:
    setup = await asyncpg.connect(dsn)
    try:
        await setup.execute(
            "DROP TABLE IF EXISTS floor_kv; CREATE TABLE floor_kv (k int PRIMARY KEY, v int);"
            "INSERT INTO floor_kv SELECT g, 0 FROM generate_series(0, 99) g"
        )
    finally:
        await setup.close()
    await asyncio.sleep(1)  # the follower replays the table
    stop = asyncio.Event()
    writing = [asyncio.create_task(write_until(dsn, stop)) for _ in range(writers)]
    times: dict[str, list[float]] = {"session": [], "eventual": []}
    on_follower = dict.fromkeys(times, 0)
    try:
        for i in range(sessions):
            for mode in ("session", "eventual") if i % 2 else ("eventual", "session"):
                took, follower = await first_read(dsn, mode, i % 100)
                times[mode].append(took)
                on_follower[mode] += follower
    finally:
        stop.set()
        writes = sum(await asyncio.gather(*writing))
    print(f"{sessions} new sessions per mode, {writers} writers ({writes} updates meanwhile)")
    print(f"{'mode':<9} {'median ms':>9} {'p90 ms':>7} {'on follower':>11}")
    for mode, ts in times.items():
        p90 = statistics.quantiles(ts, n=10)[-1]
        print(
            f"{mode:<9} {statistics.median(ts) * 1000:>9.3f} {p90 * 1000:>7.3f} "
            f"{on_follower[mode]:>6}/{len(ts)}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=300)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--writers", type=int, default=0)
    ap.add_argument("--max-wait-ms", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgshard-bench-") as d:
        base = Path(d)
        base.chmod(0o755)
        server = pgserver.make_server(base, "primary")
        follower = proxy = None
        try:
            follower = pgserver.make_follower(server, base, "f1")
            primary = topology.Member("primary", f"{server.host}:{server.port}", server.dsn)
            f1 = topology.Member("f1", f"{follower.host}:{follower.port}", follower.dsn)
            topo = topology.Topology(
                shards=(topology.Shard(index=0, epoch=1, primary=primary, followers=(f1,)),)
            )
            proxy = proxy_support.start_proxy(
                base,
                topo,
                "--workers",
                str(args.workers),
                "--max-wait-ms",
                str(args.max_wait_ms),
            )
            print(f"proxy --workers {args.workers} --max-wait-ms {args.max_wait_ms}")
            asyncio.run(measure(proxy.dsn, args.sessions, args.writers))
        finally:
            if proxy is not None:
                proxy.stop()
            if follower is not None:
                follower.stop()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
