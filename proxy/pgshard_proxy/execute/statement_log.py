"""The proxy as the statement-log writer of ``statement`` replication (DESIGN §4).

Called by the client session (one :class:`Writer` per session) for every request
that may change data while the cluster replicates by statement; everything it
sends goes through an :class:`~.exchange.Exchange` on the shard's primary. It
follows the writer's protocol of ``contract.statement_log``:

* before the first write of a transaction, the shard's write lock
  (``LOCK_SQL``): write transactions of a shard run one at a time from their first
  write on, so the log's order is their commit order *and* each one saw exactly
  the ones before it (tests/integration/test_statement_log.py shows why taking it
  only at COMMIT is not enough);
* each write is made deterministic by the rewriter: the values it marks for
  capture (``nextval``, volatile defaults…) are evaluated once on the primary in
  the same transaction, together with the session settings that change results,
  and the rewritten text runs on the primary and is logged with those settings;
* just before COMMIT the transaction's statements are appended (``APPEND_SQL``,
  which draws ``seq``) with the last values of the sequences it advanced; data and
  log commit together or not at all. A statement outside a transaction block runs
  as a one-statement transaction the proxy begins and commits;
* in sync/quorum mode the client's ReadyForQuery after that COMMIT waits until enough
  followers applied the entry (``execute.sync_wait``).

An INSERT/UPDATE/DELETE the rewriter refuses runs with row images (``row_image``),
by either protocol: an extended batch's frames before it run first, then the proxy
runs it under its own statement name and answers its frames itself. What neither can
take fails like a PostgreSQL error (inside a transaction block the transaction is then
aborted) with the construct and what to write instead.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from ..contract import statement_log as slog
from ..contract import topology
from ..contract.sqltext import literal
from ..pool.backend import BackendConnection, Marker
from ..protocol import codec, messages
from ..protocol.sqlstate import error_response
from ..rewrite import NotDeterministic, RewriteContext, Rewriter, catalog_pg
from ..rewrite import catalog as catalog_mod
from ..rewrite import tokens as tokens_mod
from ..rewrite.template import Capture
from ..routing import keyroute
from ..routing.classify import Classified, Kind, classify
from . import bind_messages, row_image, sync_wait
from .exchange import Answer, Exchange

SETTINGS = (
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "search_path",
    "extra_float_digits",
    "standard_conforming_strings",
    "bytea_output",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
)
"""Session settings that change what a statement writes: logged with each statement."""

SETTINGS_SQL = ", ".join(f"current_setting('{s}')" for s in SETTINGS)
"""The values of :data:`SETTINGS`, as select-list items (in that order)."""
_NOW_SQL = "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"

CATALOG_SECONDS = 10.0
"""A shard's catalog is read again at most this old (DDL through another proxy)."""

LOGGED = frozenset((Kind.WRITE, Kind.DDL, Kind.OTHER, Kind.SAVEPOINT))
"""What runs through the writer; COMMIT too while its transaction wrote."""

