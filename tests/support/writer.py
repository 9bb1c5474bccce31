"""A write load for failover tests: insert rows one by one, remember which were acknowledged.

Each insert is its own transaction (``INSERT … RETURNING inet_server_port()``,
a prepared statement); an id counts as acknowledged only when its answer came
back, and the acknowledgement records which server gave it. A writer aims at a
*target*: a topology file (``DIR/topology.json``, the file the proxy follows:
after any error it re-reads it and reconnects to whatever primary it names, so it
follows failovers the way a client of the proxy would), or a fixed DSN (e.g. the
proxy's own, which follows failovers itself). Every connect and statement is
bounded; what went wrong is kept for the test to judge: errors the driver raised,
operations that ran into their bound (``hung``), and message sequences asyncpg
did not expect (``confused``).

Used from async tests with :func:`running`, from synchronous ones (that block on
the CLI) with :func:`in_thread`; bench/failover.py times failovers with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import asyncpg

TABLE = "acked"


@dataclasses.dataclass(frozen=True)
class Ack:
    """One acknowledged insert."""

    id: int
    at: float
    """Monotonic time the acknowledgement arrived."""
    dsn: str
    """Where the writer was connected."""
    port: int
    """``inet_server_port()`` of the server that committed it (behind a proxy: which member)."""


@dataclasses.dataclass
class Writer:
    target: Path | str
    """A topology file to follow (its shard ``shard``'s primary), or a fixed DSN."""
    shard: int = 0
    timeout: float = 5.0
    """Bound on one insert (a frozen primary holds a client this long)."""
    connect_timeout: float = 5.0
    first_id: int | None = None
    """The first id to insert; None: after the table's largest (see :meth:`setup`).
    Writers sharing the table at once need ids of their own (e.g. ``i * 1_000_000 + 1``)."""
    retry_pause: float = 0.02
    """Pause after a failure before reconnecting."""
    acks: list[Ack] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    """First line of every error the driver raised (``Type: message``)."""
    hung: list[str] = dataclasses.field(default_factory=list)
    """Connects and statements that did not end within their bound."""
    confused: list[str] = dataclasses.field(default_factory=list)
    """asyncpg ``InternalClientError``s: it got a message sequence it did not expect."""
    _next: int = 1
    _stop: bool = False

    @property
    def acked(self) -> list[int]:
        return [a.id for a in self.acks]

    @property
    def stop_bound(self) -> float:
        """How long :meth:`run` may take to return after :meth:`stop`."""
        return self.connect_timeout + self.timeout + self.retry_pause + 15

    def primary_dsn(self) -> str:
        if isinstance(self.target, str):
            return self.target
        doc = json.loads(self.target.read_text())
        dsn: str = doc["shards"][self.shard]["primary"]["dsn"]
        return dsn

    async def setup(self) -> None:
        """Create the table if it is missing; fix the first id."""
        conn = await asyncpg.connect(self.primary_dsn(), timeout=self.connect_timeout)
        try:
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY)")
            if self.first_id is not None:
                self._next = self.first_id
            else:
                # Fresh ids after an earlier writer's, so no insert fails as a duplicate.
                self._next = int(
                    await conn.fetchval(f"SELECT coalesce(max(id), 0) + 1 FROM {TABLE}")
                )
        finally:
            await conn.close(timeout=self.timeout)

    async def run(self) -> None:
        """Insert until :meth:`stop`; a failed id is never retried (its fate is unknown)."""
        conn: asyncpg.Connection | None = None
        dsn = ""
        while not self._stop:
            wid, self._next = self._next, self._next + 1
            step, bound = "connect", self.connect_timeout
            try:
                if conn is None:
                    dsn = self.primary_dsn()
                    conn = await asyncpg.connect(dsn, timeout=bound)
                step, bound = f"insert {wid}", self.timeout
                port = await asyncio.wait_for(
                    conn.fetchval(
                        f"INSERT INTO {TABLE} VALUES ($1) RETURNING inet_server_port()", wid
                    ),
                    bound,
                )
                self.acks.append(Ack(wid, time.monotonic(), dsn, int(port)))
                continue
            except TimeoutError:
                self.hung.append(f"{step}: no answer within {bound:g} s")
            except asyncpg.InternalClientError as e:
                self.confused.append(f"{type(e).__name__}: {e}")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                self.errors.append(f"{type(e).__name__}: {e}".splitlines()[0])
            if conn is not None:
                conn.terminate()
                conn = None
            await asyncio.sleep(self.retry_pause)
        if conn is not None:
            conn.terminate()  # nothing is in flight; a graceful close could wait on a frozen server

    def stop(self) -> None:
        """Stop after the statement under way (safe to call from another thread)."""
        self._stop = True

    async def wait_acked(self, more: int, timeout: float = 60) -> None:
        """Until ``more`` further rows were acknowledged (the load goes on)."""
        target = len(self.acks) + more
        deadline = time.monotonic() + timeout
        while len(self.acks) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.acks)} of {target} rows acknowledged")
            await asyncio.sleep(0.05)


