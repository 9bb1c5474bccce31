"""The statement-mode applier: a follower replays its primary's statement log, in order.

Run by the instance agent of a follower in ``statement`` mode (DESIGN §4; the log's
schema and ordering rules are in ``pgshard_proxy.contract.statement_log``). It pulls
the entries after its position from the primary in bounded batches (LISTEN wakes it;
a slow poll covers notifications lost while reconnecting) and applies each batch in
one local transaction (:func:`apply_entries`) that also inserts its entries into the
follower's own log, so data and position commit together and a crash loses neither.
The primary learns how far it got (``pgshard.followers``), which is what it keeps
entries for; the applier trims its own copy of the log no further than the primary
did (logtrim.py).
A primary that trimmed entries this follower still needs (it stopped counting it)
stops the applier as diverged too: only a new copy can continue.

An entry that fails to apply is never skipped: the applier stops with the entry and
the error (``DIVERGED``) and the agent reports the follower as diverged. Lost
connections (to either side) are retried with a back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import time
from typing import Any

import asyncpg

from pgshard_proxy.contract import pgtls
from pgshard_proxy.contract import statement_log as slog

from . import logtrim

log = logging.getLogger(__name__)

BATCH = 200
"""Entries per pull: bounds memory and the time between two position reports."""
POLL_SECONDS = 1.0
"""Pull at least this often even without a notification."""
RETRY_SECONDS = (0.2, 5.0)
"""Back-off after a lost connection: first and longest wait."""

# Errors that say "the connection or the server went away", not "this entry is wrong".
_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TransactionRollbackError,
)


class State(enum.Enum):
    CONNECTING = "connecting"
    APPLYING = "applying"
    DIVERGED = "diverged"
    """An entry failed to apply: stopped for good (the follower needs a re-bootstrap)."""
    STOPPED = "stopped"


@dataclasses.dataclass(frozen=True)
class Divergence:
    seq: int
    error: str
    recopy: bool = False
    """Only a new copy of the primary can repair it, and it is safe to make one at once:
    the follower holds entries its primary never wrote (see :class:`AheadOfSource`), or
    its primary no longer has entries it needs (:class:`TrimmedAway`)."""


class ApplyFailed(Exception):
    """An entry could not be applied (the follower's data no longer matches)."""

    recopy = False

    def __init__(self, seq: int, error: str) -> None:
        super().__init__(f"entry {seq} could not be applied: {error}")
        self.seq = seq
        self.error = error


class AheadOfSource(ApplyFailed):
    """The follower applied an entry its primary does not have (or has otherwise).

    A failover elects the follower that had applied the most when the manager looked;
    another one's applier may still apply a batch it had fetched from the dying primary
    after that, and so hold entries past the new primary's promotion point that the new
    primary then writes differently under the same numbers. Pulling on from there would
    skip the new primary's entries and never notice."""

    recopy = True


class TrimmedAway(ApplyFailed):
    """The primary trimmed entries this follower has not applied: nothing it can pull
    brings it back, a new copy does."""

    recopy = True


class Applier:
    """Replays the log of the primary at ``source_dsn`` into ``local_dsn``.

    Both DSNs name the application database with a role that may write the
    ``pgshard`` schema and ``SET ROLE`` to every writer (the superuser).
    """

    def __init__(
        self,
        name: str,
        local_dsn: str,
        source_dsn: str,
        batch: int = BATCH,
        address: str | None = None,
    ) -> None:
        self.name = name
        self.address = address
        """This follower's ``host:port`` as the shard's members list it (its bookmark's)."""
        self.local_dsn = local_dsn
        self.source_dsn = source_dsn
        self.batch = batch
        self.state = State.CONNECTING
        self.applied = 0
        """The highest ``seq`` applied here (this follower's position)."""
        self.source_position: int | None = None
        """The primary's position as last seen (for lag)."""
        self.divergence: Divergence | None = None
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._repointed = asyncio.Event()
        self._trimmed_at = 0.0

    def repoint(self, source_dsn: str) -> None:
        """Pull from another primary from now on (after a failover); keeps the position."""
        self.source_dsn = source_dsn
        self._repointed.set()
        self._wake.set()

    def stopped_diverged(self, error: str) -> None:
        """This (stopped) applier's follower was found to differ from its primary by
        other means than an entry (a write that did not come from it): only a new copy
        repairs it."""
        self.divergence = Divergence(self.applied, error, recopy=True)
        self.state = State.DIVERGED

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "appliedSeq": self.applied,
            "sourceSeq": self.source_position,
            "divergedAt": self.divergence.seq if self.divergence else None,
            "error": self.divergence.error if self.divergence else self.last_error,
        }

    async def run(self) -> None:
        """Apply until cancelled or diverged (then returns, state ``DIVERGED``)."""
        delay = RETRY_SECONDS[0]
        try:
            while True:
                try:
                    await self._session()
                except ApplyFailed as e:
                    self.divergence = Divergence(e.seq, e.error, e.recopy)
                    self.state = State.DIVERGED
                    log.error("applier stopped, follower diverged: %s", e)
                    return
                except _TRANSIENT as e:
                    self.state = State.CONNECTING
                    self.last_error = f"{type(e).__name__}: {e}"
                    log.warning("applier: %s; retrying in %.1fs", self.last_error, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._repointed.wait(), delay)
                    delay = min(RETRY_SECONDS[1], delay * 2)
                else:
                    delay = RETRY_SECONDS[0]
        finally:
            if self.state is not State.DIVERGED:
                self.state = State.STOPPED

    async def _session(self) -> None:
        """One pair of connections; returns when repointed (to reconnect)."""
        self._repointed.clear()
        local = await asyncpg.connect(
            **pgtls.asyncpg_args(self.local_dsn),
            timeout=5,
            server_settings={
                "application_name": "pgshard-applier",
                "default_transaction_read_only": "off",
            },
        )
        try:
            source = await asyncpg.connect(
                **pgtls.asyncpg_args(self.source_dsn),
                timeout=5,
                server_settings={"application_name": f"pgshard-applier-{self.name}"},
            )
            try:
                await source.add_listener(slog.CHANNEL, self._notified)
                await local.execute(slog.SCHEMA_SQL)  # a log copied before log_trimmed existed
                self.applied = int(await local.fetchval(slog.POSITION_SQL))
                await self._check_same_history(local, source)
                await self._bookmark(source)
                self.state = State.APPLYING
                self.last_error = None
                while not self._repointed.is_set():
                    self._wake.clear()
                    if not await self._pull(local, source):
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            finally:
                source.terminate()
        finally:
            local.terminate()

    async def _check_same_history(self, local: Any, source: Any) -> None:
        """Raise :class:`AheadOfSource` when the entry applied last here is not the
        source's entry of that number (absent or different). Entries trimmed from either
        log cannot be compared: the pull's trim check covers the source's side."""
        if self.applied == 0:
            return
        mine = await local.fetchrow(slog.ENTRY_SQL, self.applied)
        theirs = await source.fetchrow(slog.ENTRY_SQL, self.applied)
        if mine is None:
            return
        if theirs is None:
            if int(await source.fetchval(slog.TRIMMED_SQL)) > self.applied:
                return
            source_at = int(await source.fetchval(slog.POSITION_SQL))
            fork = await source.fetchval(slog.FORK_SQL)
            if source_at < self.applied:
                why = f"its primary's log ends at entry {source_at}"
            elif fork is not None and self.applied > fork:
                why = f"its primary, writing its own entries after {fork}, has none so numbered"
            else:
                return  # a number the source never used, below anything it wrote itself
        elif tuple(theirs) != tuple(mine):
            why = "its primary wrote another entry under that number"
        else:
            return
        raise AheadOfSource(
            self.applied,
            f"this follower applied entry {self.applied} but {why}: it holds entries of a "
            "former primary that the current one never had (a failover promoted a member "
            "that had not applied them); it is copied again",
        )

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _bookmark(self, source: Any) -> None:
        await source.execute(slog.BOOKMARK_SQL, self.name, self.applied, self.address)

    async def _pull(self, local: Any, source: Any) -> bool:
        """Apply the next batch; whether there was anything to apply."""
        rows = await source.fetch(slog.READ_SQL, self.applied, self.batch)
        # Read after the entries: a trim that removed some of them has marked it by now.
        below = int(await source.fetchval(slog.TRIMMED_SQL))
        if below - 1 > self.applied:
            raise TrimmedAway(
                self.applied + 1,
                f"the primary trimmed its log up to entry {below - 1} before this follower "
                f"applied it (at {self.applied}; it stopped counting this follower, e.g. "
                "after it left the shard): it is copied again",
            )
        await self._trim_own(local, below)
        if not rows:
            self.source_position = self.applied
            return False
        batch: list[tuple[slog.Entry, Any]] = []
        bad: ApplyFailed | None = None
        for row in rows:
            try:
                batch.append((slog.Entry.from_row(row), row))
            except slog.BadEntry as e:
                bad = ApplyFailed(int(row["seq"]), str(e))
                break
        await self._apply(local, batch)
        if bad is not None:
            raise bad
        self.source_position = max(self.applied, self.source_position or 0)
        await self._bookmark(source)
        return True

    async def _apply(self, local: Any, batch: list[tuple[slog.Entry, Any]]) -> None:
        """The batch in one local transaction; when it fails, entry by entry (a
        transaction each), so the entries before the wrong one are applied and the
        divergence names that one."""
        if not batch:
            return
        try:
            await apply_entries(local, batch)
        except ApplyFailed:
            if len(batch) == 1:
                raise
            for one in batch:
                await apply_entries(local, [one])
                self.applied = one[0].seq
        else:
            self.applied = batch[-1][0].seq

    async def _trim_own(self, local: Any, source_below: int) -> None:
        """At most every period: drop the entries the primary dropped, never this
        follower's newest (its position)."""
        now = time.monotonic()
        if now - self._trimmed_at < logtrim.PERIOD_SECONDS:
            return
        self._trimmed_at = now
        await logtrim.trim(local, min(source_below, self.applied))


