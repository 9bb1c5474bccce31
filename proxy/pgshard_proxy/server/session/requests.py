"""The request loop: client frames in order, each request planned and sent on.

Owned by ``session.client.Session`` (one :class:`RequestLoop` per client, fed
the frames it reads once READY). A request is a simple Query, a FunctionCall,
or an extended-protocol batch (the messages up to and including a Sync); a
whole request goes to one server. :func:`batch_class` classifies a batch once,
by its most demanding statement, before its first message is sent;
``routing.dispatch`` decides who answers it: the proxy (``SET``/``SHOW
pgshard.*``, refusals) or a server the session chooses (:meth:`Host.server_for`).

:class:`Pipeline` is where the loop stands; the data that belongs to a state
is noted next to it. After an error inside a batch the loop drops messages up
to the Sync, as PostgreSQL does.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from ...consistency.session import SessionConsistency
from ...consistency.tracker import Mode
from ...pool.backend import BackendConnection, Marker
from ...pool.pool import FOLLOWER_EPOCH
from ...protocol import codec, messages
from ...protocol.sqlstate import SqlState, error_response
from ...routing import dispatch, keyroute
from ...routing.classify import (
    PROXY_PREFIX,
    PROXY_VIEWS,
    Classified,
    Kind,
    Refusal,
    classify,
    classify_bytes,
)
from ...routing.router import Role, Route
from .ordering import Servers
from .proxy_answers import Mixed, Parsed, ProxyPortals
from .replicated import Replicated
from .sharding import SHARD_0, Target
from .sharding import Kind as Sharded

# Frontend message type bytes.
Q, P, B, D, E, C, H, S, X, F = b"QPBDECHSXF"
COPY = frozenset(b"dcf")
EXTENDED = frozenset(b"PBDECHS")

FUNCTION_CALL = Classified(Kind.WRITE)
"""A FunctionCall message: unknown function, so the primary."""
SYNC_ONLY = Classified(Kind.OTHER)
"""An extended batch with nothing but Describe/Execute/Sync: any server will do."""


_TRANSACTION_CONTROL = frozenset((Kind.BEGIN, Kind.COMMIT, Kind.ROLLBACK))
_NO_DATA = b"n\x00\x00\x00\x04"


def _lone_statement(frames: Sequence[codec.Frame]) -> bool:
    """An extended batch that runs one statement (Parse, Bind, Describe, Execute, Sync)."""
    return frames[-1].type == S and sum(f.type == E for f in frames) == 1 and all(
        f.type in (P, B, D, E, C, S) for f in frames
    ) and sum(f.type == P for f in frames) <= 1  # fmt: skip


UNLOGGED_DDL = Refusal(
    SqlState.FEATURE_NOT_SUPPORTED.value,
    "this cluster replicates by statement, and a write sent to several shards (DDL, a "
    "multi-row INSERT split by key) is not written to the shards' statement logs yet: it "
    "was refused and nothing ran",
    "write the rows of each shard in statements of their own, run DDL on a cluster with "
    "one shard, or use --replication-method wal",
)
_SEVERAL_PRIMARIES = frozenset((Sharded.BROADCAST, Sharded.SPLIT, Sharded.COPY_IN))


class Pipeline(enum.Enum):
    """Where the session's request loop stands."""

    NEXT = "the next frame starts a request"
    BATCH = "extended messages up to Sync go to the batch's server (batch, _batch_route)"
    PROXY_BATCH = "extended messages up to Sync are answered by the proxy"
    SKIP_TO_SYNC = "a message of the batch failed: drop messages up to Sync (_skip_status)"
    WAITING = "the request at the head waits for answers, a route or a server (waiting_on)"


_PRIMARY_ONLY = frozenset((Kind.WRITE, Kind.DDL, Kind.PIN, Kind.OTHER))

INCOMPLETE_BATCH_BYTES = 1 << 20
"""An extended batch with neither Sync nor Flush yet is held back up to this size."""
LONG_BATCH = Classified(Kind.WRITE)
"""A batch longer than that without Sync or Flush: the primary, which can run anything."""


IN_TRANSACTION = Classified(Kind.WRITE)
"""An incomplete batch inside a transaction: it goes to the transaction's server, so it
is forwarded before its Sync (PostgreSQL answers what it can, and flushes its errors)."""