def interleaved(acks: list[Ack]) -> int:
    """Acknowledgements from a server after another server had begun acknowledging (what
    two writable primaries look like)."""
    bad, done, current = 0, set(), None
    for a in sorted(acks, key=lambda a: a.at):
        if a.port != current:
            if a.port in done:
                bad += 1
                continue
            if current is not None:
                done.add(current)
            current = a.port
    return bad


async def ids_on(dsn: str) -> set[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["id"] for r in await conn.fetch(f"SELECT id FROM {TABLE}")}
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def running(
    target: Path | str, shard: int = 0, timeout: float = 5.0
) -> AsyncIterator[Writer]:
    """A writer whose inserts and connects are both bounded by ``timeout``."""
    async with running_writer(Writer(target, shard, timeout, connect_timeout=timeout)) as w:
        yield w


@contextlib.asynccontextmanager
async def running_writer(w: Writer) -> AsyncIterator[Writer]:
    """``w`` set up and writing until the block ends."""
    await w.setup()
    async with _writing(w):
        yield w


@contextlib.asynccontextmanager
async def running_on_follower(w: Writer) -> AsyncIterator[Writer]:
    """``w`` writing to a follower from its ``first_id``, its table left to the primary:
    every insert fails (read-only) until the follower is promoted, so its first
    acknowledgement is when the new primary began to accept writes."""
    assert w.first_id is not None
    w._next = w.first_id
    async with _writing(w):
        yield w


@contextlib.asynccontextmanager
async def _writing(w: Writer) -> AsyncIterator[Writer]:
    """``w`` running until the block ends, then stopped (bounded)."""
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        w.stop()
        await asyncio.wait_for(task, w.stop_bound)


@contextlib.contextmanager
def in_thread(writers: Sequence[Writer]) -> Iterator[None]:
    """Run ``writers`` on an event loop of their own in a background thread, for a
    synchronous test that blocks (CLI calls, sleeps). They are set up one after the
    other before this returns; on exit they are stopped and waited for, and an error
    that ended them is raised."""
    ready = threading.Event()
    failed: list[BaseException] = []

    async def main() -> None:
        try:
            for w in writers:
                await w.setup()
        except BaseException as e:
            failed.append(e)
            return
        finally:
            ready.set()
        await asyncio.gather(*(w.run() for w in writers))

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:  # handed to the test's thread below
            failed.append(e)

    bound = max(w.stop_bound for w in writers)
    thread = threading.Thread(target=target, name="writers", daemon=True)
    thread.start()
    try:
        if not ready.wait(bound * len(writers)):
            raise TimeoutError("the writers were not set up in time")
        if failed:
            raise RuntimeError("setting up the writers failed") from failed[0]
        yield
    finally:
        for w in writers:
            w.stop()
        thread.join(bound)
    if thread.is_alive():
        raise TimeoutError(f"the writers did not stop within {bound:g} s")
    if failed:
        raise RuntimeError("a writer failed") from failed[0]