PIN_SQL = "SELECT count(set_config(n, v, true)) FROM unnest($1::text[], $2::text[]) AS s(n, v)"
"""Settings for the rest of the transaction in one round trip (a NULL value resets)."""
_SETVAL_SQL = (
    "SELECT count(setval(s::regclass, v)) FROM unnest($1::text[], $2::bigint[]) AS q(s, v)"
)


async def apply_entries(conn: Any, batch: list[tuple[slog.Entry, Any]]) -> None:
    """Run each entry as its writer did, and record them all, in one transaction.

    Replaying several committed transactions as one gives the same data: each was
    valid alone in this order (deferred checks included), and every statement pins the
    settings it ran with. Raises :class:`ApplyFailed` for an error of the entries' own
    statements (the transaction is rolled back; ``seq`` is the entry that was running);
    connection errors pass through unchanged.
    """
    seq = batch[0][0].seq
    try:
        async with conn.transaction():
            pinned_here: set[str] = set()
            for entry, _row in batch:
                seq = entry.seq
                pinned_here = await _replay(conn, entry, pinned_here)
            await conn.execute("RESET ROLE")
            await conn.execute(
                slog.COPY_SQL,
                [e.seq for e, _ in batch],
                [e.role for e, _ in batch],
                [r["statements"] for _, r in batch],
                [r["sequences"] for _, r in batch],
                [r["committed_at"] for _, r in batch],
            )
    except _TRANSIENT:
        raise
    except asyncpg.PostgresError as e:
        await _forget_prepared(conn)
        raise ApplyFailed(seq, f"{type(e).__name__}: {e}") from None


