"""A concurrent register workload through the proxy, recorded for the history checker.

Used by ``tests/integration/test_consistency.py``. Several sessions — asyncpg
(extended protocol, statement cache on) and psycopg 3 (async) — each run a
sequence of operations on a shared table ``kv(k, v)``:

* write: ``UPDATE kv SET v = v + 1 WHERE k = $1 RETURNING v`` (acknowledged value);
* read:  ``SELECT v, pg_last_wal_replay_lsn() IS NOT NULL FROM kv WHERE k = $1`` —
  the second column tells which kind of member served it, so a test can show that
  reads really went to followers (a checker that only ever sees the primary proves
  nothing). Not ``pg_is_in_recovery()``: a session reads that on its primary.

Reads mostly follow the session's own last write (read-your-writes pressure) or
pick any key, which other sessions write too (monotonic reads pressure). The
consistency mode is chosen per session with the ``pgshard.consistency`` startup
option, as applications would.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import random
from typing import Any

import asyncpg
import psycopg

from .history import Op, OpKind

WRITE_SQL = "UPDATE kv SET v = v + 1 WHERE k = $1 RETURNING v"
READ_SQL = "SELECT v, pg_last_wal_replay_lsn() IS NOT NULL FROM kv WHERE k = $1"


@dataclasses.dataclass(frozen=True)
class Plan:
    clients: int = 4
    """Sessions; even ones use asyncpg, odd ones psycopg."""
    ops_per_client: int = 500
    keys: int = 16
    write_ratio: float = 0.3
    read_own_ratio: float = 0.5
    """Of the reads, the share that reads the key this session wrote last."""
    seed: int = 1
    op_timeout: float = 30.0


@dataclasses.dataclass
class Result:
    ops: list[Op]
    follower_reads: int
    primary_reads: int


async def prepare(dsn: str, keys: int) -> None:
    """(Re)create ``kv`` with every key at 0 (through the proxy: DDL goes to the primary)."""
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        await conn.execute("DROP TABLE IF EXISTS kv")
        await conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v bigint NOT NULL)")
        await conn.execute(f"INSERT INTO kv SELECT g, 0 FROM generate_series(0, {keys - 1}) g")
    finally:
        await conn.close()


async def final_values(primary_dsn: str) -> dict[int, int]:
    """Every key's value, read on the primary directly (after the workload)."""
    conn = await asyncpg.connect(primary_dsn, timeout=30)
    try:
        return {r["k"]: r["v"] for r in await conn.fetch("SELECT k, v FROM kv")}
    finally:
        await conn.close()


class _Session(abc.ABC):
    """One client's connections: writes and reads use the same one, unless reads are
    pointed somewhere else (straight at a follower, to show the checker catches lag)."""

    @abc.abstractmethod
    async def connect(self, dsn: str, read_dsn: str | None, mode: str) -> None: ...

    @abc.abstractmethod
    async def write(self, key: int) -> int: ...

    @abc.abstractmethod
    async def read(self, key: int) -> tuple[int, bool]: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


class _AsyncpgSession(_Session):
    def __init__(self) -> None:
        self.conns: list[Any] = []

    async def connect(self, dsn: str, read_dsn: str | None, mode: str) -> None:
        for target in (dsn, read_dsn) if read_dsn else (dsn,):
            self.conns.append(
                await asyncpg.connect(
                    target, timeout=30, server_settings={"pgshard.consistency": mode}
                )
            )

    async def write(self, key: int) -> int:
        return int(await self.conns[0].fetchval(WRITE_SQL, key))

    async def read(self, key: int) -> tuple[int, bool]:
        row = await self.conns[-1].fetchrow(READ_SQL, key)
        return int(row[0]), bool(row[1])

    async def close(self) -> None:
        for c in self.conns:
            await c.close()


class _PsycopgSession(_Session):
    def __init__(self) -> None:
        self.conns: list[psycopg.AsyncConnection[Any]] = []

    async def connect(self, dsn: str, read_dsn: str | None, mode: str) -> None:
        for target in (dsn, read_dsn) if read_dsn else (dsn,):
            self.conns.append(
                await psycopg.AsyncConnection.connect(
                    target,
                    autocommit=True,
                    connect_timeout=30,
                    options=f"-c pgshard.consistency={mode}",
                )
            )

    async def _one(self, conn: psycopg.AsyncConnection[Any], sql: str, key: int) -> Any:
        cur = await conn.execute(sql.replace("$1", "%s"), (key,))
        row = await cur.fetchone()
        assert row is not None, sql
        return row

    async def write(self, key: int) -> int:
        return int((await self._one(self.conns[0], WRITE_SQL, key))[0])

    async def read(self, key: int) -> tuple[int, bool]:
        row = await self._one(self.conns[-1], READ_SQL, key)
        return int(row[0]), bool(row[1])

    async def close(self) -> None:
        for c in self.conns:
            await c.close()


@dataclasses.dataclass
class _Client:
    name: str
    session: _Session
    plan: Plan
    rng: random.Random
    ops: list[Op] = dataclasses.field(default_factory=list)
    follower_reads: int = 0
    primary_reads: int = 0

    async def run(self) -> None:
        last_written: int | None = None
        for seq in range(self.plan.ops_per_client):
            if self.rng.random() < self.plan.write_ratio:
                key = self.rng.randrange(self.plan.keys)
                value = await asyncio.wait_for(self.session.write(key), self.plan.op_timeout)
                self.ops.append(Op(self.name, seq, OpKind.WRITE, key, value))
                last_written = key
                continue
            own = self.rng.random() < self.plan.read_own_ratio
            if own and last_written is not None:
                key = last_written
            else:
                key = self.rng.randrange(self.plan.keys)
            value, on_follower = await asyncio.wait_for(
                self.session.read(key), self.plan.op_timeout
            )
            self.ops.append(Op(self.name, seq, OpKind.READ, key, value))
            if on_follower:
                self.follower_reads += 1
            else:
                self.primary_reads += 1


async def run(dsn: str, mode: str, plan: Plan, *, read_dsn: str | None = None) -> Result:
    """Run ``plan`` through ``dsn`` (the proxy) with every session in ``mode``.

    ``read_dsn``: send reads there instead (e.g. straight to a lagging follower).
    """
    clients = [
        _Client(
            f"asyncpg-{i}" if i % 2 == 0 else f"psycopg-{i}",
            _AsyncpgSession() if i % 2 == 0 else _PsycopgSession(),
            plan,
            random.Random(plan.seed + i),
        )
        for i in range(plan.clients)
    ]
    try:
        for c in clients:
            await c.session.connect(dsn, read_dsn, mode)
        await asyncio.gather(*(c.run() for c in clients))
    finally:
        for c in clients:
            await c.session.close()
    return Result(
        ops=[op for c in clients for op in c.ops],
        follower_reads=sum(c.follower_reads for c in clients),
        primary_reads=sum(c.primary_reads for c in clients),
    )