_TRANSACTION_WORDS = frozenset(("BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "PREPARE"))
_IMAGE_SHAPE = (
    "the row-image fallback runs such an INSERT/UPDATE/DELETE by the extended protocol "
    "only as a Bind followed by the Execute of its portal (Describes of it between)"
)
_IMAGE = "pgshard_image"
"""The proxy's statement and portal name for a Bind run with row images."""
_NEXTVAL = re.compile(r"nextval\('((?:[^']|'')+)'")


class Shared:
    """What every session of the process shares: the rewriter and the shards' catalogs."""

    def __init__(self, current: Callable[[], topology.Topology | None] = lambda: None) -> None:
        self.current = current
        """The proxy's current topology (``statementAcks``, the shards' followers)."""
        self.rewriter = Rewriter()
        self._catalogs: dict[int, tuple[catalog_mod.StaticCatalog, float]] = {}
        self._version = 0

    def catalog(self, shard: int) -> catalog_mod.StaticCatalog | None:
        found = self._catalogs.get(shard)
        if found is None or time.monotonic() - found[1] > CATALOG_SECONDS:
            return None
        return found[0]

    def stale(self, shard: int) -> None:
        """The shard's schema changed (DDL ran or was rolled back)."""
        self._catalogs.pop(shard, None)

    async def load(self, shard: int, ex: Exchange) -> catalog_mod.StaticCatalog:
        """Read the catalog through ``ex`` (inside the caller's transaction, so its own
        uncommitted DDL is seen)."""
        self._version += 1
        found = await catalog_pg.load(_JsonRows(ex), self._version)
        self._catalogs[shard] = (found, time.monotonic())
        return found


class _JsonRows:
    """``fetch()`` for ``catalog_pg.load`` over an exchange: rows come back as JSON."""

    def __init__(self, ex: Exchange) -> None:
        self._ex = ex

    async def fetch(self, sql: str) -> list[dict[str, object]]:
        query = f"SELECT coalesce(json_agg(q), '[]')::text FROM ({sql}) q"
        row = (await self._ex.query(query)).one()
        rows: list[dict[str, object]] = json.loads(row[0] or "[]")
        return rows


@dataclasses.dataclass
class _Transaction:
    """The logged part of the open transaction."""

    locked: bool = False
    statements: list[slog.Statement] = dataclasses.field(default_factory=list)
    writes: int = 0
    sequences: set[str] = dataclasses.field(default_factory=set)
    ddl: bool = False


class Forward(Protocol):
    """How the session sends a client's extended message it does not change."""

    def parse_of(self, statement: str) -> bytes | None:
        """The Parse message body of the client's prepared statement ``statement``."""
        ...

    def forward(self, b: BackendConnection, f: codec.Frame) -> None: ...


class _Failed(Exception):
    """A query the writer ran for a client's statement failed: its error is the answer."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.error_text)
        self.answer = answer


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a request the writer ran ended: the status for the client's ReadyForQuery
    and the ``seq`` of the entry it committed, if it committed one."""

    status: messages.TxStatus
    seq: int | None = None


class Writer:
    """One session's side of the log (see the module docstring)."""

    def __init__(self, shared: Shared, client_write: Callable[[bytes], None]) -> None:
        self._shared = shared
        self._client_write = client_write
        self._tx = _Transaction()

    def handles(self, c: Classified) -> bool:
        """Whether a request classified ``c`` must run through the writer."""
        return c.kind in LOGGED or (c.kind is Kind.COMMIT and self._tx.writes > 0)

    def ended(self) -> None:
        """The session's server reported no transaction open."""
        self._tx = _Transaction()

    async def simple(self, ex: Exchange, shard: int, sql: str, c: Classified) -> Outcome:
        """Run simple Query ``sql`` (classified ``c``) on the shard's primary behind ``ex``."""
        b = ex.b
        if b.answering:  # a hidden BEGIN the session queued: let its status arrive
            await ex.query("")
        if c.kind is Kind.COMMIT:
            return await self._commit(ex, shard, sql)
        if c.kind is Kind.SAVEPOINT:
            answer = await ex.relay(messages.query(sql))
            if answer.error is None:
                self._savepoint(sql)
            return self._end(answer, shard)
        if b.tx_status is messages.TxStatus.FAILED:
            return self._end(await ex.relay(messages.query(sql)), shard)
        autocommit = b.tx_status is messages.TxStatus.IDLE
        if autocommit:
            self.ended()
            await ex.query("BEGIN")
        refusal = _mixed_transaction_control(sql)
        if refusal is None:
            answer_or_refusal = await self._write(ex, shard, sql, c)
        else:
            answer_or_refusal = refusal
        if isinstance(answer_or_refusal, NotDeterministic) and refusal is None:
            answer_or_refusal = await self._row_images(ex, shard, sql, answer_or_refusal)
        if isinstance(answer_or_refusal, NotDeterministic):
            return await self._refuse(ex, answer_or_refusal, autocommit)
        answer = answer_or_refusal
        return await self._finish(ex, shard, answer, autocommit)

    async def _row_images(
        self, ex: Exchange, shard: int, sql: str, refusal: NotDeterministic
    ) -> Answer | NotDeterministic:
        """The row-image fallback (``row_image``) for a simple Query the rewriter refused:
        its answer (already sent to the client), or the refusal to send instead."""
        tgt = row_image.target(sql)
        if tgt is None:
            return refusal
        try:
            got = await self._images(ex, tgt, refusal, ex.query)
        except _Failed as e:
            if e.answer.error is not None:
                self._client_write(e.answer.error)
            return e.answer
        if isinstance(got, NotDeterministic):
            return got
        answer, image = got
        if image is not None:
            self._tx.statements.append(image)
            self._tx.writes += 1
        for tag in answer.tags:
            self._client_write(messages.command_complete(tag))
        return answer

    async def _images(
        self,
        ex: Exchange,
        tgt: row_image.Target,
        refusal: NotDeterministic,
        run: Callable[[str], Awaitable[Answer]],
    ) -> tuple[Answer, slog.Statement | None] | NotDeterministic:
        """Run ``tgt`` with the RETURNING of its rows' images (``run`` sends that text
        as the client's protocol needs): its answer and the statement to log instead
        (None: it wrote no row), or why the fallback cannot take it. A failure of the
        statement itself raises _Failed with its error."""
        found = await _JsonRows(ex).fetch(row_image.TABLE_SQL.replace("$1", literal(tgt.table)))
        checked = row_image.check(tgt, found[0] if found else None, refusal)
        if isinstance(checked, NotDeterministic):
            return checked
        table, columns = checked
        await self._lock(ex)
        row = (await ex.query(f"SELECT {SETTINGS_SQL}, {row_image.CHANGES_COLUMNS}")).one()
        settings = dict(zip(SETTINGS, map(str, row[: len(SETTINGS)]), strict=True))
        answer = await run(row_image.capture_sql(tgt, columns))
        if answer.error is not None:
            raise _Failed(answer)
        after = (await ex.query(f"SELECT {row_image.CHANGES_COLUMNS}")).one()
        elsewhere = row_image.changed_elsewhere(found[0], row[-2], after[0])
        if elsewhere:
            return NotDeterministic(
                f"{refusal.construct}, and the row-image fallback cannot run it: it also "
                f"wrote rows of other tables ({', '.join(elsewhere)}; a function or a "
                "foreign-key cascade), which row images of one table do not carry",
                refusal.position,
                refusal.hint,
            )
        self._tx.sequences.update(row_image.advanced(row[-1], after[1]))
        if not answer.rows:
            return answer, None
        return answer, row_image.image_statement(tgt.op, table, columns, answer.rows, settings)

    async def _bound_images(
        self,
        ex: Exchange,
        tgt: row_image.Target,
        refusal: NotDeterministic,
        types: tuple[int, ...],
        frames: Sequence[codec.Frame],
    ) -> slog.Statement | NotDeterministic | None:
        """The row-image fallback for a Bind (``frames``: it, Describes of its portal,
        its Execute): runs it with the client's parameters under the proxy's own
        statement and portal names (the client's unnamed ones stay as they were), and
        answers each frame as PostgreSQL would have. What to log, as ``_images``."""
        client = keyroute.parse_bind(frames[0].body)

        def run(text: str) -> Awaitable[Answer]:
            return ex.collect(
                bind_messages.parse(_IMAGE, text, types)
                + bind_messages.bind(_IMAGE, _IMAGE, client.formats, client.values)
                + bind_messages.execute(_IMAGE)
                + messages.close_portal(_IMAGE)
                + messages.close_statement(_IMAGE)
                + bind_messages.sync()
            )

        got = await self._images(ex, tgt, refusal, run)
        if isinstance(got, NotDeterministic):
            return got
        answer, image = got
        for f in frames:
            if f.type == ord("B"):
                self._client_write(messages.bind_complete())
            elif f.type == ord("D"):  # the statement has no RETURNING of its own
                self._client_write(messages.no_data())
            else:
                self._client_write(messages.command_complete(answer.tags[0]))
        return image

    async def extended(
        self, ex: Exchange, shard: int, frames: Sequence[codec.Frame], fwd: Forward
    ) -> Outcome:
        """Run an extended batch (``frames``, up to its Sync) that executes a write: each
        write's Bind runs the rewritten text, its parameters followed by the fixed values."""
        b = ex.b
        if b.answering:
            await ex.query("")
        if b.tx_status is messages.TxStatus.FAILED:
            return self._end(await self._send(ex, frames, {}, fwd), shard)
        autocommit = b.tx_status is messages.TxStatus.IDLE
        if autocommit:
            self.ended()
            await ex.query("BEGIN")
        replaced: dict[int, tuple[bytes, bytes]] = {}
        logged: list[slog.Statement] = []
        writes = 0
        commit_seq: int | None = None
        texts: dict[str, tuple[str, tuple[int, ...]]] = {}
        start = 0
        """The first frame not sent yet (a row image runs after the frames before it,
        and answers its own frames)."""
        try:
            for i, f in enumerate(frames):
                if i < start:
                    continue
                if f.type == ord("P"):
                    texts[messages.parse_fields(f.body)[0]] = _parsed(f.body)
                    continue
                if f.type != ord("B"):
                    continue
                statement = messages.bind_names(f.body)[1]
                known = texts.get(statement) or _parsed(fwd.parse_of(statement))
                sql, types = known
                kind = classify(sql).kind
                if kind is Kind.SAVEPOINT:
                    logged.append(slog.Statement(sql))
                    self._tx.locked = self._tx.locked and not _rolls_back(sql)
                elif kind is Kind.COMMIT and self._tx.writes + writes > 0:
                    self._tx.statements.extend(logged)
                    self._tx.writes += writes
                    logged, writes = [], 0
                    commit_seq = await self._append_entry(ex)
                elif kind in LOGGED:
                    got = await self._bound(ex, shard, sql, types, f.body)
                    if isinstance(got, NotDeterministic):
                        b.statements.pop("", None)
                        tgt = row_image.target(sql)
                        end = _portal_end(frames, i)
                        if tgt is None or end is None:
                            if tgt is not None:
                                hint = f"{got.hint} ({_IMAGE_SHAPE})"
                                got = dataclasses.replace(got, hint=hint)
                            return await self._refuse(ex, got, autocommit)
                        if i > start:  # what the client sent before it runs first
                            answer = await self._send(ex, frames[start:i], replaced, fwd, start)
                            if answer.error is not None:
                                return await self._finish(ex, shard, answer, autocommit)
                        start = end + 1
                        image = await self._bound_images(ex, tgt, got, types, frames[i : end + 1])
                        if isinstance(image, NotDeterministic):
                            return await self._refuse(ex, image, autocommit)
                        if image is not None:
                            logged.append(image)
                            writes += 1
                        continue
                    replaced[i], stmt = got
                    logged.append(stmt)
                    writes += 1
        except _Failed as e:
            b.statements.pop("", None)
            if e.answer.error is not None:
                self._client_write(e.answer.error)
            if autocommit:
                await ex.query("ROLLBACK")
                self._after_rollback(shard)
                return Outcome(messages.TxStatus.IDLE)
            return Outcome(messages.TxStatus.FAILED)
        b.statements.pop("", None)  # the proxy's own unnamed statements replaced it
        answer = await self._send(ex, frames[start:], replaced, fwd, start)
        if answer.error is None:
            self._tx.statements.extend(logged)
            self._tx.writes += writes
        if commit_seq is not None:
            committed = answer.error is None and answer.status is messages.TxStatus.IDLE
            self.ended()
            return Outcome(answer.status, commit_seq if committed else None)
        return await self._finish(ex, shard, answer, autocommit)

    async def _send(
        self,
        ex: Exchange,
        frames: Sequence[codec.Frame],
        replaced: dict[int, tuple[bytes, bytes]],
        fwd: Forward,
        first: int = 0,
    ) -> Answer:
        """The batch as the client sent it (``frames``, the batch's from index ``first``
        on), but each write's Bind replaced by the Parse of its rewritten text (answer
        swallowed) and a Bind with the fixed values. Frames that do not end with the
        client's Sync (those before a row image) get one of the proxy's: inside the
        transaction the proxy began or the client's, it ends no transaction."""
        b = ex.b
        last = frames[-1] if frames[-1].type == ord("S") else None
        for i, f in enumerate(frames if last is None else frames[:-1], first):
            instead = replaced.get(i)
            if instead is None:
                fwd.forward(b, f)
            else:
                b.send(instead[0], Marker.HIDDEN_PARSE)
                b.send(instead[1])
        return await ex.relay(bind_messages.sync() if last is None else last.data)

    async def _finish(self, ex: Exchange, shard: int, answer: Answer, autocommit: bool) -> Outcome:
        """After a request's statements ran (``answer``): a client's transaction block
        goes on (or stays aborted); the one the proxy began for a statement outside one
        commits with its entry, or is rolled back after an error (the rest of a batch is
        then skipped, as PostgreSQL does)."""
        if not autocommit:
            return self._end(answer, shard)
        if answer.error is not None:
            await ex.query("ROLLBACK")
            self._after_rollback(shard)
            return Outcome(messages.TxStatus.IDLE)
        return await self._append_and_commit(ex, shard, None)

    async def _bound(
        self, ex: Exchange, shard: int, sql: str, types: tuple[int, ...], bind_body: bytes
    ) -> tuple[tuple[bytes, bytes], slog.Statement] | NotDeterministic:
        """A write's Bind made deterministic: (the replacement Bind, what to log)."""
        found = await self._analysis(ex, shard, sql)
        if isinstance(found, NotDeterministic):
            return found
        base, captures = found
        prepared = self._shared.rewriter.prepare(sql, types, base)
        assert not isinstance(prepared, NotDeterministic)  # analysed above
        described = await ex.collect(
            bind_messages.parse("", prepared.text, types)
            + bind_messages.describe_statement("")
            + bind_messages.sync()
        )
        if described.error is not None:
            raise _Failed(described)
        oids = described.param_types
        n = prepared.parameters
        await self._lock(ex)
        values = [
            *(f"${k + 1}::text" for k in range(n)),
            _NOW_SQL,
            SETTINGS_SQL,
            *(f"({cap.sql})::text" for cap in captures),
            *(f"format_type({oid}, NULL)" for oid in oids),
        ]
        client = keyroute.parse_bind(bind_body)
        answer = await ex.collect(
            bind_messages.parse("", "SELECT " + ", ".join(values), oids[:n])
            + bind_messages.bind("", "", client.formats, client.values)
            + bind_messages.execute()
            + bind_messages.sync()
        )
        if answer.error is not None or not answer.rows:
            raise _Failed(answer)
        row = answer.rows[-1]
        params, rest = row[:n], row[n:]
        now, settings, rest = rest[0], rest[1 : 1 + len(SETTINGS)], rest[1 + len(SETTINGS) :]
        captured, type_names = rest[: len(captures)], rest[len(captures) :]
        pinned = dict(zip(SETTINGS, map(str, settings), strict=True))
        ctx = self._context(base, str(now), pinned)
        extra = prepared.bind_values(ctx, captured)
        self._note(captures, classify(sql), shard)
        statement = slog.Statement(
            prepared.text,
            params=(*params, *extra),
            types=tuple(str(t) for t in type_names),
            settings=pinned,
        )
        parse = bind_messages.parse("", prepared.text, oids)
        return (parse, bind_messages.bind_with_extra(bind_body, "", extra)), statement

    # --- one statement

    async def _analysis(
        self, ex: Exchange, shard: int, sql: str
    ) -> tuple[RewriteContext, tuple[Capture, ...]] | NotDeterministic:
        """The rewriter's verdict on ``sql`` with the shard's catalog: a context to
        complete and the values to capture, or the refusal."""
        shared = self._shared
        catalog = shared.catalog(shard) or await shared.load(shard, ex)
        base = RewriteContext(datetime.datetime.now(datetime.UTC), catalog=catalog)
        found = shared.rewriter.analyze(sql, base)
        if not isinstance(found, NotDeterministic) and found.needs_catalog:
            # A table this catalog does not know yet (created since): read it again.
            catalog = await shared.load(shard, ex)
            base = dataclasses.replace(base, catalog=catalog)
            found = shared.rewriter.analyze(sql, base)
            if not isinstance(found, NotDeterministic) and found.needs_catalog:
                need = found.needs_catalog[0]
                return NotDeterministic(
                    need.construct,
                    need.position,
                    f"{need.reason}, and the primary of shard {shard} has no such table on "
                    "the search_path: check the name (a table of another schema: add the "
                    "schema to search_path)",
                )
        if isinstance(found, NotDeterministic):
            return found
        return base, found.template.captures

    async def _lock(self, ex: Exchange) -> None:
        """The shard's write lock, before the transaction's first write."""
        if not self._tx.locked:
            answer = await ex.query(slog.LOCK_SQL)
            if answer.error is not None:
                raise _Failed(answer)
            self._tx.locked = True

    @staticmethod
    def _context(base: RewriteContext, now: str, settings: dict[str, str]) -> RewriteContext:
        timestamp = datetime.datetime.fromisoformat(now).replace(tzinfo=datetime.UTC)
        return dataclasses.replace(
            base,
            timestamp=timestamp,
            time_zone=_zone(settings["TimeZone"]),
            seed=secrets.randbits(62),
        )

    def _note(self, captures: Sequence[Capture], c: Classified, shard: int) -> None:
        """After a logged statement: the sequences it advanced; DDL makes the catalog stale."""
        for cap in captures:
            m = _NEXTVAL.search(cap.sql)
            if m is not None:
                self._tx.sequences.add(m.group(1).replace("''", "'"))
        if c.kind is not Kind.WRITE:
            self._tx.ddl = True
            self._shared.stale(shard)

    async def _write(
        self, ex: Exchange, shard: int, sql: str, c: Classified
    ) -> Answer | NotDeterministic:
        found = await self._analysis(ex, shard, sql)
        if isinstance(found, NotDeterministic):
            return found
        base, captures = found
        try:
            await self._lock(ex)
        except _Failed as e:
            return e.answer
        values = [_NOW_SQL, SETTINGS_SQL, *(f"({cap.sql})::text" for cap in captures)]
        row = (await ex.query(f"SELECT {', '.join(values)}")).one()
        settings = dict(zip(SETTINGS, map(str, row[1 : 1 + len(SETTINGS)]), strict=True))
        ctx = self._context(base, str(row[0]), settings)
        rewritten = self._shared.rewriter.rewrite(sql, ctx)
        assert not isinstance(rewritten, NotDeterministic)  # analysed above
        text = rewritten.text(row[1 + len(SETTINGS) :])
        answer = await ex.relay(messages.query(text))
        if answer.error is None:
            self._tx.statements.append(slog.Statement(text, settings=settings))
            self._tx.writes += 1
            self._note(captures, c, shard)
        return answer

    async def _refuse(self, ex: Exchange, refusal: NotDeterministic, autocommit: bool) -> Outcome:
        """The statement is refused as a PostgreSQL error: nothing of it ran; inside a
        transaction block the transaction is aborted, as after any error."""
        message = f"{refusal.message}; nothing ran"
        hint = refusal.hint
        if autocommit:
            await ex.query("ROLLBACK")
            self.ended()
            self._client_write(error_response(refusal.sqlstate, message, hint=hint or None))
            return Outcome(messages.TxStatus.IDLE)
        body = (
            f"BEGIN RAISE EXCEPTION USING ERRCODE = '{refusal.sqlstate}', "
            f"MESSAGE = {literal(message)}, HINT = {literal(hint)}; END"
        )
        answer = await ex.relay(messages.query(f"DO {_dollar(body)}"))
        return Outcome(answer.status)

    def _savepoint(self, sql: str) -> None:
        """SAVEPOINT, RELEASE and ROLLBACK TO are logged as they ran. A lock taken after
        the savepoint is released by ROLLBACK TO: take it again at the next write."""
        self._tx.statements.append(slog.Statement(sql))
        if _rolls_back(sql):
            self._tx.locked = False

    # --- ending a transaction

    async def _commit(self, ex: Exchange, shard: int, sql: str) -> Outcome:
        b = ex.b
        if b.tx_status is not messages.TxStatus.IN_TRANSACTION or self._tx.writes == 0:
            answer = await ex.relay(messages.query(sql))
            return self._end(answer, shard)
        return await self._append_and_commit(ex, shard, sql)

    async def _append_entry(self, ex: Exchange) -> int | None:
        """Append the open transaction's entry (just before its COMMIT): its ``seq``."""
        tx = self._tx
        if tx.writes == 0:
            return None
        sequences = await self._sequence_values(ex)
        statements = literal(slog.Entry.statements_json(tx.statements)) + "::jsonb"
        append = slog.APPEND_SQL.replace("$1::jsonb", statements).replace(
            "$2::jsonb", literal(json.dumps(sequences)) + "::jsonb"
        )
        return int(str((await ex.query(append)).one()[0]))

    async def _append_and_commit(self, ex: Exchange, shard: int, sql: str | None) -> Outcome:
        """Append the transaction's entry, then COMMIT (the client's, or the proxy's for
        a statement outside a transaction block)."""
        tx = self._tx
        seq = await self._append_entry(ex)
        if sql is None:
            answer = await ex.query("COMMIT")
            if answer.error is not None:
                self._client_write(answer.error)
        else:
            answer = await ex.relay(messages.query(sql))
        committed = answer.error is None and answer.status is messages.TxStatus.IDLE
        if tx.ddl and not committed:
            self._shared.stale(shard)
        self.ended()
        if committed and seq is not None:  # sync/quorum: before the ReadyForQuery
            await sync_wait.wait_applied(ex, shard, seq, self._shared.current, self._client_write)
        return Outcome(answer.status, seq if committed else None)

    async def _sequence_values(self, ex: Exchange) -> dict[str, int]:
        names = sorted(self._tx.sequences)
        if not names:
            return {}
        columns = ", ".join(f"pg_sequence_last_value({literal(n)}::regclass)" for n in names)
        row = (await ex.query(f"SELECT {columns}")).one()
        return {n: int(v) for n, v in zip(names, row, strict=True) if v is not None}

    def _end(self, answer: Answer, shard: int | None) -> Outcome:
        if answer.status is messages.TxStatus.IDLE:
            if self._tx.ddl and shard is not None:
                self._shared.stale(shard)
            self.ended()
        return Outcome(answer.status)

    def _after_rollback(self, shard: int) -> None:
        if self._tx.ddl:
            self._shared.stale(shard)
        self.ended()


def _mixed_transaction_control(sql: str) -> NotDeterministic | None:
    """A multi-statement text that also begins or ends transactions: the proxy could not
    append the log entry before the COMMIT inside it."""
    if ";" not in sql:
        return None
    try:
        statements = tokens_mod.split(sql, tokens_mod.tokenize(sql))
    except Exception:  # the rewriter reports unreadable text itself
        return None
    if len(statements) < 2:
        return None
    for st in statements:
        if st.first_word in _TRANSACTION_WORDS:
            return NotDeterministic(
                f"{st.first_word} inside a multi-statement query",
                st.start,
                "send transaction control (BEGIN/COMMIT/ROLLBACK) as statements of their own, "
                "so the proxy can log the transaction before it commits",
            )
    return None


def _portal_end(frames: Sequence[codec.Frame], i: int) -> int | None:
    """The index of the Execute of the portal ``frames[i]`` (a Bind) binds, when only
    Describes of that portal come between; else None."""
    portal = messages.bind_names(frames[i].body)[0]
    for j in range(i + 1, len(frames)):
        f = frames[j]
        if f.type == ord("E") and messages.execute_portal(f.body) == portal:
            return j
        if f.type != ord("D") or f.body[:1] != b"P" or f.body[1:-1].decode() != portal:
            return None
    return None


def _parsed(parse_body: bytes | None) -> tuple[str, tuple[int, ...]]:
    """Text and declared parameter types of a Parse message body."""
    if parse_body is None:
        return "", ()
    return messages.parse_fields(parse_body)[1], bind_messages.parse_types(parse_body)


def _rolls_back(sql: str) -> bool:
    return sql.lstrip()[:8].upper() == "ROLLBACK"


def _zone(name: str) -> str:
    """The session's TimeZone as an IANA name for the rewriter (PostgreSQL also accepts
    POSIX-style names the rewriter cannot load: those pin UTC in the literal, which the
    logged TimeZone setting then reads identically on the follower)."""
    try:
        RewriteContext(datetime.datetime.now(datetime.UTC), time_zone=name)
    except ValueError:
        return "UTC"
    return name


def _dollar(body: str) -> str:
    tag = "$pgshard$"
    while tag in body:
        tag = tag[:-1] + "x$"
    return f"{tag}{body}{tag}"