async def _forget_prepared(conn: Any) -> None:
    """A prepared statement outlives the transaction rolled back around it: left by an
    EXECUTE that failed, it would fail the next PREPARE (the retry entry by entry)."""
    if await conn.fetchval(
        "SELECT count(*) FROM pg_prepared_statements WHERE name = 'pgshard_apply'"
    ):
        await conn.execute("DEALLOCATE pgshard_apply")


async def _replay(conn: Any, entry: slog.Entry, earlier: set[str]) -> set[str]:
    """One entry's statements with its role and their settings pinned; the names of the
    settings it left pinned. Those an earlier entry of the transaction pinned (``earlier``)
    and this one's first statement does not name go back to the session's value, as in a
    transaction of its own."""
    pinned: dict[str, str] = {}
    named: set[str] = set()
    change: dict[str, str | None] = {"role": entry.role, **dict.fromkeys(earlier)}
    for stmt in entry.statements:
        change.update((n, v) for n, v in stmt.settings.items() if pinned.get(n) != v)
        if change:
            await conn.execute(PIN_SQL, list(change), list(change.values()))
            change = {}
        pinned.update(stmt.settings)
        named |= stmt.settings.keys()
        await _run(conn, stmt)
        if stmt.sql.lstrip()[:8].upper() == "ROLLBACK":
            # ROLLBACK TO SAVEPOINT also undid the settings pinned after it.
            pinned.clear()
    if change:  # no statements
        await conn.execute(PIN_SQL, list(change), list(change.values()))
    if entry.sequences:
        await conn.execute(_SETVAL_SQL, list(entry.sequences), list(entry.sequences.values()))
    return named


async def _run(conn: Any, stmt: slog.Statement) -> None:
    if not stmt.params and not stmt.types:
        await conn.execute(stmt.sql)  # simple protocol: as the client sent it
        return
    # Text-form parameters of unknown types: let the server type them as it did for the
    # writer (PREPARE infers the types, EXECUTE casts the quoted literals to them).
    types = f"({', '.join(stmt.types)})" if stmt.types else ""
    call = await conn.fetchval(
        "SELECT 'EXECUTE pgshard_apply(' || string_agg(quote_nullable(p), ', ' ORDER BY i) || ')'"
        " FROM unnest($1::text[]) WITH ORDINALITY AS t(p, i)",
        list(stmt.params),
    )
    # One round trip for the three: the client's text is one statement (its Parse
    # accepted it on the primary); the newline ends a trailing ``--`` comment.
    await conn.execute(
        f"PREPARE pgshard_apply{types} AS {stmt.sql}\n;"
        f"{call or 'EXECUTE pgshard_apply'}; DEALLOCATE pgshard_apply"
    )
