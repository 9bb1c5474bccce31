"""A minimal statement-log writer for tests of the log, the applier and bootstrap.

It follows the writer's protocol of ``pgshard_proxy.contract.statement_log`` (the
shard's write lock before the first write, the entry appended just before COMMIT)
on a direct asyncpg connection, so the follower side can be tested with real
concurrent transactions before the proxy writes the log. ``lock_first=False``
breaks the protocol on purpose (lock only at COMMIT), to show that the commit-order
test detects the divergence that causes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from pgshard_operator.instance import applier
from pgshard_proxy.contract import statement_log as slog


@dataclasses.dataclass(frozen=True)
class Write:
    """A statement with Python arguments (logged as their text form)."""

    sql: str
    args: tuple[Any, ...] = ()
    settings: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def logged(self) -> slog.Statement:
        return slog.Statement(
            sql=self.sql,
            params=tuple(None if a is None else str(a) for a in self.args),
            settings=dict(self.settings),
        )


class Transaction:
    """One write transaction under the log protocol, driven step by step."""

    def __init__(self, conn: Any, lock_first: bool = True) -> None:
        self.conn = conn
        self.lock_first = lock_first
        self.done: list[Write] = []
        self._tx: Any = None

    async def begin(self) -> None:
        self._tx = self.conn.transaction()
        await self._tx.start()

    async def run(self, w: Write) -> None:
        if not self.done and self.lock_first:
            await self.conn.execute(slog.LOCK_SQL)
        if w.settings:  # one round trip, as the proxy reads them in one
            await self.conn.execute(applier.PIN_SQL, list(w.settings), list(w.settings.values()))
        await self.conn.execute(w.sql, *w.args)
        self.done.append(w)

    async def commit(self) -> int:
        if not self.lock_first:
            await self.conn.execute(slog.LOCK_SQL)
        seq = await self.conn.fetchval(
            slog.APPEND_SQL, slog.Entry.statements_json([w.logged() for w in self.done]), "{}"
        )
        await self._tx.commit()
        return int(seq)

    async def rollback(self) -> None:
        await self._tx.rollback()


async def write(conn: Any, writes: Sequence[Write], lock_first: bool = True) -> int:
    """Run ``writes`` as one logged transaction; its ``seq``."""
    tx = Transaction(conn, lock_first)
    await tx.begin()
    try:
        for w in writes:
            await tx.run(w)
        return await tx.commit()
    except BaseException:
        await tx.rollback()
        raise


async def table_contents(dsn: str, tables: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``tables``, fully ordered (for comparing members)."""
    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for t in tables:
            rows = await conn.fetch(f"SELECT * FROM {t} AS r ORDER BY r")
            out[t] = [tuple(r) for r in rows]
        return out
    finally:
        await conn.close()
