"""pgbench through the proxy: statement replication vs WAL streaming, in one run.

Run: ``python3 -m bench.statement_proxy [--seconds S] [--clients N] [--scale K]`` from
the repository root. Starts two local clusters (one shard, one follower each), one with
``--replication-method wal`` and one with ``statement``; in each, ``pgbench -i -I dtGp``
through the proxy (tables, server-side data, keys: all logged in statement mode), then
TPC-B and ``-S`` through the proxy. Prints TPS, latency, the ratio statement/wal and,
for statement mode, how far the follower was behind (entries) right after TPC-B and how
long it took to catch up. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "proxy")]

from tests.support import localcluster  # noqa: E402

from bench.proxy import Result  # noqa: E402


class Proxy:
    """pgbench at a cluster's proxy, as its application user."""

    def __init__(self, c: localcluster.LocalCluster) -> None:
        u = urllib.parse.urlsplit(c.status()["proxy"]["dsn"])
        self.host, self.port = str(u.hostname), str(u.port)
        self.db = u.path.lstrip("/") or "postgres"
        self.env = dict(
            os.environ,
            PGUSER=urllib.parse.unquote(u.username or ""),
            PGPASSWORD=urllib.parse.unquote(u.password or ""),
        )

    def pgbench(self, args: list[str]) -> str:
        done = subprocess.run(
            ["pgbench", "-h", self.host, "-p", self.port, *args, self.db],
            capture_output=True, text=True, env=self.env, timeout=900,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pgbench {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        return done.stdout

    def measure(self, args: list[str]) -> Result:
        out = self.pgbench(args)
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
        lat = re.search(r"latency average = ([\d.]+) ms", out)
        if not tps or not lat:
            raise RuntimeError(f"cannot read pgbench output:\n{out}")
        return Result(float(tps.group(1)), float(lat.group(1)))


async def caught_up(c: localcluster.LocalCluster, timeout: float = 600) -> tuple[int, float]:
    """Entries the follower was behind, and seconds until it applied them."""
    shard = c.shard(0)
    behind = shard["primary"]["position"] - shard["followers"][0]["position"]
    start = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            shard = c.shard(0)
            if shard["followers"][0]["position"] >= shard["primary"]["position"]:
                return behind, time.monotonic() - start
            await asyncio.sleep(0.2)


def run(args: argparse.Namespace, base: Path) -> None:
    results: dict[tuple[str, str], Result] = {}
    lag: tuple[int, float] | None = None
    for method in ("wal", "statement"):
        (base / method).mkdir()
        (base / method).chmod(0o755)
        with localcluster.running(
            base / method, f"--replication-method={method}", shards=1, replicas=1
        ) as c:
            proxy = Proxy(c)
            proxy.pgbench(["-i", "-I", "dtGp", "-s", str(args.scale), "-q"])
            common = ["-T", str(int(args.seconds)), "-c", str(args.clients), "-j", "2", "-n"]
            for name, extra in (("tpcb", []), ("select", ["-S"])):
                results[(method, name)] = proxy.measure([*common, *extra])
                if method == "statement" and name == "tpcb":
                    lag = asyncio.run(caught_up(c))
    print(f"pgbench through the proxy, {args.clients} clients, {args.seconds:g} s, "
          f"scale {args.scale} (one shard, one follower)")  # fmt: skip
    for name in ("tpcb", "select"):
        w, s = results[("wal", name)], results[("statement", name)]
        print(
            f"  {name:6}  wal {w.tps:8.0f} TPS {w.latency_ms:6.2f} ms   statement "
            f"{s.tps:8.0f} TPS {s.latency_ms:6.2f} ms   ratio {s.tps / w.tps:.2f}"
        )
    if lag is not None:
        print(f"  statement follower after TPC-B: {lag[0]} entries behind, "
              f"caught up in {lag[1]:.1f} s")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(prog="python3 -m bench.statement_proxy", description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--scale", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgshard-bench-stmt-proxy-") as d:
        base = Path(d)
        base.chmod(0o755)
        run(args, base)


if __name__ == "__main__":
    main()
