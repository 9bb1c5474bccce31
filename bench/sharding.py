"""Sharding through pgshard-proxy: point queries and scatter reads, 1-3 shards vs direct.

Run: ``python3 -m bench.sharding [--rows 1000000] [--seconds 5] [--clients 8]`` from
the repository root. Starts three throwaway PostgreSQL 15 servers; the same rows of
``orders`` (distributed by ``customer_id``) are loaded into one database holding all
of them (``direct``) and, placed by ``contract.placement``, into 1-, 2- and 3-shard
layouts, each behind its own ``pgshard-proxy``. Prints, in one run:

- single-key point reads (``SELECT … WHERE customer_id = $1``) and writes
  (``UPDATE … WHERE customer_id = $1``), TPS with asyncpg clients, direct vs through
  the proxy on 1 and 2 shards;
- scatter ``count(*)`` and ``ORDER BY … LIMIT 10`` latency (median of runs) on 2 and
  3 shards vs one PostgreSQL with every row;
- the proxy's peak memory (VmHWM) around a scatter of every row merged in order.

Prints numbers and ratios; asserts nothing. Everything it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "proxy")]

import asyncpg  # noqa: E402
from tests.support import pgserver  # noqa: E402
from tests.support import proxy as proxy_support  # noqa: E402

from pgshard_proxy.contract import placement, topology  # noqa: E402

SCHEMA = "CREATE TABLE orders (customer_id bigint NOT NULL, id bigint, total int, note text)"


def _layout(servers: list[pgserver.PgServer], n: int, db: str) -> topology.Topology:
    return topology.Topology(
        shards=tuple(
            topology.Shard(
                index=i,
                epoch=1,
                primary=topology.Member(
                    f"s{i}", f"{s.host}:{s.port}", s.dsn.rsplit("/", 1)[0] + "/" + db
                ),
                hash_range=r,
            )
            for i, (s, r) in enumerate(zip(servers[:n], topology.hash_ranges(n), strict=True))
        ),
        tables=(topology.DistributedTable("orders", "customer_id"),),
    )


async def _load(servers: list[pgserver.PgServer], rows: int) -> int:
    customers = max(rows // 10, 1)
    data = [(i % customers, i, i * 7 % 1000, f"n{i % 97}") for i in range(rows)]
    shard_of: dict[int, list[int]] = {}
    for n in (2, 3):
        ranges = topology.hash_ranges(n)
        shard_of[n] = []
        for c in range(customers):
            h = placement.reduce(placement.hash_key(c, placement.KeyType.INTEGER))
            shard_of[n].append(next(i for i, (lo, hi) in enumerate(ranges) if lo <= h < hi))
    admin = await asyncpg.connect(servers[0].dsn)
    for db in ("direct", "l1"):
        await admin.execute(f"CREATE DATABASE {db}")
    await admin.close()
    for s in servers:
        a = await asyncpg.connect(s.dsn)
        for db in ("l2", "l3"):
            await a.execute(f"CREATE DATABASE {db}")
        await a.close()
    targets = [(servers[0], "direct", data), (servers[0], "l1", data)]
    for n in (2, 3):
        for i in range(n):
            mine = [r for r in data if shard_of[n][r[0]] == i]
            targets.append((servers[i], f"l{n}", mine))
    for s, db, part in targets:
        c = await asyncpg.connect(s.dsn.rsplit("/", 1)[0] + "/" + db)
        await c.execute(SCHEMA)
        await c.copy_records_to_table("orders", records=part)
        await c.execute("CREATE INDEX ON orders (customer_id); ANALYZE orders")
        await c.close()
    return customers


async def _tps(dsn: str, sql: str, customers: int, clients: int, seconds: float) -> float:
    conns = [await asyncpg.connect(dsn) for _ in range(clients)]
    done = 0
    stop = time.monotonic() + seconds

    async def worker(c: asyncpg.Connection) -> None:
        nonlocal done
        rng = random.Random()
        while time.monotonic() < stop:
            await c.fetch(sql, rng.randrange(customers))
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.monotonic() - start
    for c in conns:
        await c.close()
    return done / elapsed


async def _latency_ms(dsn: str, sql: str, runs: int) -> float:
    c = await asyncpg.connect(dsn)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        await c.fetch(sql)
        times.append((time.perf_counter() - t) * 1000)
    await c.close()
    return statistics.median(times)


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="pgshard-bench-") as d:
        base = Path(d)
        await asyncio.to_thread(base.chmod, 0o755)
        servers = [pgserver.make_server(base, f"pg{i}") for i in range(3)]
        proxies: dict[int, proxy_support.ProxyProc] = {}
        try:
            t = time.monotonic()
            customers = await _load(servers, args.rows)
            print(f"loaded {args.rows} rows ({customers} customers) in {time.monotonic() - t:.1f}s")
            for n in (1, 2, 3):
                work = base / f"proxy{n}"
                work.mkdir()
                proxies[n] = proxy_support.start_proxy(work, _layout(servers, n, f"l{n}"))
            direct = servers[0].dsn.rsplit("/", 1)[0] + "/direct"

            def via(n: int) -> str:
                return proxies[n].dsn.rsplit("/", 1)[0] + f"/l{n}"

            print(
                f"\npoint queries, {args.clients} asyncpg clients, {args.seconds:.0f}s each (TPS)"
            )
            for label, sql in (
                ("read ", "SELECT * FROM orders WHERE customer_id = $1"),
                ("write", "UPDATE orders SET total = total + 1 WHERE customer_id = $1"),
            ):
                d_tps = await _tps(direct, sql, customers, args.clients, args.seconds)
                one = await _tps(via(1), sql, customers, args.clients, args.seconds)
                two = await _tps(via(2), sql, customers, args.clients, args.seconds)
                print(
                    f"  {label}: direct {d_tps:8.0f}  proxy 1 shard {one:8.0f} ({one / d_tps:.2f}x)"
                    f"  proxy 2 shards {two:8.0f} ({two / d_tps:.2f}x, {two / one:.2f}x of 1)"
                )
            print(f"\nscatter reads, median of {args.runs} runs (ms)")
            for label, sql in (
                ("count(*)            ", "SELECT count(*) FROM orders"),
                ("ORDER BY … LIMIT 10 ", "SELECT * FROM orders ORDER BY total DESC, id LIMIT 10"),
            ):
                base_ms = await _latency_ms(direct, sql, args.runs)
                two = await _latency_ms(via(2), sql, args.runs)
                three = await _latency_ms(via(3), sql, args.runs)
                print(
                    f"  {label}: one PostgreSQL {base_ms:7.1f}   2 shards {two:7.1f} "
                    f"({two / base_ms:.2f}x)   3 shards {three:7.1f} ({three / base_ms:.2f}x)"
                )
            pid = proxies[2].proc.pid
            before = _vm_hwm_kb(pid)
            env = proxies[2].libpq_env()
            t = time.monotonic()
            await asyncio.to_thread(
                subprocess.run,
                ["psql", "-X", "-q", "-h", proxies[2].host, "-p", str(proxies[2].port),
                 "-U", proxies[2].user, "-d", "l2", "-o", "/dev/null",
                 "-c", "SELECT id, total, note FROM orders ORDER BY id"],
                env=env, check=True, timeout=1200,
            )  # fmt: skip
            print(
                f"\nmerge of all {args.rows} rows in order through 2 shards: "
                f"{time.monotonic() - t:.1f}s; proxy peak RSS {before / 1024:.0f} MB before, "
                f"{_vm_hwm_kb(pid) / 1024:.0f} MB after"
            )
        finally:
            for p in proxies.values():
                p.stop()
            for s in servers:
                s.stop()


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--runs", type=int, default=20)
    asyncio.run(main(p.parse_args()))


if __name__ == "__main__":
    cli()
