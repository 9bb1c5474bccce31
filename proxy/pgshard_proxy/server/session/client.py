"""One client connection: the wiring of login, request loop and borrowed servers.

Created by ``server.listener`` for every accepted socket. States::

    INITIAL --StartupMessage--> AUTH --password ok--> CONNECTING --primary ready--> READY
       ^ SSLRequest/GSSENCRequest answered, next packet expected      any --> CLOSED

INITIAL and AUTH are ``startup.Login``'s. In READY the session reads whole
frames (``protocol.codec``) and runs the request loop (``requests.RequestLoop``):
each request is dispatched (``routing.dispatch``), routed (``consistency.session`` /
``routing.router``) and its frames forwarded to one server borrowed for the
session (``ordering.Servers``, ``borrowing``); what the server must have first
comes from ``replicated``. Responses are relayed by ``pool.backend`` straight to
the client socket; the session is its ``Sink``.

A server lost while a request or transaction was in flight ends the client's
session with SQLSTATE 08007 (outcome unknown); a server lost while idle is
replaced silently on next use. The same holds when the topology moves the
shard to a new epoch (:meth:`Session.topology_changed`): a request still being
answered by the old primary ends the session at once with 08007 (the old
primary may be frozen and never answer), an idle session just lets go of it.
A follower that stops answering mid-read is handled by ``follower_watch`` (the
read is retried on the primary, or the session ends with 08006). While the
topology shows a shard ``switching`` (a planned switchover), a request that would
start work on its primary waits for the new one (``server.switch_buffer``). A primary that
answers "read-only" (25006) is handled with ``server.read_only``: the topology is
read again and the request runs again on the real primary, or the client gets a
clear "primary moved" error instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import secrets
import struct
import time
from collections.abc import Sequence
from typing import cast

from ...consistency.session import SessionConsistency
from ...consistency.tracker import Mode
from ...contract import positions, topology
from ...execute import broadcast, copyin, copyout, exchange, multiwrite
from ...execute import scatter as scatter_run
from ...execute import statement_log as log_writer
from ...pool.backend import BackendConnection, BackendError, Credentials
from ...pool.pool import Pool, PoolExhausted
from ...protocol import auth, codec, messages
from ...protocol.sqlstate import Severity, SqlState, error_response
from ...routing import copysplit, keyroute, router
from ...routing.classify import Classified, classify, weakens_commit
from ...routing.router import Reason, Role, Route
from ...settings import PoolMode
from ..context import NoPrimary, ServerContext
from ..read_only import moved_error
from ..read_only import problem as read_only_problem
from . import borrowing, farewell, requests, sharding, startup, unlogged
from .follower_watch import FollowerWatch, Verdict, answered_round_trip, judge
from .ordering import Servers
from .replicated import Replicated
from .requests import Pipeline

log = logging.getLogger(__name__)


def _acknowledgements(frames: Sequence[codec.Frame], ddl: bool) -> bytes:
    """What a server answers an extended batch's Parse, Bind and (for DDL) Describe with."""
    out = []
    for f in frames:
        if f.type == ord("P"):
            out.append(messages.parse_complete())
        elif f.type == ord("B"):
            out.append(messages.bind_complete())
        elif f.type == ord("D") and ddl:
            out.append(b"n\x00\x00\x00\x04")  # NoData
        elif f.type == ord("C"):
            out.append(messages.close_complete())
    return b"".join(out)


def _result_formats(bind_body: bytes) -> tuple[int, ...]:
    """The result-column format codes at the end of a Bind message body."""
    values = keyroute.parse_bind(bind_body)
    pos = bind_body.index(0) + 1
    pos = bind_body.index(0, pos) + 1
    pos += 2 + 2 * len(values.formats) + 2
    for v in values.values:
        pos += 4 + (len(v) if v is not None else 0)
    (n,) = struct.unpack_from("!h", bind_body, pos)
    return struct.unpack_from(f"!{n}h", bind_body, pos + 2)


class State(enum.Enum):
    INITIAL = "initial"
    AUTH = "auth"
    CONNECTING = "connecting"
    READY = "ready"
    CLOSED = "closed"


