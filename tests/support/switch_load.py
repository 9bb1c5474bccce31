"""Writers through the proxy across switchovers: what a client sees, per driver and style.

Four writers, each its own client session: asyncpg and psycopg 3, each in
autocommit (one INSERT per statement) and in explicit transactions (BEGIN, two
INSERTs, COMMIT). Each remembers the ids whose commit was acknowledged, every
error with the step it hit (``begin`` for a transaction that had not started,
``write``/``commit`` for one open on a server, ``connect`` for a new session),
and the longest pause between two acknowledgements. After an error a writer
reconnects, as an application would.

Used by tests/integration/test_switchover_buffering.py and tests/e2e/test_failover.py
(:func:`problems` asserted empty) and bench/switchover.py (pauses printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable

import asyncpg
import psycopg

TABLE = "switch_load"
OPEN_TX_ERRORS = frozenset({"08007", "08006", "57P01"})
"""What a transaction open on the old primary may end with (its fate: rolled back)."""
STEP_TIMEOUT = 30.0
"""Bound on one step: a request held longer than any buffer window counts as ``hung``."""


@dataclasses.dataclass(frozen=True)
class Failure:
    step: str
    """``connect``, ``begin`` (transaction not started), ``write``, ``commit``."""
    sqlstate: str | None
    message: str
    at: float


@dataclasses.dataclass
class Writer:
    driver: str
    """``asyncpg`` or ``psycopg``."""
    transactions: bool
    first_id: int
    acked: list[int] = dataclasses.field(default_factory=list)
    failures: list[Failure] = dataclasses.field(default_factory=list)
    last_ack: float | None = None
    longest_pause: float = 0.0
    pauses: list[float] = dataclasses.field(default_factory=list)
    """Every gap between two acknowledgements longer than ``SLOW`` seconds."""

    @property
    def name(self) -> str:
        return f"{self.driver}-{'tx' if self.transactions else 'autocommit'}"

    def _ack(self, ids: list[int]) -> None:
        now = time.monotonic()
        if self.last_ack is not None:
            gap = now - self.last_ack
            self.longest_pause = max(self.longest_pause, gap)
            if gap > SLOW:
                self.pauses.append(gap)
        self.last_ack = now
        self.acked.extend(ids)

    def _fail(self, step: str, e: BaseException) -> None:
        code = getattr(e, "sqlstate", None)
        if code is None and isinstance(e, psycopg.Error) and e.diag is not None:
            code = e.diag.sqlstate
        self.failures.append(Failure(step, code, f"{type(e).__name__}: {e}", time.monotonic()))


SLOW = 0.5
"""A gap between acknowledgements longer than this is a pause worth keeping."""


class _Session:
    """One connection of one driver, with the four operations a writer needs."""

    async def begin(self) -> None: ...
    async def insert(self, i: int) -> None: ...
    async def commit(self) -> None: ...
    async def close(self) -> None: ...


class _Asyncpg(_Session):
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def begin(self) -> None:
        await self.conn.execute("BEGIN")

    async def insert(self, i: int) -> None:
        await self.conn.execute(f"INSERT INTO {TABLE} (id) VALUES ($1)", i)

    async def commit(self) -> None:
        await self.conn.execute("COMMIT")

    async def close(self) -> None:
        self.conn.terminate()


class _Psycopg(_Session):
    def __init__(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        self.conn = conn

    async def begin(self) -> None:
        await self.conn.execute("BEGIN")

    async def insert(self, i: int) -> None:
        await self.conn.execute(f"INSERT INTO {TABLE} (id) VALUES (%s)", (i,))

    async def commit(self) -> None:
        await self.conn.execute("COMMIT")

    async def close(self) -> None:
        await self.conn.close()


async def _connect(driver: str, dsn: str) -> _Session:
    if driver == "asyncpg":
        return _Asyncpg(await asyncpg.connect(dsn, timeout=STEP_TIMEOUT))
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=30)
    return _Psycopg(conn)


async def _step(w: Writer, step: str, op: Awaitable[None]) -> bool:
    try:
        await asyncio.wait_for(op, STEP_TIMEOUT)
    except (asyncpg.PostgresError, psycopg.Error, OSError, TimeoutError) as e:
        w._fail(step, e)
        return False
    return True


async def run_writer(w: Writer, dsn: str, stop: asyncio.Event) -> None:
    next_id = w.first_id
    session: _Session | None = None
    try:
        while not stop.is_set():
            if session is None:
                try:
                    session = await asyncio.wait_for(_connect(w.driver, dsn), STEP_TIMEOUT)
                except (asyncpg.PostgresError, psycopg.Error, OSError, TimeoutError) as e:
                    w._fail("connect", e)
                    await asyncio.sleep(0.05)
                    continue
            s = session
            ids = [next_id, next_id + 1] if w.transactions else [next_id]
            next_id += len(ids)
            if w.transactions:
                ok = await _step(w, "begin", s.begin())
                for i in ids:
                    ok = ok and await _step(w, "write", s.insert(i))
                ok = ok and await _step(w, "commit", s.commit())
            else:
                ok = await _step(w, "write", s.insert(ids[0]))
            if ok:
                w._ack(ids)
            else:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(s.close(), 5)
                session = None
    finally:
        if session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.close(), 5)


@dataclasses.dataclass
class Load:
    writers: list[Writer]

    def acked(self) -> int:
        return sum(len(w.acked) for w in self.writers)

    async def wait_acked(self, more: int, timeout: float = 60) -> None:
        """Until every writer has acknowledged ``more`` new ids."""
        target = [len(w.acked) + more for w in self.writers]
        deadline = time.monotonic() + timeout
        while any(len(w.acked) < t for w, t in zip(self.writers, target, strict=True)):
            if time.monotonic() > deadline:
                pairs = zip(self.writers, target, strict=True)
                stuck = [w.name for w, t in pairs if len(w.acked) < t]
                raise TimeoutError(f"writers {stuck} did not acknowledge {more} more in {timeout}s")
            await asyncio.sleep(0.05)


def writers(base: int = 0) -> list[Writer]:
    """The four writers; ``base`` shifts their ids (loads sharing a table at once)."""
    return [
        Writer(driver, tx, first_id=base + (n + 1) * 10_000_000)
        for n, (driver, tx) in enumerate(
            (d, t) for d in ("asyncpg", "psycopg") for t in (False, True)
        )
    ]


async def create_table(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY)")
    finally:
        await conn.close()


async def ids_on(dsn: str) -> set[int]:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        return {r[0] for r in await conn.fetch(f"SELECT id FROM {TABLE}")}
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def running(dsn: str, base: int = 0) -> AsyncIterator[Load]:
    """The four writers on ``dsn`` (the proxy) until the block ends."""
    load = Load(writers(base))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_writer(w, dsn, stop)) for w in load.writers]
    try:
        yield load
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


def report(load: Load) -> None:
    """Print each writer's counts, longest pause and failures (pauses are not asserted)."""
    for w in load.writers:
        pauses = ", ".join(f"{p:.2f}" for p in w.pauses)
        print(
            f"{w.name}: {len(w.acked)} acked, {len(w.failures)} failed, longest pause "
            f"{w.longest_pause:.2f}s (pauses > {SLOW}s: {pauses})"
        )
        for f in w.failures:
            print(f"  {f.step}: {f.sqlstate} {f.message}")


def problems(load: Load, committed: set[int]) -> list[str]:
    """What clients should not have seen across planned switchovers: any error outside a
    transaction open on the old primary (autocommit writes, a ``BEGIN``, a new session),
    an open transaction ending otherwise than rolled back, an acknowledged id missing
    from ``committed`` (the ids on the primary afterwards). Empty when all is well."""
    out: list[str] = []
    for w in load.writers:
        for f in w.failures:
            if not w.transactions or f.step not in ("write", "commit"):
                out.append(f"{w.name}: {f} (not in a transaction open on the old primary)")
            elif f.sqlstate not in OPEN_TX_ERRORS:
                out.append(f"{w.name}: {f} (not one of {sorted(OPEN_TX_ERRORS)})")
        lost = set(w.acked) - committed
        if lost:
            out.append(f"{w.name}: {len(lost)} acknowledged ids lost: {sorted(lost)[:10]}")
    return out