def batch_class(
    frames: Iterable[codec.Frame], statement: Callable[[str], Classified | None]
) -> Classified | None:
    """The most demanding statement among queued extended messages up to Sync;
    ``statement(name)`` is how the session classified its prepared statement ``name``.

    None while the batch is incomplete: no Sync or Flush yet (the client expects no
    answer before one), so the rest may still bring a write; the batch is routed
    once it is complete, whatever TCP reads it came in.
    """
    chosen: Classified | None = None
    complete = False
    size = 0
    for f in frames:
        t = f.type
        size += len(f.data)
        if t == P:
            c = classify(messages.parse_fields(f.body)[1])
        elif t == B:
            found = statement(messages.bind_names(f.body)[1])
            if found is None:
                continue
            c = found
        elif t == S:
            complete = True
            break
        else:
            complete = complete or t == H
            continue
        if c.refusal is not None:
            return c  # answered by the proxy: nothing of this batch runs
        if c.kind is Kind.PROXY_SHOW:
            if chosen is None:
                return c  # a batch the proxy answers (proxy_answers)
            continue  # after a server's statement: the server answers it
        if chosen is None or (
            chosen.kind is Kind.READ
            and (c.kind is not Kind.READ or (c.server_local and not chosen.server_local))
        ):
            chosen = c
    if not complete:
        if size < INCOMPLETE_BATCH_BYTES:
            return None
        if chosen is None or chosen.kind is Kind.READ:
            return LONG_BATCH
    return chosen or SYNC_ONLY


def _executes(frames: Iterable[codec.Frame]) -> bool:
    """Whether the batch up to its Sync or Flush binds or executes a statement (one that
    only prepares or describes changes no data)."""
    for f in frames:
        if f.type in (B, E):
            return True
        if f.type in (S, H):
            return False
    return False


class Host(Protocol):
    """What the loop needs from its session."""

    def running(self) -> bool:
        """The session is READY (not closed)."""
        ...

    def write(self, data: bytes) -> None: ...

    def writable(self) -> bool:
        """The client's socket takes more: False while it does not read its answers (the
        loop then stops until it has read)."""
        ...

    def block(self, blocked: bool) -> None:
        """Stop (or resume) reading from the client while a request waits."""
        ...

    def server_for(self, c: Classified, shard: int = 0) -> tuple[BackendConnection, Route] | None:
        """The server of ``shard`` and route for a request classified ``c``, its SETs
        replayed; None after arranging to wait (the loop is then WAITING) or ending the
        session."""
        ...

    def target(self, sql: str, bind: keyroute.BindValues | None) -> Target | None:
        """Where a statement goes (``sharding.target``); None after arranging to wait."""
        ...

    def tx_shard(self) -> int | None:
        """The shard the open transaction runs on, if one is open."""
        ...

    def sharded(self) -> bool:
        """Distributed tables on several shards: statements are placed by key."""
        ...

    def show_view(self, name: str) -> bytes:
        """``SHOW pgshard.<name>`` of a view (``PROXY_VIEWS``): the whole simple answer."""
        ...

    def view_text(self, name: str) -> str:
        """The same view as one text value (extended protocol)."""
        ...

    def run_on_shards(self, t: Target, frames: list[codec.Frame], sql: str) -> None:
        """Carry out a scatter or broadcast request (``frames``: the client's); when done,
        drop the frames from the queue and resume the loop."""
        ...

    def sent_to_follower(self, b: BackendConnection, f: codec.Frame) -> None: ...

    def terminate(self) -> None:
        """The client sent Terminate."""
        ...

    def replication_method(self) -> str:
        """The cluster's replication method (``wal`` or ``statement``), from the topology."""
        ...

    def logs(self, c: Classified) -> bool:
        """Statement replication: a simple query classified ``c`` goes through the
        statement-log writer (``execute.statement_log``)."""
        ...

    def run_logged(
        self,
        b: BackendConnection,
        route: Route,
        frames: list[codec.Frame],
        shard: int,
        c: Classified,
    ) -> None:
        """Run a simple query or an extended batch (``frames``, up to its Sync) through the
        log writer on primary ``b``; when done, drop it from the queue and resume."""
        ...


