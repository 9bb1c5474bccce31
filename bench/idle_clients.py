"""Memory of idle client connections: pgshard-proxy (transaction pooling) vs PgBouncer.

Run: ``python3 -m bench.idle_clients [--clients 5000] [--pool-size 10] [--metrics]``
from the repository root, as root (PostgreSQL and PgBouncer run as ``postgres``; the open-file
limit is raised for the clients). Starts a throwaway PostgreSQL 15 server, a proxy with
``--pool-mode transaction`` and PgBouncer in transaction pooling, both with ``trust``
authentication and the same pool size; opens the clients against each in turn (at
most 50 logging in at once), each running one ``SELECT 1`` (so it has borrowed a server
connection once), leaves them idle, and prints each process's resident memory before
and with them, per client, and the ratio. Then a ``SELECT 1`` on 100 of the idle
clients checks they still work. Prints numbers; asserts nothing. Everything it starts
is stopped by pid. ``--metrics``: the proxy also serves ``/metrics`` (as in a local
cluster or a pod), which loads aiohttp (~14 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "proxy")]

from tests.support import net, pgserver  # noqa: E402
from tests.support import proxy as proxy_support  # noqa: E402

from bench.proxy import start_pgbouncer  # noqa: E402
from pgshard_proxy.contract import topology  # noqa: E402

LOGGING_IN = 50
"""Clients logging in at once (the proxy closes the oldest beyond 100 pending)."""


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (the proxy's workers), in MB."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


async def open_idle(host: str, port: int, n: int) -> list[asyncpg.Connection]:
    conns: list[asyncpg.Connection] = []
    gate = asyncio.Semaphore(LOGGING_IN)

    async def one() -> None:
        async with gate:
            c = await asyncpg.connect(
                host=host, port=port, user="postgres", database="postgres", ssl=False,
                statement_cache_size=0, timeout=60,
            )  # fmt: skip
            await c.execute("SELECT 1")
            conns.append(c)

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


async def measure(name: str, pid: int, host: str, port: int, n: int) -> float:
    before = rss_mb(pid)
    t0 = time.monotonic()
    conns = await open_idle(host, port, n)
    took = time.monotonic() - t0
    await asyncio.sleep(2)  # let the process settle (buffers released)
    with_clients = rss_mb(pid)
    for c in conns[:: max(1, len(conns) // 100)]:
        assert await c.fetchval("SELECT 1") == 1
    await asyncio.gather(*(c.close() for c in conns))
    per_client_kb = (with_clients - before) * 1024 / n
    print(f"{name:<16} RSS {before:7.1f} MB idle, {with_clients:7.1f} MB with {n} clients "
          f"({per_client_kb:.1f} KB per client; connected in {took:.1f} s)",
          flush=True)  # fmt: skip
    return with_clients


async def bench(args: argparse.Namespace, base: Path) -> None:
    server = pgserver.make_server(base, "primary")
    try:
        primary = topology.Member("primary", f"{server.host}:{server.port}", server.dsn)
        topo = topology.Topology(shards=(topology.Shard(index=0, epoch=1, primary=primary),))
        config = base / "proxy.yaml"
        config.write_text(f"max_clients: {args.clients + 100}\n")
        metrics = ["--metrics-port", str(net.free_port(server.host))] if args.metrics else []
        proxy = proxy_support.start_proxy(
            base, topo, "--pool-mode", "transaction", "--pool-size", str(args.pool_size),
            "--auth-method", "trust", "--config", str(config), *metrics,
            user="postgres", password="bench", host=server.host,
        )  # fmt: skip
        try:
            (base / "bouncer").mkdir()
            bouncer, bouncer_port = start_pgbouncer(
                base / "bouncer", server, max_clients=args.clients + 100, pool_size=args.pool_size
            )
            try:
                print(f"load: {os.getloadavg()}; {args.clients} idle clients, pool of "
                      f"{args.pool_size} server connections each", flush=True)  # fmt: skip
                mine = await measure("pgshard-proxy", proxy.proc.pid, proxy.host, proxy.port,
                                     args.clients)  # fmt: skip
                theirs = await measure("pgbouncer", bouncer.pid, server.host, bouncer_port,
                                       args.clients)  # fmt: skip
                print(f"proxy / pgbouncer resident memory with the clients: {mine / theirs:.1f}x")
            finally:
                bouncer.terminate()
                bouncer.wait(10)
        finally:
            proxy.stop()
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--pool-size", type=int, default=10)
    ap.add_argument("--metrics", action="store_true", help="the proxy serves /metrics too")
    args = ap.parse_args()
    # Each side holds a descriptor per client (the clients here, the proxy or PgBouncer,
    # which inherit the limit).
    need = 2 * args.clients + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    with tempfile.TemporaryDirectory(prefix="pgshard-bench-") as d:
        base = Path(d)
        base.chmod(0o755)
        asyncio.run(bench(args, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