class Session(asyncio.Protocol):
    """A client connection (see the module docstring)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.state = State.INITIAL
        self._transport: asyncio.Transport | None = None
        self._decoder = codec.FrontendDecoder(ctx.settings.max_message_bytes)
        self._login: startup.Login | None = startup.Login(ctx, self._decoder, self.write)
        """Until the client is authenticated; then only its ``_database`` is kept."""
        self._database = ""
        self._servers = Servers()
        self._replicated = Replicated()
        self._key: tuple[int, int] | None = None
        self._paused: frozenset[str] = frozenset()
        """Why reading from the client stopped (frozensets: an empty one costs an idle
        session nothing, README "Idle clients")."""
        self._writing_paused = False
        """The client's socket is full (its transport paused writing)."""
        self._tasks: set[asyncio.Task[None]] | None = None
        """The session's own tasks, made on the first (most sessions never have one)."""
        self.consistency = SessionConsistency(
            ctx.monitor,
            mode=Mode(ctx.settings.consistency.value),
            max_wait_ms=ctx.settings.max_wait_ms,
            seed=secrets.randbits(16),
            zone=ctx.zone(),
        )
        self._requests = requests.RequestLoop(
            self, self._servers, self._replicated, self.consistency, ctx.metrics.count_answered
        )
        self._decided: Route | None = None
        """WAITING: a route awaited asynchronously for the request at the head of the queue."""
        self._tx_route: Route | None = None
        """Where the open transaction runs (its statements all go there)."""
        self._tx_shard: int | None = None
        """The shard of ``_tx_route``: a transaction stays on one shard."""
        self._decided_shard = 0
        """The shard ``_decided`` is a route in."""
        self._key_types_tried: frozenset[str] = frozenset()
        self._topology_wait = borrowing.TopologyWait(ctx)
        self._watch = FollowerWatch()
        """Follower requests not yet answered, in case the follower stops answering."""
        self._avoid_follower = False
        """The next request is a retry of reads whose follower stopped answering."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._login_timer: asyncio.TimerHandle | None = None
        self._rerun: tuple[BackendConnection, codec.Frame] | None = None
        self._needs_primary: BackendConnection | None = None
        """A follower that refused the request in flight (``unlogged``): rerun it."""
        """A Query its primary refused as read-only: run it again once that answer ends."""
        self._log_writer: log_writer.Writer | None = None
        """Statement replication's writer, made for the session's first logged request."""

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=256 * 1024)
        self._loop = asyncio.get_running_loop()
        self.ctx.sessions.add(self)
        # Logins are counted apart from max_clients and bounded in time and number; the
        # one logging in longest makes room for a new one (idle connects cost little).
        logins = self.ctx.logins
        logins[self] = None
        if len(logins) > self.ctx.settings.max_pending_logins:
            oldest = cast(Session, next(iter(logins)))
            oldest._fatal(
                SqlState.TOO_MANY_CONNECTIONS,
                "too many connections logging in at once; this one took longest",
            )
            oldest._login_done()
        self._login_timer = self._loop.call_later(
            self.ctx.settings.authentication_timeout, self._login_timed_out
        )

    def _login_done(self) -> None:
        self.ctx.logins.pop(self, None)
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None

    def _login_timed_out(self) -> None:
        self._login_timer = None
        if self.state in (State.INITIAL, State.AUTH):
            timeout = self.ctx.settings.authentication_timeout
            self._fatal(
                SqlState.QUERY_CANCELED,
                f"canceling authentication due to timeout ({timeout:g} s)",
            )
            if self._transport is not None:
                self._transport.abort()  # a client that does not read must not keep it open
        self._login_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self._login_done()
        self.ctx.sessions.discard(self)
        self.state = State.CLOSED
        self._transport = None
        self._watch.cancel()
        if self._key is not None:
            self.ctx.cancel_keys.unregister(self._key)
        for b in self._servers:
            if b.answering:
                # Nobody will read the answer: stop the work rather than leave the server
                # busy (PostgreSQL would go on until it next writes to the client).
                self._background(b.cancel(self.ctx.settings.connect_timeout))
        # A busy or cancelled server is closed, not pooled (so never reused dirty).
        self._servers.release_all(
            pooled=self.ctx.settings.pool_mode is PoolMode.TRANSACTION and not self._requests.pinned
        )
        for task in self._tasks or ():
            task.cancel()
        self._background(self.consistency.close())

    def _background(self, coro: collections.abc.Coroutine[object, object, None]) -> None:
        """Run ``coro`` past the session's end (the context keeps it)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.ctx.background.add(task)
        task.add_done_callback(self.ctx.background.discard)

    def pause_writing(self) -> None:
        # The client reads slower than it is answered: stop reading from servers, and,
        # as PostgreSQL does, stop reading and answering its requests (the proxy answers
        # some itself) until it has read; so a client that never reads costs the kernel's
        # buffers and the high-water mark, no more.
        self._writing_paused = True
        self._servers.pause_reading(True)
        self._pause("writing")

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._servers.pause_reading(False)
        self._resume("writing")
        if self.state is State.READY and self._requests.pipeline is not Pipeline.WAITING:
            self._requests.run()

    def data_received(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self.ctx.bytes_in += len(data)
        self._decoder.feed(data)
        try:
            while self.state is State.INITIAL and self._read_initial():
                pass
            if self.state is State.AUTH:
                self._read_auth()
            if self.state in (State.CONNECTING, State.READY):
                self._requests.frames.extend(self._decoder.frames())
                if self.state is State.READY and self._requests.pipeline is not Pipeline.WAITING:
                    self._requests.run()
        except codec.ProtocolViolation as e:
            self._fatal(e.sqlstate, str(e))
        except messages.MalformedMessage as e:
            self._fatal(SqlState.PROTOCOL_VIOLATION, f"invalid message: {e}")
        except auth.AuthFailed as e:
            self._fatal(e.sqlstate, str(e))

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)
            self.ctx.bytes_out += len(data)

    def activity(self) -> str:
        if self.state in (State.INITIAL, State.AUTH):
            return "logging-in"
        if self._requests.pipeline is Pipeline.WAITING:
            return "waiting"
        busy = self._servers.outstanding() is not None
        if busy or self._servers.tx_status() is not messages.TxStatus.IDLE:
            return "active"
        return "idle"

    # --- startup (startup.Login) and the first server

    def _read_initial(self) -> bool:
        assert self._login is not None
        step = self._login.initial()
        if step is startup.Step.START_TLS:
            self._spawn(self._start_tls())
        elif step is startup.Step.CANCELLED:
            self.state = State.CLOSED
            if self._transport is not None:
                self._transport.close()
        elif step is startup.Step.CHALLENGE:
            self.state = State.AUTH
        elif step is startup.Step.AUTHENTICATED:
            self.state = State.AUTH
            self._authenticated()
        return step is startup.Step.AGAIN

    async def _start_tls(self) -> None:
        assert self._transport is not None and self.ctx.ssl_context is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self._transport, self, self.ctx.ssl_context, server_side=True
            )
        except (OSError, ConnectionError) as e:
            log.info("TLS handshake failed: %s", e)
            if self._transport is not None:
                self._transport.abort()
            return
        # uvloop's transports implement the interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        if self._login is not None:
            self._login.tls = True

    def _read_auth(self) -> None:
        while self.state is State.AUTH and (frame := self._decoder.auth_frame()) is not None:
            assert self._login is not None
            if self._login.password(frame) is startup.Step.AUTHENTICATED:
                self._authenticated()

    def _authenticated(self) -> None:
        assert self._login is not None and self._login.startup is not None
        params = self._login.startup.params
        self._database = self._login.startup.database
        self._login = None
        self._login_done()
        if len(self.ctx.sessions) - len(self.ctx.logins) > self.ctx.settings.max_clients:
            self._fatal(SqlState.TOO_MANY_CONNECTIONS, "sorry, too many clients already")
            return
        self.write(messages.auth_ok())
        self.state = State.CONNECTING
        proxy_settings, server_settings = startup.split_settings(params)
        for name, value in server_settings:
            if name.lower() == "synchronous_commit" and weakens_commit(value):
                self._fatal(
                    "42501",
                    f"synchronous_commit={value}: synchronous_commit may not be weakened "
                    "through pgshard-proxy (allowed: on, remote_apply)",
                )
                return
        for name, value in proxy_settings.items():
            refusal = self.consistency.apply(name, value)
            if refusal is not None:
                self._fatal(refusal.sqlstate, refusal.message)
                return
        if server_settings:
            self._replicated.record_setting(startup.set_statements(server_settings), None)
        self._spawn(self._connect_first())

    async def _connect_first(self) -> None:
        set_log = self._replicated.set_log
        timeout = self.ctx.settings.connect_timeout
        try:
            b = await self._acquire_primary_at_startup()
            if b.settings:  # another session's SETs (transaction pooling): not reported
                error = await b.run_hidden("RESET ALL", timeout)
                b.settings = ()
                if error:
                    raise BackendError(f"RESET ALL failed: {error}")
            if set_log:
                error = await b.run_hidden("; ".join(set_log), timeout)
                if error:
                    self._fatal(SqlState.INVALID_PARAMETER_VALUE, error)
                    return
                b.settings = set_log
        except PoolExhausted as e:
            self._fatal(SqlState.TOO_MANY_CONNECTIONS, str(e))
            return
        except (BackendError, TimeoutError, router.NoPrimary) as e:
            self._fatal(SqlState.CANNOT_CONNECT_NOW, f"pgshard-proxy cannot reach the primary: {e}")
            return
        if self.state is not State.CONNECTING or self._transport is None:
            return
        self._key = self.ctx.cancel_keys.register(self, b.pid)
        out = [messages.parameter_status(k, v) for k, v in b.params.items()]
        out.append(messages.backend_key_data(*self._key))
        out.append(messages.ready_for_query(messages.TxStatus.IDLE))
        self._transport.write(b"".join(out))
        self.state = State.READY
        self._give_back_if_idle(b)
        self._requests.run()

    async def _acquire_primary_at_startup(self) -> BackendConnection:
        """The current primary; tried again (a few times) when a new topology comes within
        the connect timeout: the primary it named may have gone away without a word, be
        a standby (the topology is being read again), or there may be none right now."""
        with contextlib.suppress(NoPrimary):
            if self.ctx.switch_buffer.holds(self.ctx.shard(0)):
                # A new session waits for the new primary too, rather than fail to connect.
                error = await self.ctx.switch_buffer.hold(0)
                if error is not None:
                    raise BackendError(error)
        for _ in range(borrowing.STARTUP_ATTEMPTS - 1):
            topo = self.ctx.topology
            try:
                return await self._acquire(borrowing.primary_route(self.ctx, self.consistency))
            except PoolExhausted:
                raise  # busy, not gone: a new topology would not help
            except (BackendError, TimeoutError, router.NoPrimary):
                timeout = self.ctx.settings.connect_timeout
                if not await self.ctx.topology_replaced(topo, timeout):
                    raise
        return await self._acquire(borrowing.primary_route(self.ctx, self.consistency))

    # --- borrowing servers and waiting

    async def _acquire(self, route: Route, shard: int = 0) -> BackendConnection:
        b, pool = await borrowing.borrow(
            self.ctx,
            self._database,
            route,
            lambda: self.state is State.CLOSED,
            shard,
        )
        return self._hold(route, shard, b, pool)

    def _hold(
        self, route: Route, shard: int, b: BackendConnection, pool: Pool
    ) -> BackendConnection:
        b.attach(self)
        old = self._servers.add(route.role, b, pool, shard)
        if old is not None:
            self._forget(old)
        return b

    def _spawn(self, coro: collections.abc.Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
            if not self._tasks:
                self._tasks = None

    def _pause(self, reason: str) -> None:
        if not self._paused and self._transport is not None:
            self._transport.pause_reading()
        self._paused |= {reason}

    def _resume(self, reason: str) -> None:
        self._paused -= {reason}
        if not self._paused and self._transport is not None:
            self._transport.resume_reading()

    async def _acquire_then_resume(self, route: Route, shard: int = 0) -> None:
        topo = self.ctx.topology
        try:
            await self._acquire(route, shard)
        except PoolExhausted as e:
            self._decided = None
            self.ctx.metrics.error_sent(SqlState.TOO_MANY_CONNECTIONS)
            self._requests.resume_with_error(SqlState.TOO_MANY_CONNECTIONS, str(e))
            return
        except (BackendError, TimeoutError, NoPrimary) as e:
            self._decided = None
            if self.ctx.topology is not topo:  # a new topology already: route again now
                self._requests.resume()
                return
            await self._wait_for_topology(
                f"pgshard-proxy cannot reach {route.role.value} {route.member.name}: {e}"
            )
            return
        self._topology_wait.reset()
        self._requests.resume()

    async def _wait_for_topology(self, problem: str) -> None:
        if await self._topology_wait.wait(problem):
            self._requests.resume()
        else:
            self.ctx.metrics.error_sent(SqlState.CANNOT_CONNECT_NOW)
            self._requests.resume_with_error(SqlState.CANNOT_CONNECT_NOW, f"{problem}; retry later")

    async def _route_then_resume(self, c: Classified, shard_index: int) -> None:
        started = time.monotonic()
        try:
            self._decided = await self.consistency.route(
                c,
                self.ctx.shard(shard_index),
                in_transaction=self._tx_route,
                pinned=self._requests.pinned,
            )
            self._decided_shard = shard_index
            if self._decided.reason in (Reason.FOLLOWER_WAIT, Reason.FOLLOWER_TIMEOUT):
                self.ctx.metrics.follower_wait.observe(time.monotonic() - started)
        except (router.NoPrimary, NoPrimary) as e:
            self._decided = None
            await self._wait_for_topology(str(e))
            return
        self._requests.resume()

    def server_for(
        self, c: Classified, shard_index: int = 0
    ) -> tuple[BackendConnection, Route] | None:
        """The server of shard ``shard_index`` and the route for a request classified
        ``c``; None after arranging to wait."""
        route = self._decided if self._decided_shard == shard_index else None
        try:
            shard = self.ctx.shard(shard_index)
            if route is None:
                route = self.consistency.route_now(
                    c, shard, in_transaction=self._tx_route, pinned=self._requests.pinned
                )
            if self._avoid_follower and route is not None:
                self._avoid_follower = False
                if route.role is Role.FOLLOWER:
                    route = router.retry_on_primary(shard, self.consistency.mode)
        except (router.NoPrimary, NoPrimary) as e:
            self._requests.wait()
            self._spawn(self._wait_for_topology(str(e)))
            return None
        if route is None:  # a position capture or a lagging follower to wait for
            self._requests.wait()
            self._spawn(self._route_then_resume(c, shard_index))
            return None
        if route.role is Role.PRIMARY and self._must_hold(shard, shard_index):
            self._decided = None  # routed again once the new primary is published
            self._requests.wait()
            self._spawn(self._hold_then_resume(shard_index))
            return None
        b = self._servers.get(route.role, shard_index)
        if (
            b is not None
            and route.role is Role.FOLLOWER
            and b.answering
            and not b.broken
            and b.member_name != route.member.name
        ):
            # The rest of a request begun on another follower stays there if it may.
            stay = router.stay_on_follower(
                route, shard, b.member_name, self.consistency.monitor.replayed_map
            )
            route = stay if stay is not None else route
        if b is not None and (
            b.broken
            or b.member_name != route.member.name
            or b.address != route.member.address
            or (route.role is Role.PRIMARY and b.epoch != shard.epoch)
        ):
            if not b.broken and not b.idle:
                # The transaction's primary is no longer the primary: never write there.
                # (A follower: the one this request began on can no longer serve it.)
                what = (
                    f"the primary of shard {shard.index} changed (now epoch {shard.epoch})"
                    if route.role is Role.PRIMARY
                    else f"follower {b.member_name} of shard {shard.index} stopped serving reads"
                )
                self._fatal(
                    SqlState.TRANSACTION_RESOLUTION_UNKNOWN,
                    f"{what} during this transaction; it cannot continue",
                    hint="reconnect and retry the transaction",
                )
                return None
            self._forget(b)
            b = None
        if b is None and self.ctx.settings.pool_mode is PoolMode.TRANSACTION:
            idle = borrowing.borrow_idle(self.ctx, self._database, route, shard_index)
            if idle is not None:
                b = self._hold(route, shard_index, *idle)
                self._topology_wait.reset()
        if b is None:
            self._decided = route
            self._decided_shard = shard_index
            self._requests.wait()
            self._spawn(self._acquire_then_resume(route, shard_index))
            return None
        busy = self._servers.must_wait_for(b)
        if busy is not None:
            # Answers must reach the client in request order: let the other server finish,
            # then decide again (the transaction state may have changed meanwhile).
            self._decided = None
            self._requests.wait(busy)
            return None
        self._decided = None
        self._replicated.replay_settings(b)
        self._servers.current = b
        self.ctx.metrics.routed[route.role, route.reason] += 1
        return b, route

    def _must_hold(self, shard: topology.Shard, index: int) -> bool:
        """The shard's primary is being switched over and this request would start work
        there (no transaction open on it): hold it (``server.switch_buffer``)."""
        if not self.ctx.switch_buffer.holds(shard):
            return False
        if self._tx_route is not None and self._tx_shard == index:
            return False
        b = self._servers.get(Role.PRIMARY, index)
        return b is None or b.broken or b.tx_status is messages.TxStatus.IDLE

    async def _hold_then_resume(self, index: int) -> None:
        error = await self.ctx.switch_buffer.hold(index)
        if error is None:
            self._requests.resume()
        else:
            self.ctx.metrics.error_sent(SqlState.CANNOT_CONNECT_NOW)
            self._requests.resume_with_error(SqlState.CANNOT_CONNECT_NOW, error)

    # --- shards (requests.Host)

    def sharded(self) -> bool:
        topo = self.ctx.topology
        return topo is not None and len(topo.shards) > 1 and bool(topo.tables)

    def _shard_rows(self) -> list[list[str | None]]:
        topo = self.ctx.topology
        rows: list[list[str | None]] = []
        for s in topo.shards if topo is not None else ():
            rows.append(
                [
                    str(s.index),
                    f"[{s.hash_range[0]}, {s.hash_range[1]})",
                    str(s.epoch),
                    s.primary.name if s.primary else None,
                    s.primary.address if s.primary else None,
                    ", ".join(f"{f.name} ({f.state})" for f in s.followers),
                ]
            )
        return rows

    def show_view(self, name: str) -> bytes:
        topo = self.ctx.topology
        tables = ", ".join(f"{t.name}:{t.key}" for t in topo.tables) if topo else ""
        columns = ["shard", "hash_range", "epoch", "primary", "address", "followers"]
        rows = [[*r, tables] for r in self._shard_rows()]
        return messages.text_table([*columns, "distributed_tables"], rows, "SHOW")

    def view_text(self, name: str) -> str:
        return "; ".join(
            f"shard {r[0]} {r[1]} epoch {r[2]} primary {r[3]} {r[4]}" for r in self._shard_rows()
        )

    def tx_shard(self) -> int | None:
        return self._tx_shard if self._tx_route is not None else None

    def target(self, sql: str, bind: keyroute.BindValues | None) -> sharding.Target | None:
        topo = self.ctx.topology
        where = sharding.target(sql, bind, topo, self.ctx.key_types, self._key_types_tried)
        if where.kind is not sharding.Kind.KEY_TYPE:
            return where
        assert where.table is not None and topo is not None
        table = next(t for t in topo.tables if t.name == where.table)
        self._key_types_tried |= {table.name}
        self._requests.wait()
        self._spawn(self._learn_then_resume(table, topo.shards[0]))
        return None

    async def _learn_then_resume(
        self, table: topology.DistributedTable, shard0: topology.Shard
    ) -> None:
        await self.ctx.key_types.learn(table, shard0)
        self._requests.resume()

    def run_on_shards(self, t: sharding.Target, frames: list[codec.Frame], sql: str) -> None:
        if t.kind is sharding.Kind.COPY_IN:
            self._spawn(self._copy_in(t, frames, sql))
        else:
            self._spawn(self._on_shards(t, frames, sql))

    async def _copy_in(self, t: sharding.Target, frames: list[codec.Frame], sql: str) -> None:
        """COPY FROM STDIN into a distributed table, rows split by key (``execute/copyin``)."""
        topo = self.ctx.topology
        assert t.copy is not None and t.key_type is not None and topo is not None
        backends: list[BackendConnection] = []
        try:
            backends = await self._primaries(t.shards)
            if self.state is not State.READY:
                return
            splitter = copysplit.Splitter(t.copy.format, t.key_index, t.key_type, topo.shards)
            copy = copyin.CopyIn(
                backends,
                t.shards,
                splitter,
                lambda full: self._pause("copy") if full else self._resume("copy"),
                self._requests.wait,
            )
            error = await copy.start(sql)
            tag = ""
            if error is None:
                self.write(copy.response)
                self._requests.copy_in = copy.frame
                self._requests.done_on_shards(frames)  # the Query; CopyData follows
                frames = []
                tag, error = await copy.finish()
            out = error or messages.command_complete(tag)
        except (BackendError, NoPrimary, TimeoutError, ConnectionError) as e:
            for b in backends:
                b.abort()  # a shard's transaction ends with its connection: nothing commits
                self._forget(b)
            out = error_response(
                SqlState.CONNECTION_FAILURE,
                f"a shard did not answer this COPY: {e}",
                hint="nothing was committed on any shard that did not answer; check the "
                "table's rows with SELECT count(*) before copying again",
            )
        finally:
            self._requests.copy_in = None
        for _, _, held in self._servers.held():
            held.attach(self)
        if self.state is State.READY:
            self.write(out + messages.ready_for_query(messages.TxStatus.IDLE))
            if frames:
                self._requests.done_on_shards(frames)
            else:
                self._requests.resume()

    async def _primaries(self, shards: Sequence[int]) -> list[BackendConnection]:
        """An idle connection to each shard's primary, held by the session."""
        out = []
        for index in shards:
            b = self._servers.get(Role.PRIMARY, index)
            shard = self.ctx.shard(index)
            if b is not None and (b.broken or b.epoch != shard.epoch or not b.idle):
                self._forget(b)
                b = None
            if b is None:
                b = await self._acquire(
                    borrowing.primary_route(self.ctx, self.consistency, index), index
                )
            self._replicated.replay_settings(b)
            out.append(b)
        return out

    async def _readers(
        self, shards: Sequence[int], sql: str
    ) -> list[tuple[BackendConnection, Route]]:
        """For a scatter read: per shard the member the session's consistency allows (a
        follower at the session's position there, or the primary), held by the session."""
        c = classify(sql)
        out = []
        for index in shards:
            shard = self.ctx.shard(index)
            route = await self.consistency.route(c, shard, pinned=self._requests.pinned)
            b = self._servers.get(route.role, index)
            if b is not None and (
                b.broken
                or not b.idle
                or b.member_name != route.member.name
                or b.address != route.member.address
                or (route.role is Role.PRIMARY and b.epoch != shard.epoch)
            ):
                self._forget(b)
                b = None
            if b is None:
                b = await self._acquire(route, index)
            self._replicated.replay_settings(b)
            out.append((b, route))
        return out

    async def _on_shards(self, t: sharding.Target, frames: list[codec.Frame], sql: str) -> None:
        """A scatter read or a DDL broadcast, answered as one server would answer it."""
        ack = _acknowledgements(frames, t.kind is not sharding.Kind.SCATTER)
        bind = next((keyroute.parse_bind(f.body) for f in frames if f.type == ord("B")), None)
        formats = next((_result_formats(f.body) for f in frames if f.type == ord("B")), ())
        parse = next((f.body for f in frames if f.type == ord("P")), None)
        if parse is None and bind is not None:
            name = next(messages.bind_names(f.body)[1] for f in frames if f.type == ord("B"))
            st = self._replicated.statements.get(name)
            parse = st.parse[5:] if st is not None else None
        types = scatter_run.parameter_types(parse) if parse is not None else b"\x00\x00"
        describe = bind is None or any(f.type == ord("D") and f.body[:1] == b"P" for f in frames)
        status = messages.TxStatus.IDLE
        failed = True
        try:
            shards = t.shards or tuple(s.index for s in self.ctx.topology.shards)  # type: ignore[union-attr]
            routes: list[Route] = []
            if t.kind is sharding.Kind.SCATTER:
                readers = await self._readers(shards, sql)
                backends, routes = [b for b, _ in readers], [r for _, r in readers]
            else:
                backends = await self._primaries(shards)
            if self.state is not State.READY:
                return
            self.write(ack)
            if t.kind is sharding.Kind.BROADCAST:
                tag, error = await broadcast.broadcast(backends, sql)
                self.write(error or messages.command_complete(tag))
                failed = error is not None
            elif t.kind is sharding.Kind.COPY_OUT:
                out = await copyout.gather(backends, sql, self.write)
                self.write(out)
                failed = out[:1] == b"E"
            elif t.kind is sharding.Kind.SPLIT:
                tag, error = await multiwrite.insert(backends, t.parts, bind, types)
                self.write(error or messages.command_complete(tag))
                failed = error is not None
            else:
                assert t.plan is not None and t.plan.scatter is not None
                run = scatter_run.ScatterRun(t.plan.scatter, backends, self.write)
                execute = next((f.body for f in frames if f.type == ord("E")), None)
                limit = struct.unpack_from("!i", execute, execute.index(0) + 1)[0] if execute else 0
                request = scatter_run.Request(bind, formats, describe, limit, types)
                code = await run.run(request)
                status = messages.TxStatus(code)
                failed = run.error is not None
                for index, route in zip(shards, routes, strict=True):
                    # Per shard, as after a one-shard read: a follower's position, or the
                    # primary's captured now, becomes the session's token there.
                    self.consistency.after_ready(route, index, idle=True)
        except (
            BackendError,
            NoPrimary,
            router.NoPrimary,
            TimeoutError,
            scatter_run.ScatterFailed,
            ConnectionError,
        ) as e:
            for _, _, held in self._servers.held():
                if held.broken:
                    self._forget(held)
            self.write(
                error_response(
                    SqlState.CONNECTION_FAILURE,
                    f"a shard did not answer this multi-shard statement: {e}",
                    hint="retry it; no partial result was returned as complete",
                )
            )
        for _, _, held in self._servers.held():
            held.attach(self)  # back from the scatter's or broadcast's sinks
        if self.state is State.READY:
            if self._requests.pending_begin is not None:  # it ran outside the transaction
                status = self._requests.outside_transaction(failed)
            self.write(messages.ready_for_query(status))
            for _, _, held in self._servers.held():
                self._give_back_if_idle(held)
            self._requests.done_on_shards(frames)

    def _forget(self, b: BackendConnection, pooled: bool = False) -> None:
        """Let go of ``b`` (``pooled``: idle, back to its pool without a reset)."""
        if self._watch.backend is b:
            self._watch.forget()
        self._requests.forget(b)
        self._servers.remove(b, pooled)

    # --- requests.Host

    def running(self) -> bool:
        return self.state is State.READY

    def writable(self) -> bool:
        return not self._writing_paused

    def block(self, blocked: bool) -> None:
        if blocked:
            self._pause("blocked")
        else:
            self._resume("blocked")

    def terminate(self) -> None:
        self.state = State.CLOSED
        if self._transport is not None:
            self._transport.close()

    # --- backend.Sink

    def backend_data(self, backend: BackendConnection, data: bytes | bytearray) -> None:
        # After a FATAL the client gets nothing more: the transport may still be flushing.
        if self._transport is not None and self.state is not State.CLOSED:
            self._transport.write(data)
            self.ctx.bytes_out += len(data)
            if backend is self._watch.backend:
                self._watch.relayed = True

    def backend_ready(self, backend: BackendConnection) -> None:
        if self._rerun is not None and self._rerun[0] is backend:
            self._run_again(backend, self._rerun[1])
            return
        if self._needs_primary is backend:
            self._retry_on_primary(backend)
            return
        watch = self._watch
        if backend is watch.backend and watch.frames:
            if backend.answering:
                assert self._loop is not None
                watch.since = self._loop.time()  # progress
            else:
                watch.frames.clear()
        answered = self._servers.answered(backend)
        if answered is not None:
            route, took = answered
            self.ctx.metrics.request_took(route.role, took)
            idle = backend.tx_status is messages.TxStatus.IDLE
            shard = self._servers.shard_of(backend)
            self._track_transaction(route, shard, idle)
            if route.role is Role.PRIMARY and idle and not backend.batch_failed:
                self.ctx.metrics.wrote(shard, backend.epoch)  # first write at an epoch
            if self.ctx.topology is not None:
                self.consistency.after_ready(route, shard, idle=idle)
        self._give_back_if_idle(backend)
        if self._requests.waiting_on is backend and not backend.pending:
            self._requests.resume()

    def _give_back_if_idle(self, b: BackendConnection) -> None:
        """Transaction pooling: ``b`` goes back to its pool once idle, unless the session
        pinned it (``Classified.pins_session``) or is in the middle of something there."""
        if (
            self.ctx.settings.pool_mode is PoolMode.TRANSACTION
            and b.idle
            and not self._requests.pinned
            and self._requests.pending_begin is None
            and self._requests.batch is not b
            and self.state is State.READY
            and self._servers.pool_of(b) is not None
        ):
            self._forget(b, pooled=True)

    def _track_transaction(self, route: Route, shard: int, idle: bool) -> None:
        if idle:
            self._tx_route = None
            self._tx_shard = None
            if self._log_writer is not None:
                self._log_writer.ended()
        elif self._tx_route is None:
            self._tx_route = route
            self._tx_shard = shard

    def backend_lost(self, backend: BackendConnection, exc: Exception | None) -> None:
        in_flight = backend.answering or backend.tx_status is not messages.TxStatus.IDLE
        waiting = self._requests.waiting_on is backend
        verdict = farewell.judge(
            backend.farewell, in_flight=in_flight, last_used=self._servers.current is backend
        )
        pool = self._servers.pool_of(backend)
        self._forget(backend)
        if self.state is State.CLOSED:
            return
        if verdict is farewell.Verdict.RELAY:
            self._farewell(backend)
        elif verdict is farewell.Verdict.UNKNOWN:
            self._fatal(
                SqlState.TRANSACTION_RESOLUTION_UNKNOWN,
                f"connection to server {backend.member_name} ({backend.address}) was lost "
                "while a statement or transaction was in progress; its outcome is unknown",
                hint="reconnect and check whether the transaction took effect",
            )
        elif verdict is farewell.Verdict.PROBE and pool is not None:
            if self._requests.pipeline is not Pipeline.WAITING:
                self._requests.wait()  # the next request waits for the verdict
                waiting = True
            self._spawn(self._terminated_or_shut_down(backend, pool.credentials, waiting))
        elif waiting:
            self._requests.resume()

    async def _terminated_or_shut_down(
        self, backend: BackendConnection, credentials: Credentials, resume: bool
    ) -> None:
        """``pg_terminate_backend()`` ends the session; a shutdown is hidden (farewell)."""
        timeout = self.ctx.settings.connect_timeout
        if await farewell.accepts_connections(backend, credentials, timeout):
            self._farewell(backend)
        elif resume and self.state is State.READY:
            self._requests.resume()

    def _farewell(self, backend: BackendConnection) -> None:
        """End the session with the server's own FATAL error, as PostgreSQL did."""
        assert backend.farewell is not None
        self.ctx.metrics.error_sent(farewell.sqlstate(backend.farewell) or "")
        if self._transport is not None and self.state is not State.CLOSED:
            if not backend.farewell_relayed:
                self._transport.write(backend.farewell)
            self._transport.close()
        self.state = State.CLOSED

    def backend_paused(self, paused: bool) -> None:
        if paused:
            self._pause("backend")
        else:
            self._resume("backend")

    def backend_read_only(
        self, backend: BackendConnection, retry: bool, error: bytes
    ) -> bytes | None:
        self.ctx.doubt_topology(read_only_problem(backend.member_name, backend.address))
        query, self._requests.last_query = self._requests.last_query, None
        if retry and query is not None and query[0] is backend:
            self._rerun = query  # the error and its ReadyForQuery never reach the client
            return None
        index = self._servers.shard_of(backend)
        return moved_error(index, backend.member_name, backend.address, self._tx_route is not None)

    def backend_needs_primary(self, backend: BackendConnection, retry: bool) -> bool:
        watch = self._watch
        if watch.backend is not backend or not watch.frames:
            return False
        unlogged.learn(watch.frames, self._replicated)
        if not retry or watch.relayed:
            return False
        self._needs_primary = backend  # its ReadyForQuery comes next: _retry_on_primary
        return True

    def _retry_on_primary(self, backend: BackendConnection) -> None:
        """The follower refused the request (``unlogged``): the primary runs it instead."""
        self._needs_primary = None
        self._servers.answered(backend)
        frames = self._watch.frames
        self._watch.forget()
        self._requests.frames.extendleft(reversed(frames))
        self._avoid_follower = True
        self._requests.resume()

    def _run_again(self, backend: BackendConnection, frame: codec.Frame) -> None:
        """The primary refused ``frame`` as read-only: leave it, wait for the topology."""
        self._rerun = None
        self._servers.answered(backend)
        backend.abort()  # it cannot take writes: not back into the pool
        self._forget(backend)
        self._requests.frames.appendleft(frame)
        self._requests.wait()
        problem = read_only_problem(backend.member_name, backend.address)
        self._spawn(self._wait_for_topology(f"{problem}; running the statement again"))

    # --- a follower that stops answering (see follower_watch)

    def replication_method(self) -> str:
        topo = self.ctx.topology
        return topo.method if topo is not None else "wal"

    def logs(self, c: Classified) -> bool:
        if self.replication_method() != "statement":
            return False
        if self._log_writer is None:
            self._log_writer = log_writer.Writer(self.ctx.statement_log, self.write)
        return self._log_writer.handles(c)

    def run_logged(
        self,
        b: BackendConnection,
        route: Route,
        frames: list[codec.Frame],
        shard: int,
        c: Classified,
    ) -> None:
        self._spawn(self._logged(b, route, frames, shard, c))

    async def _logged(
        self,
        b: BackendConnection,
        route: Route,
        frames: list[codec.Frame],
        shard: int,
        c: Classified,
    ) -> None:
        """A write of statement replication: the log writer runs it (statement_log)."""
        ex = exchange.Exchange(b, self.write)
        b.attach(ex)
        writer = self._log_writer
        assert writer is not None  # made by logs(), which routed the request here
        try:
            if frames[0].type == ord("Q"):
                sql = messages.query_sql(frames[0].body)
                done = await writer.simple(ex, shard, sql, c)
            else:
                done = await writer.extended(ex, shard, frames, self._requests)
        except Exception as e:  # a lost server, or a bug: never leave the client hanging
            if not isinstance(e, (exchange.ExchangeFailed, BackendError, ConnectionError)):
                log.exception("statement-log writer failed")
            b.abort()
            self._forget(b)
            self._fatal(
                SqlState.TRANSACTION_RESOLUTION_UNKNOWN,
                f"the primary of shard {shard} failed during a logged write ({e}); "
                "its outcome is unknown",
                hint="reconnect and check whether the transaction took effect",
            )
            return
        finally:
            b.attach(self)
        idle = done.status is messages.TxStatus.IDLE
        self._track_transaction(route, shard, idle)
        if done.seq is not None:
            self.consistency.tokens.after_write(shard, positions.Position(done.seq))
            self.ctx.metrics.wrote(shard, b.epoch)
        if self.state is State.READY:
            self.write(messages.ready_for_query(done.status))
            self._requests.done_on_shards(frames)

    def sent_to_follower(self, b: BackendConnection, f: codec.Frame) -> None:
        watch = self._watch
        if (
            watch.frames
            and watch.backend is b
            and not (watch.relayed and answered_round_trip(watch.frames, bool(b.pending)))
        ):
            watch.frames.append(f)
            return
        assert self._loop is not None
        watch.backend = b
        watch.frames = [f]
        watch.since = self._loop.time()
        watch.relayed = False
        if watch.timer is None:
            watch.timer = self._loop.call_later(
                self.ctx.settings.follower_read_timeout, self._check_follower
            )

    def _check_follower(self) -> None:
        watch = self._watch
        watch.timer = None
        b = watch.backend
        if self.state is not State.READY or b is None or self._loop is None:
            return
        timeout = self.ctx.settings.follower_read_timeout
        decision = judge(
            outstanding=bool(watch.frames) and b.answering and not b.broken,
            silent_for=self._loop.time() - watch.since,
            timeout=timeout,
            monitor_hears_it=self.ctx.monitor.replayed(b.member_name) is not None,
            relayed=watch.relayed,
            in_transaction=self._tx_route is not None or b.tx_status is not messages.TxStatus.IDLE,
            session_busy=self._requests.pipeline is Pipeline.WAITING
            and self._requests.waiting_on is not b,
        )
        if decision.verdict is Verdict.IDLE:
            return
        if decision.verdict is Verdict.WAIT:
            watch.timer = self._loop.call_later(decision.recheck_in, self._check_follower)
            return
        frames = watch.frames
        b.attach(None)  # not one more byte of its answers reaches the client
        b.abort()
        self._forget(b)
        silent = f"follower {b.member_name} ({b.address}) did not answer within {timeout:g} s"
        if decision.verdict is Verdict.FAIL:
            self._fatal(
                SqlState.CONNECTION_FAILURE,
                f"{silent} and its answer had begun or a transaction was open on it; "
                "the read cannot be retried",
                hint="reconnect and retry",
            )
            return
        log.warning("%s; retrying %d message(s) on the primary", silent, len(frames))
        self._requests.frames.extendleft(reversed(frames))
        self._avoid_follower = True
        self._requests.resume()

    # --- topology

    def topology_changed(self) -> None:
        """Called by the context for every new topology: leave a primary of an old epoch.

        A request in flight there ends the session with 08007 now; waiting for an
        answer could take forever (a frozen node keeps its sockets open) and any
        answer would come from a member that is no longer the primary. An open
        transaction without a request in flight is ended on its next statement
        (``server_for``); an idle session lets go of the connection and gets one
        to the new primary on its next write.
        """
        for index, role, b in self._servers.held():
            if role is Role.PRIMARY and self.state is State.READY:
                self._check_primary(index, b)

    def _check_primary(self, index: int, b: BackendConnection) -> None:
        try:
            shard = self.ctx.shard(index)
        except NoPrimary:
            return
        primary = shard.primary
        if (
            primary is not None
            and b.epoch == shard.epoch
            and b.member_name == primary.name
            and b.address == primary.address
        ):
            return
        if b.answering:
            b.attach(None)  # not one more byte of its response reaches the client
            b.abort()
            self._fatal(
                SqlState.TRANSACTION_RESOLUTION_UNKNOWN,
                f"the primary of shard {shard.index} changed (now epoch {shard.epoch}) while "
                f"a statement was in progress on {b.member_name} ({b.address}); "
                "its outcome is unknown",
                hint="reconnect and check whether the statement took effect",
            )
            self._forget(b)
        elif b.tx_status is messages.TxStatus.IDLE:
            self._forget(b)

    # --- cancel and errors

    def abort(self) -> None:
        """Drop the client connection now (proxy shutdown)."""
        if self._transport is not None:
            self._transport.abort()

    def cancel(self) -> None:
        for b in self._servers:
            if b.pending:
                self._spawn(b.cancel(self.ctx.settings.connect_timeout))

    def _fatal(self, code: SqlState | str, message: str, hint: str | None = None) -> None:
        self.ctx.metrics.error_sent(code)
        if self._transport is not None and self.state is not State.CLOSED:
            self._transport.write(error_response(code, message, hint=hint, severity=Severity.FATAL))
            self._transport.close()
        self.state = State.CLOSED