class RequestLoop:
    """The frames a client sent and where their requests stand (module docstring)."""

    def __init__(
        self,
        host: Host,
        servers: Servers,
        replicated: Replicated,
        consistency: SessionConsistency,
        answered: Callable[[], None] = lambda: None,
    ) -> None:
        self._host = host
        self._answered = answered
        """Counts a request the proxy answers itself (metrics)."""
        self._servers = servers
        self._replicated = replicated
        self._consistency = consistency
        self.frames: collections.deque[codec.Frame] = collections.deque()
        self.pipeline = Pipeline.NEXT
        self.waiting_on: BackendConnection | None = None
        self.batch: BackendConnection | None = None
        self._batch_route: Route | None = None
        self._skip_status = messages.TxStatus.IDLE
        self._batch_read = False
        """BATCH: the batch was routed as a read (it may move to the primary, see below)."""
        self._left: BackendConnection | None = None
        """The follower a batch left for the primary (``_leave_follower``), until the rest
        of the batch is routed."""
        self.pinned = False
        """A statement pinned the session to the primary (temp table, cursor WITH HOLD, ...)."""
        self._proxy_portals = ProxyPortals()
        self.last_query: tuple[BackendConnection, codec.Frame] | None = None
        """The simple Query last sent to a server, while nothing else was sent after it
        (what a primary that answers "read-only" may run again, ``server.read_only``)."""
        self._flush_ends_batch = False
        """The batch being sent ends at its Flush (it only prepares): route the rest anew."""
        self._began_on: int | None = None
        self._batch_executes = False
        self.copy_in: Callable[[codec.Frame], None] | None = None
        """A COPY FROM STDIN split over the shards takes the client's CopyData/Done/Fail."""
        self.pending_begin: str | None = None
        """Sharded: a BEGIN the proxy answered; it runs on the shard of the transaction's
        first statement (which pins the transaction there), just before that statement."""
        self.pending_failed = False
        """A statement run outside the transaction of ``pending_begin`` (on several
        shards, or a constant SELECT) failed: the transaction is aborted, as PostgreSQL
        aborts it after an error, until COMMIT or ROLLBACK (``outside_transaction``)."""

    def tx_status(self) -> messages.TxStatus:
        if self.pending_begin is not None:
            if self.pending_failed:
                return messages.TxStatus.FAILED
            return messages.TxStatus.IN_TRANSACTION
        return self._servers.tx_status()

    def outside_transaction(self, failed: bool) -> messages.TxStatus:
        """A statement ran outside the transaction whose BEGIN waits: the client is
        still in that transaction, aborted if the statement failed."""
        self.pending_failed = self.pending_failed or failed
        return self.tx_status()

    def _begin_on(self, b: BackendConnection, shard: int, route: Route) -> None:
        """The transaction's first statement goes to ``b``: its BEGIN first, unseen."""
        if self.pending_begin is not None:
            if b.answering:
                # A prepare ended by a Flush (asyncpg) left an implicit transaction open
                # on ``b``, with a snapshot: there the BEGIN would fail on an ISOLATION
                # LEVEL, and the transaction would be lost. End it first.
                b.send(messages.sync(), Marker.HIDDEN_SYNC)
                self._servers.sent(b, route)
            b.send(messages.query(self.pending_begin), Marker.HIDDEN_QUERY)
            self.pending_begin = None
            self._began_on = shard

    def _transaction_takes_it(self) -> bool:
        """An open transaction decides where an incomplete batch goes (one shard, WAL
        replication: the statement-log writer and the shard router need whole batches)."""
        return (
            self._host.tx_shard() is not None
            and not self._host.sharded()
            and self._host.replication_method() == "wal"
        )

    def _tx(self) -> int | None:
        """The shard of the open transaction, also before its server reported it."""
        tx = self._host.tx_shard()
        if tx is not None:
            return tx
        if (
            self._began_on is not None
            and self._servers.outstanding() is None
            and self._servers.tx_status() is messages.TxStatus.IDLE
        ):
            self._began_on = None  # it ended
        return self._began_on

    def _deferred_begin(self, frames: list[codec.Frame], c: Classified, sql: str) -> bool | None:
        """BEGIN/COMMIT/ROLLBACK the proxy answers while no shard is chosen yet (a simple
        Query, or one extended batch executing it); None when ``c`` is something else."""
        if c.kind is Kind.BEGIN and self.pending_begin is None and self._tx() is None:
            if self._servers.tx_status() is not messages.TxStatus.IDLE:
                return None
            tag = "BEGIN" if sql.lstrip()[:5].upper() == "BEGIN" else "START TRANSACTION"
        elif c.kind in (Kind.COMMIT, Kind.ROLLBACK) and self.pending_begin is not None:
            committed = c.kind is Kind.COMMIT and not self.pending_failed
            tag = "COMMIT" if committed else "ROLLBACK"  # PostgreSQL's tag for a failed one
        else:
            return None
        if frames[0].type != Q and not _lone_statement(frames):
            return None
        busy = self._servers.outstanding()
        if busy is not None:
            self.wait(busy)
            return False
        self.pending_begin = sql if c.kind is Kind.BEGIN else None
        self.pending_failed = False
        if frames[0].type == Q:
            out = messages.command_complete(tag)
        else:
            out = self._deferred_acks(frames, tag)
            self._drop(frames)
        self._host.write(out + messages.ready_for_query(self.tx_status()))
        return True

    def _aborted(self, f: codec.Frame) -> bool:
        """PostgreSQL's answer in an aborted transaction (``pending_failed``)."""
        busy = self._servers.outstanding()
        if busy is not None:
            self.wait(busy)
            return False
        self.reject(
            f,
            SqlState.IN_FAILED_SQL_TRANSACTION,
            "current transaction is aborted, commands ignored until end of transaction block",
        )
        return True

    def _deferred_acks(self, frames: list[codec.Frame], tag: str) -> bytes:
        """What a server answers a batch that runs one table-less command (``tag``)."""
        out = []
        for f in frames:
            if f.type == P:
                name, sql = messages.parse_fields(f.body)
                self._replicated.prepared(name, f.data, sql, classify(sql))
                out.append(messages.parse_complete())
            elif f.type == B:
                out.append(messages.bind_complete())
            elif f.type == D:
                statement = f.body[:1] == b"S"
                out.append((b"t\x00\x00\x00\x06\x00\x00" if statement else b"") + _NO_DATA)
            elif f.type == E:
                out.append(messages.command_complete(tag))
            elif f.type == C:
                kind, name = messages.target(f.body)
                if kind == ord("S"):
                    self._replicated.closed(name)
                out.append(messages.close_complete())
        return b"".join(out)

    # --- waiting

    def wait(self, on: BackendConnection | None = None) -> None:
        """The request at the head waits (for ``on`` to answer everything, if given)."""
        self.pipeline = Pipeline.WAITING
        self.waiting_on = on
        self._host.block(True)

    def resume(self) -> None:
        """What the head request waited for happened: decide again and go on."""
        if self.pipeline is Pipeline.WAITING:
            self.pipeline = Pipeline.NEXT
        self.waiting_on = None
        self._host.block(False)
        if self._host.running():
            self.run()

    def resume_with_error(self, code: SqlState, message: str) -> None:
        """Answer the request at the head with an error instead of running it."""
        self.pipeline = Pipeline.NEXT
        self.waiting_on = None
        self._host.block(False)
        if self._host.running() and self.frames:
            self.reject(self.frames.popleft(), code, message)
            self.run()

    def forget(self, b: BackendConnection) -> None:
        """``b`` is gone: a batch it was receiving is routed again from its next message."""
        if self.batch is b:
            self.batch = None
            self._batch_route = None
            if self.pipeline is Pipeline.BATCH:
                self.pipeline = Pipeline.NEXT

    def reject(self, f: codec.Frame, code: SqlState | str, message: str) -> None:
        """Error for ``f`` (nothing is outstanding); extended messages skip to their Sync."""
        status = self.tx_status()
        self._host.write(error_response(code, message))
        if f.type == Q or f.type == S:
            self._host.write(messages.ready_for_query(status))
        else:
            self.pipeline = Pipeline.SKIP_TO_SYNC
            self._skip_status = status

    # --- the loop

    def run(self) -> None:
        """Handle queued frames until one must wait; then send what was queued to servers."""
        try:
            self._run()
        finally:
            self._servers.flush()

    def _run(self) -> None:
        frames = self.frames
        host = self._host
        while (
            frames and self.pipeline is not Pipeline.WAITING and host.running() and host.writable()
        ):
            f = frames[0]
            if self.pipeline is Pipeline.SKIP_TO_SYNC:
                frames.popleft()
                if f.type == S:
                    self.pipeline = Pipeline.NEXT
                    host.write(messages.ready_for_query(self._skip_status))
                continue
            if not self._handle(f):
                return
            if frames and frames[0] is f:
                frames.popleft()

    def _handle(self, f: codec.Frame) -> bool:
        t = f.type
        if t == Q:
            c = classify_bytes(f.data[5:-1])
            if dispatch.simple(c) is not dispatch.Dispatch.SERVERS:
                return self._answer(f, c)
            sql = messages.query_sql(f.body)
            if self._host.sharded():
                answered = self._deferred_begin([f], c, sql)
                if answered is not None:
                    return answered
                if self.pending_failed:
                    return self._aborted(f)
            where = self._host.target(sql, None)
            if where is None:
                return False
            where = self._placed(where, [f])
            if where.kind in _SEVERAL_PRIMARIES and self._host.logs(c):
                where = dataclasses.replace(where, kind=Sharded.REFUSE, refusal=UNLOGGED_DDL)
            if where.kind is not Sharded.ONE or self._crosses(where):
                return self._on_shards(where, [f], sql)
            got = self._host.server_for(c, where.shard)
            if got is None:
                return False
            b, route = got
            if c.deallocates is not None:
                here = self._deallocate_here(c.deallocates, b)
                if here is not None:
                    return here
            self._begin_on(b, where.shard, route)
            if self._host.logs(c):
                self.wait()
                self._host.run_logged(b, route, [f], where.shard, c)
                return False
            b.send(f.data, Marker.SYNC)
            self._servers.sent(b, route)
            self.last_query = (b, f)
            if b.epoch == FOLLOWER_EPOCH:
                self._host.sent_to_follower(b, f)
            b.statements.pop("", None)  # a simple query replaces the unnamed statement
            self._after_send(c, b)
            return True
        self.last_query = None
        if t in EXTENDED:
            return self._extended(t, f)
        if t in COPY and self.copy_in is not None:
            self.copy_in(f)
            return True
        if t in COPY:
            copying = self._servers.current or self._servers.get(Role.PRIMARY)
            if copying is not None:
                copying.send(f.data)
            return True
        if t == F:
            got = self._host.server_for(FUNCTION_CALL)
            if got is None:
                return False
            b, route = got
            b.send(f.data, Marker.SYNC)
            self._servers.sent(b, route)
            return True
        if t == X:
            self._host.terminate()
            return True
        raise codec.ProtocolViolation(f"unexpected message type {chr(t)!r} after startup")

    def _answer(self, f: codec.Frame, c: Classified) -> bool:
        """Simple-query ``SET``/``SHOW pgshard.*`` and refusals: answered by the proxy."""
        busy = self._servers.outstanding()
        if busy is not None:
            self.wait(busy)
            return False
        self._answered()
        if c.refusal is not None:
            self.reject(f, c.refusal.sqlstate, c.refusal.message)
            return True
        assert c.proxy_setting is not None
        name, value = c.proxy_setting
        if c.kind is Kind.PROXY_SHOW:
            if name in PROXY_VIEWS:
                out = self._host.show_view(name)
            else:
                out = messages.text_result(
                    PROXY_PREFIX + name, self._consistency.show(name), "SHOW"
                )
        else:
            refusal = self._consistency.apply(name, value)
            if refusal is not None:
                self.reject(f, refusal.sqlstate, refusal.message)
                return True
            out = messages.command_complete("SET")
        self._host.write(out + messages.ready_for_query(self.tx_status()))
        return True

    def _deallocate_here(self, name: str, b: BackendConnection) -> bool | None:
        """``DEALLOCATE name`` of a statement the session prepared, but not (in its current
        version) on ``b``, is answered here as PostgreSQL would (copies on other servers
        are closed before their next use): True; False after arranging to wait for ``b``'s
        answers to come first; None: ``b`` runs it."""
        st = self._replicated.statements.get(name)
        if st is None or b.statements.get(name) == st.version:
            return None
        if self.pending_begin is not None or b.tx_status is messages.TxStatus.FAILED:
            return None  # the server answers (25P02 in a failed transaction)
        if b.pending:
            self.wait(b)
            return False
        self._replicated.closed(name)
        self._answered()
        self._host.write(
            messages.command_complete("DEALLOCATE") + messages.ready_for_query(self.tx_status())
        )
        return True

    def _after_send(self, c: Classified, b: BackendConnection) -> None:
        if c.pins_session:
            self.pinned = True
        if c.deallocates is not None:
            self._replicated.closed(c.deallocates, b)
        if c.kind is Kind.SESSION_SET and c.session_sql:
            self._replicated.record_setting(c.session_sql, b, c.forgets_statements)
            if c.forgets_statements:
                self._replicated.forget_statements(self._servers)
        elif c.kind is Kind.PROXY_SET and c.proxy_setting and c.refusal is None:
            # Extended protocol: PostgreSQL keeps it as a placeholder; the proxy obeys it.
            self._consistency.apply(*c.proxy_setting)

    def _extended(self, t: int, f: codec.Frame) -> bool:
        if self.pipeline is Pipeline.PROXY_BATCH:
            return self._answer_extended(f)
        b = self.batch
        if self.pipeline is Pipeline.NEXT:
            batch = batch_class(self.frames, self._replicated.classified)
            if batch is None and self._transaction_takes_it():
                batch = IN_TRANSACTION  # run each message as it comes, as PostgreSQL does
            if batch is None:
                return False  # the rest of the batch decides where it goes: read on
            logged = (
                batch is not SYNC_ONLY
                and self._host.logs(batch)
                and _executes(self.frames)
                and any(x.type == S for x in self.frames)
            )
            c = (
                batch
                if logged or not _executes(self.frames)
                else dispatch.for_method(batch, self._host.replication_method())
            )
            planned = dispatch.extended(c)
            if planned is not dispatch.Dispatch.SERVERS:
                busy = self._servers.outstanding()
                if busy is not None:
                    self.wait(busy)
                    return False
                if planned is dispatch.Dispatch.PROXY:
                    self.pipeline = Pipeline.PROXY_BATCH
                    return self._answer_extended(f)
                assert c.refusal is not None
                self.reject(f, c.refusal.sqlstate, c.refusal.message)  # then skip to Sync
                return True
            found = self._batch_target()
            if found is None:
                return False
            where, frames, sql = found
            logged = logged and frames[-1].type == S  # else: a prepare part before a Flush
            if self._host.sharded() and c.kind in _TRANSACTION_CONTROL:
                answered = self._deferred_begin(frames, classify(sql), sql)
                if answered is not None:
                    return answered
            if self.pending_failed and any(x.type in (P, B, E) for x in frames):
                return self._aborted(f)  # a statement; a lone Sync or Close is answered
            where = self._placed(where, frames)
            if where.kind in _SEVERAL_PRIMARIES and logged:
                where = dataclasses.replace(where, kind=Sharded.REFUSE, refusal=UNLOGGED_DDL)
            if where.kind is not Sharded.ONE or self._crosses(where):
                return self._on_shards(where, frames, sql)
            got = self._host.server_for(c, where.shard)
            if got is None:
                return False
            left, self._left = self._left, None
            if left is not None and left.batch_failed:
                # PostgreSQL skips the rest of a batch after an error: so does the proxy
                # (the follower's error reached the client already).
                self.pipeline = Pipeline.SKIP_TO_SYNC
                self._skip_status = self.tx_status()
                return True
            b, self._batch_route = got
            if self._batch_executes:
                self._begin_on(b, where.shard, got[1])
            if logged:  # statement replication: the log writer runs the batch
                self._batch_route = None
                self.wait()
                self._host.run_logged(b, got[1], frames, where.shard, c)
                return False
            self.batch = b
            self._batch_read = c.kind is Kind.READ
            self.pipeline = Pipeline.BATCH
        assert b is not None
        replicated = self._replicated
        if b.epoch == FOLLOWER_EPOCH:
            if t in (P, B):
                later = (
                    classify(messages.parse_fields(f.body)[1])
                    if t == P
                    else replicated.classified(messages.bind_names(f.body)[1])
                )
                if later is not None and self._must_leave_follower(b, later):
                    self._leave_follower(b)
                    return self._extended(t, f)
            self._host.sent_to_follower(b, f)
        if t == P:
            name, sql = messages.parse_fields(f.body)
            c = classify(sql)
            replicated.parse_on(b, name, f.data, sql, c)
            if c.pins_session:
                self.pinned = True
        elif t == B:
            name = messages.bind_names(f.body)[1]
            replicated.ensure_prepared(b, name)
            st = replicated.classified(name)
            if st is not None and st.deallocates is not None:
                replicated.ensure_prepared(b, st.deallocates)  # it removes it there
            b.send(f.data)
            if st is not None:
                self._after_send(st, b)
        elif t in (D, C):
            self._send_target(b, f, t)
        elif t == S:
            b.send(f.data, Marker.SYNC)
            assert self._batch_route is not None
            self._servers.sent(b, self._batch_route)
            self.batch = None
            self._batch_route = None
            self.pipeline = Pipeline.NEXT
        elif t == H and self._flush_ends_batch:
            # A Parse/Describe round trip before the Bind that places the statement
            # (asyncpg): the messages after this Flush are routed on their own.
            b.send(f.data)
            if self._host.sharded():
                # The Bind may go to another shard: end the implicit transaction the
                # prepare opened here (its locks would block DDL until our next use).
                assert self._batch_route is not None
                b.send(messages.sync(), Marker.HIDDEN_SYNC)
                self._servers.sent(b, self._batch_route)
            self.batch = None
            self._batch_route = None
            self._flush_ends_batch = False
            self.pipeline = Pipeline.NEXT
        else:  # Execute, Flush
            b.send(f.data)
        return True

    def _send_target(self, b: BackendConnection, f: codec.Frame, t: int) -> None:
        """Describe or Close of a prepared statement: prepared on ``b`` first (Describe),
        or forgotten there (Close), then sent."""
        kind, name = messages.target(f.body)
        if t == D:
            if kind == ord("S"):
                self._replicated.ensure_prepared(b, name)
            b.send(f.data)
        else:
            if kind == ord("S"):
                self._replicated.closed(name, b)
            b.send(f.data, Marker.CLOSE)

    # --- the statement-log writer's batches (execute.statement_log.Forward)

    def parse_of(self, statement: str) -> bytes | None:
        st = self._replicated.statements.get(statement)
        return st.parse[5:] if st is not None else None

    def forward(self, b: BackendConnection, f: codec.Frame) -> None:
        """Send a message of a batch the log writer runs, as ``_extended`` would."""
        t = f.type
        replicated = self._replicated
        if t == P:
            name, sql = messages.parse_fields(f.body)
            replicated.parse_on(b, name, f.data, sql, classify(sql))
        elif t == B:
            replicated.ensure_prepared(b, messages.bind_names(f.body)[1])
            b.send(f.data)
        elif t in (D, C):
            self._send_target(b, f, t)
        else:  # Execute, Flush
            b.send(f.data)

    # --- shards

    def _batch_target(self) -> tuple[Target, list[codec.Frame], str] | None:
        """Where the extended batch at the head goes, with its frames up to Sync and its
        statement; None while the batch is incomplete or a key type is being learned."""
        frames: list[codec.Frame] = []
        sql = ""
        bind: bytes | None = None
        """The last Bind's body: its values are decoded only to place a sharded statement."""
        executes = 0
        for f in self.frames:
            frames.append(f)
            if f.type == P and not sql:
                sql = messages.parse_fields(f.body)[1]
            elif f.type == B:
                if bind is not None:
                    executes = 2  # several statements: decided below
                bind = f.body
                if not sql:
                    st = self._replicated.statements.get(messages.bind_names(f.body)[1])
                    sql = st.sql if st is not None else ""
            elif f.type == E:
                executes += 1
            elif f.type == H and executes == 0 and self._routes_each_part():
                self._flush_ends_batch = True
                self._batch_executes = False
                return self._any_shard(), frames, sql
            elif f.type == S:
                break
        else:
            if not self._host.sharded():
                self._batch_executes = True
                return SHARD_0, frames, sql
            return None  # wait for the rest of the batch: its Bind places it
        self._batch_executes = executes > 0
        if not sql or executes == 0:
            return self._any_shard(), frames, sql  # prepare/describe only
        if not self._host.sharded():
            return SHARD_0, frames, sql
        where = self._host.target(sql, keyroute.parse_bind(bind) if bind is not None else None)
        if where is None:
            return None
        if where.kind in (Sharded.COPY_IN, Sharded.COPY_OUT):
            return (
                Target(
                    Sharded.REFUSE,
                    refusal=Refusal(
                        SqlState.FEATURE_NOT_SUPPORTED.value,
                        "COPY of a distributed table (FROM STDIN, TO STDOUT) is only split or "
                        "gathered in the simple query protocol",
                        "send the COPY statement as a simple query (no parameters)",
                    ),
                ),
                frames,
                sql,
            )
        if executes > 1 and where.kind is not Sharded.ONE:
            return (
                Target(
                    Sharded.REFUSE,
                    refusal=Refusal(
                        SqlState.FEATURE_NOT_SUPPORTED.value,
                        "a pipelined batch with several statements on distributed tables "
                        "is only routed when each goes to one shard",
                        "send a Sync after each statement",
                    ),
                ),
                frames,
                sql,
            )
        return where, frames, sql

    def _routes_each_part(self) -> bool:
        """A Parse/Describe round trip ended by a Flush is routed on its own, and the Bind
        after it anew: it places the statement (sharded), or it must go through the
        statement-log writer (statement replication)."""
        return self._host.sharded() or self._host.replication_method() == "statement"

    def _placed(self, where: Target, frames: Sequence[codec.Frame]) -> Target:
        """A statement without tables runs where the transaction runs. A SELECT of
        constants before the transaction's first statement (alone in its batch) runs
        outside it, as a scatter read there does, on shard 0: it does not choose the
        transaction's shard."""
        tx = self._tx() if where.anywhere else None
        if tx is not None:
            return dataclasses.replace(where, shard=tx)
        if (
            where.constant
            and self.pending_begin is not None
            and sum(f.type == E for f in frames) <= 1
        ):
            return dataclasses.replace(where, kind=Sharded.SCATTER, shards=(0,))
        return where

    def _any_shard(self) -> Target:
        """For what runs on any shard (prepare, describe): the transaction's, or shard 0."""
        tx = self._tx()
        return Target(Sharded.ONE, shard=tx if tx is not None else 0)

    def _crosses(self, where: Target) -> bool:
        """A one-shard statement inside a transaction that runs on another shard."""
        tx = self._tx()
        return tx is not None and where.kind is Sharded.ONE and where.shard != tx

    def _on_shards(self, where: Target, frames: list[codec.Frame], sql: str) -> bool:
        """A request that is not simply one shard's: refused, scattered or broadcast."""
        busy = self._servers.outstanding()
        if busy is not None:
            self.wait(busy)
            return False
        tx = self._tx()
        if tx is not None:
            message = (
                where.refusal.message
                if where.refusal is not None
                else f"this statement needs shard {where.shard}, but the transaction runs on "
                f"shard {tx}"
                if where.kind is Sharded.ONE
                else f"this statement needs several shards, but the transaction runs on shard {tx}"
            )
            return self._abort_transaction(
                tx, frames, f"{message}; a transaction stays on one shard"
            )
        if where.kind is Sharded.REFUSE and self.pending_begin is not None:
            assert where.refusal is not None  # fails the transaction, as PostgreSQL would
            return self._abort_transaction(0, frames, where.refusal.message)
        if where.kind in (Sharded.SPLIT, Sharded.COPY_IN) and self.pending_begin is not None:
            return self._abort_transaction(
                where.shards[0],
                frames,
                f"the rows of this statement go to shards {list(where.shards)}; a transaction "
                "stays on one shard",
            )
        if where.kind is Sharded.REFUSE:
            assert where.refusal is not None
            hint = where.refusal.hint
            self._host.write(
                error_response(where.refusal.sqlstate, where.refusal.message, hint=hint or None)
            )
            self._drop(frames)
            self._host.write(messages.ready_for_query(self.tx_status()))
            return True
        self.wait()
        self._host.run_on_shards(where, frames, sql)
        return False

    def _abort_transaction(self, tx: int, frames: list[codec.Frame], message: str) -> bool:
        """Fail the statement inside the transaction's own server, as PostgreSQL fails a
        statement: the transaction is then aborted there, and nothing of it commits."""
        got = self._host.server_for(FUNCTION_CALL, tx)
        if got is None:
            return False
        b, route = got
        self._begin_on(b, tx, route)
        quoted = message.replace("'", "''").replace("$", "")
        b.send(
            messages.query(
                "DO $pgshard$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', "
                f"MESSAGE = '{quoted}', HINT = 'ROLLBACK, then run the statements of each "
                "shard in their own transaction'; END$pgshard$"
            ),
            Marker.SYNC,
        )
        self._servers.sent(b, route)
        self._drop(frames)
        return True

    def _drop(self, frames: list[codec.Frame]) -> None:
        """The request's frames are answered: off the queue."""
        for _ in frames:
            if self.frames:
                self.frames.popleft()

    def done_on_shards(self, frames: list[codec.Frame]) -> None:
        """The session carried out a multi-shard request: drop it and go on."""
        self._drop(frames)
        self.resume()

    def _show_value(self, name: str) -> str:
        """One text value for ``SHOW pgshard.<name>`` in the extended protocol."""
        if name in PROXY_VIEWS:
            return self._host.view_text(name)
        return self._consistency.show(name)

    def _must_leave_follower(self, b: BackendConnection, c: Classified) -> bool:
        """A statement only the primary may run, in a read batch already begun on
        follower ``b`` (routed at a Flush, before the rest of the batch arrived)."""
        server_local = c.server_local and self._consistency.mode is Mode.SESSION
        return (
            self._batch_read
            and (c.kind in _PRIMARY_ONLY or c.pins_session or server_local)
            and b.tx_status is messages.TxStatus.IDLE
        )

    def _leave_follower(self, b: BackendConnection) -> None:
        """End the batch's part on follower ``b`` with a Sync whose ReadyForQuery the
        client never sees; the rest of the batch is routed anew (to the primary) once
        ``b`` has answered, or skipped like PostgreSQL does if that part failed."""
        assert self._batch_route is not None
        b.send(messages.sync(), Marker.HIDDEN_SYNC)
        self._servers.sent(b, self._batch_route)
        self._left = b
        self.batch = None
        self._batch_route = None
        self.pipeline = Pipeline.NEXT

    def _answer_extended(self, f: codec.Frame) -> bool:
        """A message of a batch the proxy answers itself (``SHOW pgshard.*``, proxy_answers)."""
        if f.type == S:
            self._answered()
            self.pipeline = Pipeline.NEXT
            status = self.tx_status()
            if status is messages.TxStatus.IDLE:
                self._proxy_portals.transaction_ended()
            self._host.write(messages.ready_for_query(status))
            return True
        if f.type == C:
            kind, name = messages.target(f.body)
            if kind == ord("S"):
                self._replicated.closed(name)
        out = self._proxy_portals.answer(f, self._replicated.classified, self._show_value)
        if isinstance(out, Mixed):
            self.pipeline = Pipeline.NEXT
            self.reject(f, SqlState.FEATURE_NOT_SUPPORTED, out.message)  # then skip to Sync
            return True
        if isinstance(out, Parsed):
            self._replicated.prepared(out.name, f.data, out.sql, out.classified)
            out = out.answer
        if out:
            self._host.write(out)
        return True
