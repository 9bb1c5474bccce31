"""The ``pgshard verify`` workload: sessions through the proxy, recorded for the checker.

Each session is one asyncpg connection running random operations until told to
stop: appends to registers, bank transfers, register reads and bank totals (the
model of ``history.py``). Half the clients speak the simple protocol (literal SQL
sent with ``execute``; reads as ``COPY (SELECT …) TO STDOUT``, also a simple Query),
the other half the extended protocol (prepared statements, whose write answers
carry the member's commit record). Every write inserts its commit record in the
same statement (a data-modifying CTE, so one transaction and one round trip).

A write without an answer is recorded with an unknown outcome and never retried
(a retry could append twice); after any error the client opens a new connection,
which is a new session for the checker (the proxy's read-your-writes promise is
per connection).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from . import history

REGISTERS = "pgshard_verify_registers"
BANK = "pgshard_verify_bank"
COMMITS = "pgshard_verify_commits"
ACCOUNTS = 8
BALANCE = 1000
KEYS_PER_WINDOW = 8
WINDOW_SECONDS = 5.0
"""Appends go to 8 registers that change every 5 s, so no register grows without bound."""

_RECORD = f"""c AS (INSERT INTO {COMMITS} (session, seq, member, epoch, at)
  VALUES ($1, $2, inet_server_addr()::text || ':' || inet_server_port(),
          coalesce(nullif(current_setting('pgshard.epoch', true), ''), '0')::int,
          extract(epoch FROM clock_timestamp())::float8)
  RETURNING member, epoch, at)"""
# A member never promoted (the first primary) has no pgshard.epoch: 0, older than any
# promotion (a local cluster starts at epoch 1, a ShardedCluster at 0, so 1 would put a
# Kubernetes cluster's first primary and its first promoted one in the same epoch).

APPEND = f"""WITH {_RECORD},
w AS (INSERT INTO {REGISTERS} AS r (k, elems) VALUES ($3, ARRAY[$4::bigint])
  ON CONFLICT (k) DO UPDATE SET elems = r.elems || EXCLUDED.elems RETURNING k)
SELECT c.member, c.epoch, c.at, (SELECT count(*) FROM w) FROM c"""

TRANSFER = f"""WITH {_RECORD},
w AS (UPDATE {BANK} SET balance = balance + CASE WHEN id = $3 THEN -$5::bigint ELSE $5::bigint END
  WHERE id IN ($3, $4) RETURNING id)
SELECT c.member, c.epoch, c.at, (SELECT count(*) FROM w) FROM c"""

READ = f"SELECT elems FROM {REGISTERS} WHERE k = $1"
TOTAL = f"SELECT sum(balance)::bigint FROM {BANK}"

SCHEMA = (
    f"DROP TABLE IF EXISTS {REGISTERS}, {BANK}, {COMMITS}",
    f"CREATE TABLE {REGISTERS} (k int PRIMARY KEY, elems bigint[] NOT NULL)",
    f"CREATE TABLE {BANK} (id int PRIMARY KEY, balance bigint NOT NULL)",
    f"CREATE TABLE {COMMITS} (session text, seq int, member text NOT NULL, "
    "epoch int NOT NULL, at float8 NOT NULL, PRIMARY KEY (session, seq))",
    f"INSERT INTO {BANK} SELECT g, {BALANCE} FROM generate_series(0, {ACCOUNTS - 1}) g",
)

CLIENT_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
"""What a client may meet during a fault: the operation's outcome is then unknown."""


@dataclasses.dataclass
class Recorder:
    """Everything the sessions did, plus counts for the summary."""

    writes: list[history.Write] = dataclasses.field(default_factory=list)
    reads: list[history.Read] = dataclasses.field(default_factory=list)
    totals: list[history.Total] = dataclasses.field(default_factory=list)
    connections: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    """First line of every client error, in order."""

    def ops(self) -> dict[str, int]:
        appends = sum(1 for w in self.writes if w.key is not None)
        return {
            "appends": appends,
            "transfers": len(self.writes) - appends,
            "reads": len(self.reads),
            "totals": len(self.totals),
        }


async def setup(dsn: str, timeout: float = 30.0) -> None:
    """(Re)create the workload's tables through the proxy: each run starts afresh."""
    conn = await asyncpg.connect(dsn, timeout=timeout)
    try:
        for sql in SCHEMA:
            await conn.execute(sql, timeout=timeout)
    finally:
        await conn.close(timeout=timeout)


async def final_state(primary_dsn: str, h: history.History, timeout: float = 30.0) -> None:
    """Fill ``h``'s final registers, total and commit records from the primary itself."""
    conn = await asyncpg.connect(primary_dsn, timeout=timeout)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(f"SELECT k, elems FROM {REGISTERS}", timeout=timeout)
            h.final_registers = {r["k"]: tuple(r["elems"]) for r in rows}
            h.final_total = int(await conn.fetchval(TOTAL, timeout=timeout))
            commits = await conn.fetch(f"SELECT * FROM {COMMITS}", timeout=timeout)
    finally:
        await conn.close(timeout=timeout)
    h.final_commits = [
        history.Commit(r["session"], r["seq"], r["member"], r["epoch"], r["at"]) for r in commits
    ]


