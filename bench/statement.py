"""Statement replication's costs on real servers: log writing, applying, lag, bootstrap.

Run: ``python3 -m bench.statement [--seconds S] [--sessions N] [--mb MB]`` from the
repository root. Two plain PostgreSQL servers on loopback (a primary and a follower
copied from it by ``pg_dump --snapshot``). Prints, asserting nothing:

- write transactions/s of N sessions doing one-row UPDATEs by key, plain vs under the
  log writer's protocol (write lock + appended entry, tests/support/statement_writer.py),
  and their ratio (the protocol's cost on direct connections; ``bench.statement_proxy``
  measures it through the proxy);
- the applier's rate catching up that backlog (entries/s), in batches per local
  transaction and one entry per transaction (two followers copied at the same point);
- the lag (entries) sampled while the writers and the applier run together;
- bootstrap time of a database of ``--mb`` MB: ``pg_dump --snapshot`` + ``pg_restore``
  (statement mode) vs ``pg_basebackup`` (wal mode), same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "proxy")]

from tests.support import pgserver  # noqa: E402
from tests.support.statement_writer import Write, write  # noqa: E402

from pgshard_operator.instance import applier, dumpcopy, postgres  # noqa: E402
from pgshard_proxy.contract import statement_log as slog  # noqa: E402
from pgshard_proxy.execute.statement_log import SETTINGS, SETTINGS_SQL  # noqa: E402

ROWS = 1000


def dsn(s: pgserver.PgServer, db: str = "app") -> str:
    return f"postgresql://{s.user}@{s.host}:{s.port}/{db}"


def endpoint(s: pgserver.PgServer) -> dumpcopy.Endpoint:
    return dumpcopy.Endpoint(s.host, s.port, s.user, "app")


async def setup(primary: pgserver.PgServer, followers: list[pgserver.PgServer], mb: int) -> None:
    for s in (primary, *followers):
        c = await asyncpg.connect(s.dsn)
        await c.execute("CREATE DATABASE app")
        await c.close()
    c = await asyncpg.connect(dsn(primary))
    try:
        await c.execute(slog.SCHEMA_SQL)
        await write(c, [Write("CREATE TABLE acc (id int PRIMARY KEY, v bigint NOT NULL)")])
        await write(c, [Write(f"INSERT INTO acc SELECT g, 0 FROM generate_series(1, {ROWS}) g")])
        # Bulk for the bootstrap comparison (~1 MB per 7000 rows of 100 bytes).
        await c.execute("CREATE TABLE bulk (id int PRIMARY KEY, pad text)")
        await c.execute(
            "INSERT INTO bulk SELECT g, repeat(md5(g::text), 3) "
            f"FROM generate_series(1, {mb * 7000}) g"
        )
    finally:
        await c.close()


async def run_sessions(
    primary: pgserver.PgServer, sessions: int, seconds: float, logged: bool
) -> int:
    stop = time.monotonic() + seconds
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        conn = await asyncpg.connect(dsn(primary))
        try:
            # Logged with the settings the proxy captures for every statement.
            row = await conn.fetchrow(f"SELECT {SETTINGS_SQL}")
            settings = dict(zip(SETTINGS, row, strict=True))
            n = i
            while time.monotonic() < stop:
                key = n % ROWS + 1
                if logged:
                    update = Write("UPDATE acc SET v = v + 1 WHERE id = $1", (key,), settings)
                    await write(conn, [update])
                else:
                    await conn.execute("UPDATE acc SET v = v + 1 WHERE id = $1", key)
                done += 1
                n += sessions
        finally:
            await conn.close()

    await asyncio.gather(*(one(i) for i in range(sessions)))
    return done


async def reached(a: applier.Applier, target: int, seconds: float) -> None:
    """Until ``a`` has applied ``target`` (at most ``seconds``)."""
    for _ in range(int(seconds * 100)):
        if a.applied >= target:
            return
        await asyncio.sleep(0.01)


async def catch_up(
    primary: pgserver.PgServer, follower: pgserver.PgServer, batch: int, target: int
) -> float:
    """Seconds an applier pulling ``batch`` entries at a time takes to reach ``target``."""
    a = applier.Applier(f"bench-{batch}", dsn(follower), dsn(primary), batch=batch)
    task = asyncio.ensure_future(a.run())
    try:
        t0 = time.monotonic()
        await reached(a, target, 600)
        return time.monotonic() - t0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def position(s: pgserver.PgServer) -> int:
    c = await asyncpg.connect(dsn(s))
    try:
        return int(await c.fetchval(slog.POSITION_SQL))
    finally:
        await c.close()


async def bench(args: argparse.Namespace, base: Path) -> None:
    bins = postgres.Binaries.detect()
    primary = pgserver.make_server(base, "p")
    follower = pgserver.make_server(base, "f")
    single = pgserver.make_server(base, "f1")
    try:
        await setup(primary, [follower, single], args.mb)
        await dumpcopy.copy_database(
            bins,
            endpoint(primary),
            endpoint(single),
        )
        t0 = time.monotonic()
        await dumpcopy.copy_database(
            bins,
            endpoint(primary),
            endpoint(follower),
        )
        t_dump = time.monotonic() - t0
        bins.run_as.own(base / "bb")
        t0 = time.monotonic()
        bins.run(
            "pg_basebackup", "-h", primary.host, "-p", str(primary.port), "-U", primary.user,
            "-D", str(base / "bb" / "data"), "-X", "stream", "-c", "fast", timeout=3600,
        )  # fmt: skip
        t_base = time.monotonic() - t0
        c = await asyncpg.connect(dsn(primary))
        size = int(await c.fetchval("SELECT pg_database_size('app')"))
        await c.close()
        print(f"bootstrap of a {size / 2**20:.0f} MB database: pg_dump --snapshot + pg_restore "
              f"{t_dump:.1f} s, pg_basebackup (whole server) {t_base:.1f} s, "
              f"ratio {t_dump / t_base:.1f}x")  # fmt: skip

        plain = await run_sessions(primary, args.sessions, args.seconds, logged=False)
        logged = await run_sessions(primary, args.sessions, args.seconds, logged=True)
        print(f"{args.sessions} sessions, one-row UPDATE transactions/s: plain "
              f"{plain / args.seconds:.0f}, with the log {logged / args.seconds:.0f} "
              f"(ratio {logged / max(1, plain):.2f})")  # fmt: skip

        start, target = await position(follower), await position(primary)
        rates = {}
        for batch, f in ((1, single), (applier.BATCH, follower)):
            rates[batch] = (target - start) / await catch_up(primary, f, batch, target)
        print(f"applier catching up {target - start} entries: {rates[applier.BATCH]:.0f} "
              f"entries/s in batches of up to {applier.BATCH} per local transaction, "
              f"{rates[1]:.0f} one entry per transaction (ratio "
              f"{rates[applier.BATCH] / rates[1]:.1f}x)")  # fmt: skip
        a = applier.Applier("bench", dsn(follower), dsn(primary))
        task = asyncio.ensure_future(a.run())
        try:
            await reached(a, target, 30)  # it reads its position when it connects
            lags: list[int] = []

            async def sample() -> None:
                c = await asyncpg.connect(dsn(primary))
                try:
                    while True:
                        lags.append(int(await c.fetchval(slog.POSITION_SQL)) - a.applied)
                        await asyncio.sleep(0.1)
                finally:
                    await c.close()

            sampler = asyncio.ensure_future(sample())
            n = await run_sessions(primary, args.sessions, args.seconds, logged=True)
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            print(f"under load ({n / args.seconds:.0f} logged transactions/s): lag median "
                  f"{statistics.median(lags):.0f} entries, max {max(lags)} "
                  f"({len(lags)} samples)")  # fmt: skip
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        single.stop()
        follower.stop()
        primary.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python3 -m bench.statement", description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--mb", type=int, default=50, help="size of the bootstrap test data")
    args = p.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="pgshard-bench-") as d:
        base = Path(d)
        base.chmod(0o755)
        asyncio.run(bench(args, base))


if __name__ == "__main__":
    main()