def _literal(sql: str, args: Sequence[object]) -> str:
    """``sql`` with ``$n`` replaced by literals (ints, and session names of [a-z0-9.])."""
    for n in range(len(args), 0, -1):
        v = args[n - 1]
        sql = sql.replace(f"${n}", str(v) if isinstance(v, int) else f"'{v}'")
    return sql


@dataclasses.dataclass
class Client:
    """One client: a connection at a time, each a session named ``<proto><n>.<gen>``."""

    index: int
    simple: bool
    dsn: str
    rng: random.Random
    rec: Recorder
    op_timeout: float = 10.0
    started: float = dataclasses.field(default_factory=time.monotonic)
    appends: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        gen = 0
        while not stop.is_set():
            name = f"{'simple' if self.simple else 'ext'}{self.index}.{gen}"
            gen += 1
            try:
                conn = await asyncpg.connect(
                    self.dsn,
                    timeout=self.op_timeout,
                    statement_cache_size=0 if self.simple else 100,
                )
            except CLIENT_ERRORS as e:
                self._error(e)
                await asyncio.sleep(0.2)
                continue
            self.rec.connections += 1
            try:
                await self._session(conn, name, stop)
            finally:
                conn.terminate()  # a graceful close could wait on a frozen server

    def _error(self, e: BaseException) -> None:
        self.rec.errors.append(f"{type(e).__name__}: {e}".splitlines()[0])

    async def _session(self, conn: asyncpg.Connection, name: str, stop: asyncio.Event) -> None:
        """Operations until ``stop`` or the first error (which ends this session)."""
        last_key: int | None = None
        seq = 0
        while not stop.is_set():
            seq += 1
            roll = self.rng.random()
            try:
                if roll < 0.4:
                    last_key = self._key()
                    await self._append(conn, name, seq, last_key)
                elif roll < 0.6:
                    await self._transfer(conn, name, seq)
                elif roll < 0.9:
                    own = last_key is not None and self.rng.random() < 0.5
                    key = last_key if own and last_key is not None else self._key()
                    await self._read(conn, name, seq, key)
                else:
                    await self._total(conn, name, seq)
            except CLIENT_ERRORS as e:
                self._error(e)
                return

    def _key(self) -> int:
        window = int((time.monotonic() - self.started) // WINDOW_SECONDS)
        return window * KEYS_PER_WINDOW + self.rng.randrange(KEYS_PER_WINDOW)

    async def _write(
        self, conn: asyncpg.Connection, sql: str, name: str, seq: int, *rest: int
    ) -> history.Commit | None:
        """One write; its commit record when the protocol brings it back (extended)."""
        args = (name, seq, *rest)
        if self.simple:
            await conn.execute(_literal(sql, args), timeout=self.op_timeout)
            return None
        row = await conn.fetchrow(sql, *args, timeout=self.op_timeout)
        return history.Commit(name, seq, row[0], row[1], row[2])

    async def _append(self, conn: asyncpg.Connection, name: str, seq: int, key: int) -> None:
        self.appends += 1
        element = (self.index + 1) * 10**12 + self.appends  # unique over the run
        try:
            commit = await self._write(conn, APPEND, name, seq, key, element)
        except CLIENT_ERRORS:
            self.rec.writes.append(history.Write(name, seq, False, key=key, element=element))
            raise
        self.rec.writes.append(
            history.Write(name, seq, True, time.time(), key, element, commit=commit)
        )

    async def _transfer(self, conn: asyncpg.Connection, name: str, seq: int) -> None:
        src, dst = self.rng.sample(range(ACCOUNTS), 2)
        amount = self.rng.randrange(1, 50)
        try:
            commit = await self._write(conn, TRANSFER, name, seq, src, dst, amount)
        except CLIENT_ERRORS:
            self.rec.writes.append(history.Write(name, seq, False))
            raise
        self.rec.writes.append(history.Write(name, seq, True, time.time(), commit=commit))

    async def _read(self, conn: asyncpg.Connection, name: str, seq: int, key: int) -> None:
        if self.simple:
            text = await self._copy(conn, READ, (key,))
            elements = tuple(int(x) for x in text.strip("{}\n").split(",") if x)
        else:
            value: Any = await conn.fetchval(READ, key, timeout=self.op_timeout)
            elements = tuple(value or ())
        self.rec.reads.append(history.Read(name, seq, key, elements))

    async def _total(self, conn: asyncpg.Connection, name: str, seq: int) -> None:
        if self.simple:
            total = int(await self._copy(conn, TOTAL, ()))
        else:
            total = int(await conn.fetchval(TOTAL, timeout=self.op_timeout))
        self.rec.totals.append(history.Total(name, seq, total))

    async def _copy(self, conn: asyncpg.Connection, sql: str, args: Sequence[object]) -> str:
        """One row of one column as COPY text (a simple-protocol Query)."""
        chunks: list[bytes] = []

        async def sink(data: bytes) -> None:
            chunks.append(data)

        await conn.copy_from_query(_literal(sql, args), output=sink, timeout=self.op_timeout)
        return b"".join(chunks).decode()


def clients(dsn: str, sessions: int, seed: int, rec: Recorder) -> list[Client]:
    """``sessions`` clients, alternately simple and extended protocol."""
    return [Client(i, i % 2 == 0, dsn, random.Random(f"{seed}/{i}"), rec) for i in range(sessions)]
