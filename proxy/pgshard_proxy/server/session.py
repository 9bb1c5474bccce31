"""One client connection: startup, authentication, then relaying to servers.

Created by ``server.listener`` for every accepted socket. States::

    INITIAL --StartupMessage--> AUTH --password ok--> CONNECTING --primary ready--> READY
       ^ SSLRequest/GSSENCRequest answered, next packet expected      any --> CLOSED

In READY the session reads whole frames (``protocol.codec``) and forwards
their bytes to a server connection borrowed from the pools: one per role at
most (the primary and, for reads, a follower). Responses are relayed by
``pool.backend`` straight to the client socket. The session keeps what must
follow the client from one server to another:

* its prepared statements (the Parse bytes), so a Bind or Describe on a server
  that has not seen the statement first gets a hidden Parse (answers swallowed);
* its SET log (startup parameters first), replayed on each server before use;
* order: a request goes to a different server only once the previous one has
  answered everything; extended-protocol messages between two Syncs stay on
  one server; a transaction stays on the server it began on.

A server lost while a request or transaction was in flight ends the client's
session with SQLSTATE 08007 (outcome unknown); a server lost while idle is
replaced silently on next use. The same holds when the topology moves the
shard to a new epoch (:meth:`Session.topology_changed`): a request still being
answered by the old primary ends the session at once with 08007 (the old
primary may be frozen and never answer), an idle session just lets go of it.
A follower that stops answering mid-read is handled by ``follower_watch`` (the
read is retried on the primary, or the session ends with 08006).

``SET``/``SHOW pgshard.*`` in a simple Query are answered here; an extended
batch that begins with ``SHOW pgshard.*`` is answered by ``proxy_answers``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import logging
import secrets
from collections.abc import Iterable, Mapping
from typing import cast

from ..consistency.session import SessionConsistency
from ..consistency.tracker import Mode
from ..pool.backend import BackendConnection, BackendError, Marker, send_cancel
from ..pool.pool import FOLLOWER_EPOCH, Pool
from ..protocol import auth, codec, messages
from ..protocol.sqlstate import Severity, SqlState, error_response
from ..routing import router
from ..routing.classify import Classified, Kind, classify, classify_bytes
from ..routing.router import Role, Route
from .context import NoPrimary, ServerContext
from .follower_watch import FollowerWatch, Verdict, answered_round_trip, judge
from .proxy_answers import Mixed, Parsed, ProxyPortals

log = logging.getLogger(__name__)


class State(enum.Enum):
    INITIAL = "initial"
    AUTH = "auth"
    CONNECTING = "connecting"
    READY = "ready"
    CLOSED = "closed"


class _AuthStep(enum.Enum):
    SASL_INITIAL = "sasl-initial"
    SASL_FINAL = "sasl-final"
    MD5 = "md5"


@dataclasses.dataclass(frozen=True)
class Statement:
    """A statement the client prepared: its Parse message, kept for other servers."""

    parse: bytes
    sql: str
    version: int
    classified: Classified


# Frontend message type bytes.
_Q, _P, _B, _D, _E, _C, _H, _S, _X, _F = b"QPBDECHSXF"
_COPY = frozenset(b"dcf")
_EXTENDED = frozenset(b"PBDECHS")

# Answered by the proxy itself in the simple protocol.
_ANSWERED = frozenset((Kind.PROXY_SET, Kind.PROXY_SHOW))
# A FunctionCall message: unknown function, so the primary.
_FUNCTION_CALL = Classified(Kind.WRITE)
# An extended batch with nothing but Describe/Execute/Sync: any server will do.
_SYNC_ONLY = Classified(Kind.OTHER)
PROXY_PREFIX = "pgshard."
STARTUP_ATTEMPTS = 3
"""Connects to the primary a new session makes while topologies keep changing under it."""

# Startup parameters that are not server settings to replay.
_NOT_SETTINGS = frozenset({"user", "database", "options", "replication"})


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def options_settings(options: str) -> dict[str, str]:
    """``-c name=value`` / ``--name=value`` pairs of the startup ``options`` string."""
    words: list[str] = []
    word: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            word.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(ch)
    if word:
        words.append("".join(word))
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-c" and i + 1 < len(words):
            i += 1
            w = words[i]
        elif w.startswith(("-c", "--")):
            w = w[2:]
        name, sep, value = w.partition("=")
        if sep and name:
            # PostgreSQL reads both forms as long options, with '-' meaning '_'.
            out[name.replace("-", "_")] = value
        i += 1
    return out


def startup_settings(params: Mapping[str, str]) -> dict[str, str]:
    """Server settings a client asked for in its startup packet, in order."""
    out = {k: v for k, v in params.items() if k not in _NOT_SETTINGS and not k.startswith("_pq_.")}
    out.update(options_settings(params.get("options", "")))
    return out


def set_statements(settings: Iterable[tuple[str, str]]) -> str:
    return "; ".join(f"SET {_ident(k)} TO {_literal(v)}" for k, v in settings)


class Session(asyncio.Protocol):
    """A client connection (see the module docstring)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.state = State.INITIAL
        self._transport: asyncio.Transport | None = None
        self._decoder = codec.FrontendDecoder(ctx.settings.max_message_bytes)
        self._startup: messages.Startup | None = None
        self._auth_step: _AuthStep | None = None
        self._scram: auth.ScramServerExchange | None = None
        self._md5_salt = b""
        self._frames: collections.deque[codec.Frame] = collections.deque()
        self._blocked = False
        self._waiting_on: BackendConnection | None = None
        self._backends: dict[Role, BackendConnection] = {}
        self._pools: dict[BackendConnection, Pool] = {}
        self._current: BackendConnection | None = None
        self._batch: BackendConnection | None = None
        self._statements: dict[str, Statement] = {}
        self._version = 0
        self._set_log: list[str] = []
        self._key: tuple[int, int] | None = None
        self._paused: set[str] = set()
        self._tls = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._seed = secrets.randbits(16)
        self.consistency = SessionConsistency(
            ctx.monitor,
            mode=Mode(ctx.settings.consistency.value),
            max_wait_ms=ctx.settings.max_wait_ms,
            seed=self._seed,
        )
        self._decided: Route | None = None
        """A route awaited asynchronously, for the request at the head of the queue."""
        self._batch_route: Route | None = None
        self._tx_route: Route | None = None
        """Where the open transaction runs (its statements all go there)."""
        self._pinned = False
        self._routes: dict[BackendConnection, collections.deque[Route]] = {}
        """Per server: the route of each request still waiting for its ReadyForQuery."""
        self._retry_until: float | None = None
        """While the servers a request needs cannot be reached: when to give up waiting."""
        self._skip_to_sync = False
        self._skip_status = messages.TxStatus.IDLE
        self._watch = FollowerWatch()
        """Follower requests not yet answered, in case the follower stops answering."""
        self._avoid_follower = False
        """The next request is a retry of reads whose follower stopped answering."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxy_batch = False
        """The extended-protocol messages up to the next Sync are answered by the proxy."""
        self._proxy_portals = ProxyPortals()

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=256 * 1024)
        self._loop = asyncio.get_running_loop()
        self.ctx.sessions.add(self)
        if len(self.ctx.sessions) > self.ctx.settings.max_clients:
            self._fatal(SqlState.TOO_MANY_CONNECTIONS, "sorry, too many clients already")

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.sessions.discard(self)
        self.state = State.CLOSED
        self._transport = None
        self._watch.cancel()
        if self._key is not None:
            self.ctx.cancel_keys.unregister(self._key)
        for b in list(self._backends.values()):
            self._release(b)
        self._backends.clear()
        for task in self._tasks:
            task.cancel()
        closing = asyncio.get_running_loop().create_task(self.consistency.close())
        self.ctx.background.add(closing)
        closing.add_done_callback(self.ctx.background.discard)

    def pause_writing(self) -> None:
        # The client reads slower than servers answer: stop reading from servers.
        for b in self._backends.values():
            b.pause_reading(True)

    def resume_writing(self) -> None:
        for b in self._backends.values():
            b.pause_reading(False)

    def data_received(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self._decoder.feed(data)
        try:
            while self.state is State.INITIAL and self._read_initial():
                pass
            if self.state is State.AUTH:
                self._read_auth()
            if self.state in (State.CONNECTING, State.READY):
                self._frames.extend(self._decoder.frames())
                if self.state is State.READY and not self._blocked:
                    self._process()
        except codec.ProtocolViolation as e:
            self._fatal(e.sqlstate, str(e))
        except messages.MalformedMessage as e:
            self._fatal(SqlState.PROTOCOL_VIOLATION, f"invalid message: {e}")

    # --- startup and authentication

    def _read_initial(self) -> bool:
        pkt = self._decoder.next_initial()
        if pkt is None:
            return False
        assert self._transport is not None
        if isinstance(pkt, messages.SSLRequest):
            if self.ctx.ssl_context is None or self._tls:
                self._transport.write(b"N")
                return True
            if self._decoder.pending:
                # Bytes sent before the TLS handshake must not count as encrypted (CVE-2021-23214).
                raise codec.ProtocolViolation("received unencrypted data after SSL request")
            self._transport.write(b"S")
            self._spawn(self._start_tls())
            return False
        if isinstance(pkt, messages.GSSENCRequest):
            self._transport.write(b"N")
            return True
        if isinstance(pkt, messages.CancelRequest):
            target = self.ctx.cancel_keys.lookup(pkt.pid, pkt.secret)
            if target is not None:
                target.cancel()
            self.state = State.CLOSED
            self._transport.close()
            return False
        self._startup = pkt
        self._decoder.expect_initial = False
        self._begin_auth(pkt)
        return False

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
        self._transport = transport = cast(asyncio.Transport, transport)
        self._tls = True

    def _begin_auth(self, startup: messages.Startup) -> None:
        assert self._transport is not None
        if "replication" in startup.params and startup.params["replication"] not in ("", "false"):
            self._fatal(SqlState.FEATURE_NOT_SUPPORTED, "pgshard-proxy does not relay replication")
            return
        method = self.ctx.settings.auth_method
        user = startup.user
        self.state = State.AUTH
        if method is auth.AuthMethod.TRUST:
            if self.ctx.settings.users and user not in self.ctx.settings.users:
                self._fatal(SqlState.INVALID_AUTHORIZATION, f'role "{user}" does not exist')
                return
            self._authenticated()
        elif method is auth.AuthMethod.SCRAM:
            self._scram = auth.ScramServerExchange(user, self.ctx.verifiers.get(user))
            self._auth_step = _AuthStep.SASL_INITIAL
            self._transport.write(messages.auth_sasl([auth.SCRAM_MECHANISM]))
        else:
            self._md5_salt = secrets.token_bytes(4)
            self._auth_step = _AuthStep.MD5
            self._transport.write(messages.auth_md5(self._md5_salt))

    def _read_auth(self) -> None:
        assert self._transport is not None and self._startup is not None
        for frame in self._decoder.frames():
            if self.state is not State.AUTH:
                self._frames.append(frame)
                continue
            if frame.type != ord("p"):
                raise codec.ProtocolViolation(
                    f"expected a password response, got message type {chr(frame.type)!r}"
                )
            try:
                self._auth_message(frame.body)
            except auth.AuthFailed as e:
                self._fatal(e.sqlstate, str(e))
                return

    def _auth_message(self, body: bytes) -> None:
        assert self._transport is not None and self._startup is not None
        user = self._startup.user
        if self._auth_step is _AuthStep.SASL_INITIAL:
            assert self._scram is not None
            mechanism, data = messages.decode_sasl_initial(body)
            if mechanism != auth.SCRAM_MECHANISM:
                raise auth.AuthFailed(
                    f"client selected an invalid SASL authentication mechanism {mechanism!r}",
                    SqlState.PROTOCOL_VIOLATION,
                )
            self._transport.write(messages.auth_sasl_continue(self._scram.first(data)))
            self._auth_step = _AuthStep.SASL_FINAL
        elif self._auth_step is _AuthStep.SASL_FINAL:
            assert self._scram is not None
            self._transport.write(messages.auth_sasl_final(self._scram.final(body)))
            self._authenticated()
        else:
            known = self.ctx.settings.users.get(user)
            if known is None or known.password is None:
                raise auth.password_failed(user)
            auth.check_md5(user, known.password, self._md5_salt, messages.decode_password(body))
            self._authenticated()

    def _authenticated(self) -> None:
        assert self._transport is not None and self._startup is not None
        self._transport.write(messages.auth_ok())
        self.state = State.CONNECTING
        settings = startup_settings(self._startup.params)
        proxy_settings = {k: v for k, v in settings.items() if k.startswith(PROXY_PREFIX)}
        for name, value in proxy_settings.items():
            refusal = self.consistency.apply(name.removeprefix(PROXY_PREFIX), value)
            if refusal is not None:
                self._fatal(refusal.sqlstate, refusal.message)
                return
        server_settings = [(k, v) for k, v in settings.items() if k not in proxy_settings]
        if server_settings:
            self._set_log.append(set_statements(server_settings))
        self._spawn(self._connect_first())

    async def _connect_first(self) -> None:
        try:
            b = await self._acquire_primary_at_startup()
            if self._set_log:
                error = await b.run_hidden(
                    "; ".join(self._set_log), self.ctx.settings.connect_timeout
                )
                if error:
                    self._fatal(SqlState.INVALID_PARAMETER_VALUE, error)
                    return
                b.settings_applied = len(self._set_log)
        except (BackendError, TimeoutError, router.NoPrimary) as e:
            self._fatal(SqlState.CANNOT_CONNECT_NOW, f"pgshard-proxy cannot reach the primary: {e}")
            return
        if self.state is not State.CONNECTING or self._transport is None:
            return
        self._key = self.ctx.cancel_keys.register(self)
        out = [messages.parameter_status(k, v) for k, v in b.params.items()]
        out.append(messages.backend_key_data(*self._key))
        out.append(messages.ready_for_query(messages.TxStatus.IDLE))
        self._transport.write(b"".join(out))
        self.state = State.READY
        self._process()

    async def _acquire_primary_at_startup(self) -> BackendConnection:
        """The current primary; tried again (a few times) when a new topology came while
        connecting: the primary it named may have gone away without a word."""
        for _ in range(STARTUP_ATTEMPTS - 1):
            topo = self.ctx.topology
            try:
                return await self._acquire(self._primary_route())
            except (BackendError, TimeoutError):
                if self.ctx.topology is topo:
                    raise
        return await self._acquire(self._primary_route())

    def _primary_route(self) -> Route:
        return router.route(
            classify("BEGIN"), mode=Mode.STRONG, in_transaction=None, pinned=True,
            shard=self.ctx.shard(), tokens=self.consistency.tokens, replayed={},
            max_wait_ms=0,
        )  # fmt: skip

    # --- borrowing servers

    async def _acquire(self, route: Route) -> BackendConnection:
        assert self._startup is not None
        shard = self.ctx.shard()
        epoch = shard.epoch if route.role is Role.PRIMARY else FOLLOWER_EPOCH
        key, credentials = self.ctx.pool_key(route.member, self._startup.database, epoch)
        pool = self.ctx.pools.get(key, credentials)
        b = await pool.acquire()
        if self.state is State.CLOSED:
            pool.release(b)
            raise BackendError("client went away")
        b.attach(self)
        b.epoch = epoch
        old = self._backends.get(route.role)
        if old is not None and old is not b:
            self._forget(old)
        self._backends[route.role] = b
        self._pools[b] = pool
        self._routes[b] = collections.deque()
        return b

    def _release(self, b: BackendConnection) -> None:
        self._routes.pop(b, None)
        pool = self._pools.pop(b, None)
        if pool is not None:
            pool.release(b)
        else:
            b.close()

    def _spawn(self, coro: collections.abc.Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _block(self) -> None:
        self._blocked = True
        self._pause("blocked")

    def _unblock(self) -> None:
        self._blocked = False
        self._waiting_on = None
        self._resume("blocked")
        if self.state is State.READY:
            self._process()

    def _pause(self, reason: str) -> None:
        if not self._paused and self._transport is not None:
            self._transport.pause_reading()
        self._paused.add(reason)

    def _resume(self, reason: str) -> None:
        self._paused.discard(reason)
        if not self._paused and self._transport is not None:
            self._transport.resume_reading()

    async def _acquire_then_resume(self, route: Route) -> None:
        topo = self.ctx.topology
        try:
            await self._acquire(route)
        except (BackendError, TimeoutError, NoPrimary) as e:
            self._decided = None
            if self.ctx.topology is not topo:  # a new topology already: route again now
                self._unblock()
                return
            await self._wait_for_topology(
                f"pgshard-proxy cannot reach {route.role.value} {route.member.name}: {e}"
            )
            return
        self._retry_until = None
        self._unblock()

    async def _wait_for_topology(self, problem: str) -> None:
        """A failover may be in progress: wait for a new topology, then route again.

        Gives up after ``failover_wait`` seconds by answering the request with 57P03
        (the session itself stays usable).
        """
        loop = asyncio.get_running_loop()
        if self._retry_until is None:
            self._retry_until = loop.time() + self.ctx.settings.failover_wait
            log.info("%s; waiting up to %.0fs for the topology to change", problem,
                     self.ctx.settings.failover_wait)  # fmt: skip
        remaining = self._retry_until - loop.time()
        if remaining <= 0:
            self._retry_until = None
            self._unblock_with_error(SqlState.CANNOT_CONNECT_NOW, f"{problem}; retry later")
            return
        with contextlib.suppress(TimeoutError):
            # Also retry now and then: the same member may simply come back.
            await asyncio.wait_for(self.ctx.topology_changed(), min(remaining, 1.0))
        self._unblock()

    async def _route_then_resume(self, c: Classified) -> None:
        try:
            self._decided = await self.consistency.route(
                c, self.ctx.shard(), in_transaction=self._tx_route, pinned=self._pinned
            )
        except (router.NoPrimary, NoPrimary) as e:
            self._decided = None
            await self._wait_for_topology(str(e))
            return
        self._unblock()

    def _unblock_with_error(self, code: SqlState, message: str) -> None:
        """Answer the request at the head of the queue with an error instead of running it."""
        self._blocked = False
        self._waiting_on = None
        self._resume("blocked")
        if self.state is State.READY and self._frames:
            self._reject(self._frames.popleft(), code, message)
            self._process()

    def _reject(self, f: codec.Frame, code: SqlState | str, message: str) -> None:
        """Error for ``f`` (nothing is outstanding); extended messages skip to their Sync."""
        if self._transport is None:
            return
        status = self._tx_status()
        self._transport.write(error_response(code, message))
        if f.type == _Q or f.type == _S:
            self._transport.write(messages.ready_for_query(status))
        else:
            self._skip_to_sync = True
            self._skip_status = status

    def _tx_status(self) -> messages.TxStatus:
        for b in self._backends.values():
            if b.tx_status is not messages.TxStatus.IDLE:
                return b.tx_status
        return messages.TxStatus.IDLE

    def _outstanding(self) -> BackendConnection | None:
        for b in self._backends.values():
            if b.pending:
                return b
        return None

    def _wait_for(self, b: BackendConnection) -> None:
        self._block()
        self._waiting_on = b

    def _backend_for(self, c: Classified) -> tuple[BackendConnection, Route] | None:
        """The server and route for a request classified ``c``; None after arranging to wait."""
        route = self._decided
        try:
            shard = self.ctx.shard()
            if route is None:
                route = self.consistency.route_now(
                    c, shard, in_transaction=self._tx_route, pinned=self._pinned
                )
            if self._avoid_follower and route is not None:
                self._avoid_follower = False
                if route.role is Role.FOLLOWER:
                    route = router.retry_on_primary(shard, self.consistency.mode)
        except (router.NoPrimary, NoPrimary) as e:
            self._block()
            self._spawn(self._wait_for_topology(str(e)))
            return None
        if route is None:  # a position capture or a lagging follower to wait for
            self._block()
            self._spawn(self._route_then_resume(c))
            return None
        b = self._backends.get(route.role)
        if b is not None and (
            b.broken
            or b.member_name != route.member.name
            or b.address != route.member.address
            or (route.role is Role.PRIMARY and b.epoch != shard.epoch)
        ):
            if not b.broken and not b.idle:
                # The transaction's primary is no longer the primary: never write there.
                self._fatal(
                    SqlState.TRANSACTION_RESOLUTION_UNKNOWN,
                    f"the primary of shard {shard.index} changed (now epoch {shard.epoch}) "
                    "during this transaction; it cannot continue",
                    hint="reconnect and retry the transaction",
                )
                return None
            self._forget(b)
            b = None
        if b is None:
            self._decided = route
            self._block()
            self._spawn(self._acquire_then_resume(route))
            return None
        cur = self._current
        if cur is not None and cur is not b and cur.pending:
            # Answers must reach the client in request order: let the other server finish,
            # then decide again (the transaction state may have changed meanwhile).
            self._decided = None
            self._wait_for(cur)
            return None
        self._decided = None
        if b.settings_applied < len(self._set_log):
            sql = "; ".join(self._set_log[b.settings_applied :])
            b.send(messages.query(sql), Marker.HIDDEN_QUERY)
            b.settings_applied = len(self._set_log)
        self._current = b
        return b, route

    def _forget(self, b: BackendConnection) -> None:
        if self._watch.backend is b:
            self._watch.forget()
        for role, have in list(self._backends.items()):
            if have is b:
                del self._backends[role]
        if self._current is b:
            self._current = None
        if self._batch is b:
            self._batch = None
        self._release(b)

    # --- relaying client requests

    def _process(self) -> None:
        try:
            self._process_frames()
        finally:
            for b in self._backends.values():
                b.flush()

    def _process_frames(self) -> None:
        frames = self._frames
        while frames and not self._blocked and self.state is State.READY:
            f = frames[0]
            if self._skip_to_sync:
                frames.popleft()
                if f.type == _S:
                    self._skip_to_sync = False
                    if self._transport is not None:
                        self._transport.write(messages.ready_for_query(self._skip_status))
                continue
            if not self._handle(f):
                return
            if frames and frames[0] is f:
                frames.popleft()

    def _handle(self, f: codec.Frame) -> bool:
        t = f.type
        if t == _Q:
            c = classify_bytes(f.data[5:-1])
            if c.refusal is not None or c.kind in _ANSWERED:
                return self._answer(f, c)
            got = self._backend_for(c)
            if got is None:
                return False
            b, route = got
            b.send(f.data, Marker.SYNC)
            self._routes[b].append(route)
            if b.epoch == FOLLOWER_EPOCH:
                self._sent_to_follower(b, f)
            b.statements.pop("", None)  # a simple query replaces the unnamed statement
            self._after_send(c, b)
            return True
        if t in _EXTENDED:
            return self._extended(t, f)
        if t in _COPY:
            copying = self._current or self._backends.get(Role.PRIMARY)
            if copying is not None:
                copying.send(f.data)
            return True
        if t == _F:
            got = self._backend_for(_FUNCTION_CALL)
            if got is None:
                return False
            b, route = got
            b.send(f.data, Marker.SYNC)
            self._routes[b].append(route)
            return True
        if t == _X:
            self.state = State.CLOSED
            if self._transport is not None:
                self._transport.close()
            return True
        raise codec.ProtocolViolation(f"unexpected message type {chr(t)!r} after startup")

    def _answer(self, f: codec.Frame, c: Classified) -> bool:
        """Simple-query ``SET``/``SHOW pgshard.*`` and refusals: answered by the proxy."""
        busy = self._outstanding()
        if busy is not None:
            self._wait_for(busy)
            return False
        if c.refusal is not None:
            self._reject(f, c.refusal.sqlstate, c.refusal.message)
            return True
        assert self._transport is not None and c.proxy_setting is not None
        name, value = c.proxy_setting
        if c.kind is Kind.PROXY_SHOW:
            out = messages.text_result(PROXY_PREFIX + name, self.consistency.show(name), "SHOW")
        else:
            refusal = self.consistency.apply(name, value)
            if refusal is not None:
                self._reject(f, refusal.sqlstate, refusal.message)
                return True
            out = messages.command_complete("SET")
        self._transport.write(out + messages.ready_for_query(self._tx_status()))
        return True

    def _after_send(self, c: Classified, b: BackendConnection) -> None:
        if c.pins_session:
            self._pinned = True
        if c.kind is Kind.SESSION_SET and c.session_sql:
            self.record_setting(c.session_sql, b)
            if "DISCARD" in c.session_sql.upper():
                self.forget_statements()
        elif c.kind is Kind.PROXY_SET and c.proxy_setting and c.refusal is None:
            # Extended protocol: PostgreSQL keeps it as a placeholder; the proxy obeys it.
            self.consistency.apply(*c.proxy_setting)

    def _batch_class(self) -> Classified:
        """The most demanding statement among the queued extended messages up to Sync."""
        chosen: Classified | None = None
        for f in self._frames:
            if f.type == _P:
                c = classify(messages.parse_fields(f.body)[1])
            elif f.type == _B:
                st = self._statements.get(messages.bind_names(f.body)[1])
                if st is None:
                    continue
                c = st.classified
            elif f.type == _S:
                break
            else:
                continue
            if c.refusal is not None:
                return c  # answered by the proxy: nothing of this batch runs
            if c.kind is Kind.PROXY_SHOW:
                if chosen is None:
                    return c  # a batch the proxy answers (proxy_answers)
                continue  # after a server's statement: the server answers it
            if chosen is None or (chosen.kind is Kind.READ and c.kind is not Kind.READ):
                chosen = c
        return chosen or _SYNC_ONLY

    def _extended(self, t: int, f: codec.Frame) -> bool:
        b = self._batch
        if b is None:
            if self._proxy_batch:
                return self._answer_extended(f)
            c = self._batch_class()
            if c.refusal is not None or c.kind is Kind.PROXY_SHOW:
                busy = self._outstanding()
                if busy is not None:
                    self._wait_for(busy)
                    return False
                if c.refusal is None:
                    self._proxy_batch = True
                    return self._answer_extended(f)
                self._reject(f, c.refusal.sqlstate, c.refusal.message)  # then skip to Sync
                return True
            got = self._backend_for(c)
            if got is None:
                return False
            b, self._batch_route = got
            self._batch = b
        if b.epoch == FOLLOWER_EPOCH:
            self._sent_to_follower(b, f)
        if t == _P:
            name, sql = messages.parse_fields(f.body)
            c = classify(sql)
            old = self._statements.get(name)
            have = b.statements.get(name)
            if name and have is not None and (old is None or have != old.version):
                b.send(messages.close_statement(name), Marker.HIDDEN_CLOSE)  # a stale copy
            self._version += 1
            self._statements[name] = Statement(f.data, sql, self._version, c)
            b.statements[name] = self._version
            b.send(f.data, Marker.PARSE)
            if c.pins_session:
                self._pinned = True
        elif t == _B:
            name = messages.bind_names(f.body)[1]
            self._ensure_prepared(b, name)
            b.send(f.data)
            st = self._statements.get(name)
            if st is not None:
                self._after_send(st.classified, b)
        elif t == _D:
            kind, name = messages.target(f.body)
            if kind == ord("S"):
                self._ensure_prepared(b, name)
            b.send(f.data)
        elif t == _C:
            kind, name = messages.target(f.body)
            if kind == ord("S"):
                self._statements.pop(name, None)
                b.statements.pop(name, None)
            b.send(f.data, Marker.CLOSE)
        elif t == _S:
            b.send(f.data, Marker.SYNC)
            assert self._batch_route is not None
            self._routes[b].append(self._batch_route)
            self._batch = None
            self._batch_route = None
        else:  # Execute, Flush
            b.send(f.data)
        return True

    def _answer_extended(self, f: codec.Frame) -> bool:
        """A message of a batch the proxy answers itself (``SHOW pgshard.*``, proxy_answers)."""
        assert self._transport is not None
        if f.type == _S:
            self._proxy_batch = False
            status = self._tx_status()
            if status is messages.TxStatus.IDLE:
                self._proxy_portals.transaction_ended()
            self._transport.write(messages.ready_for_query(status))
            return True
        if f.type == _C:
            kind, name = messages.target(f.body)
            if kind == ord("S"):
                self._statements.pop(name, None)
        out = self._proxy_portals.answer(f, self._statement_class, self.consistency.show)
        if isinstance(out, Mixed):
            self._proxy_batch = False
            self._reject(f, SqlState.FEATURE_NOT_SUPPORTED, out.message)  # then skip to Sync
            return True
        if isinstance(out, Parsed):
            self._version += 1
            self._statements[out.name] = Statement(f.data, out.sql, self._version, out.classified)
            out = out.answer
        if out:
            self._transport.write(out)
        return True

    def _statement_class(self, name: str) -> Classified | None:
        st = self._statements.get(name)
        return st.classified if st is not None else None

    def _ensure_prepared(self, b: BackendConnection, name: str) -> None:
        st = self._statements.get(name)
        if st is None:
            return  # unknown to us too: the server answers 26000 as PostgreSQL would
        have = b.statements.get(name)
        if have == st.version:
            return
        if have is not None and name:
            b.send(messages.close_statement(name), Marker.HIDDEN_CLOSE)
        b.send(st.parse, Marker.HIDDEN_PARSE)
        b.statements[name] = st.version

    def record_setting(self, sql: str, executed_on: BackendConnection | None) -> None:
        """A session-level SET ran: replay it on every other server before its next use."""
        self._set_log.append(sql)
        if executed_on is not None and executed_on.settings_applied == len(self._set_log) - 1:
            executed_on.settings_applied = len(self._set_log)

    def forget_statements(self) -> None:
        """DISCARD ALL / DEALLOCATE ALL ran: nothing is prepared anywhere any more."""
        self._statements.clear()
        for b in self._backends.values():
            b.statements.clear()

    # --- backend.Sink

    def backend_data(self, backend: BackendConnection, data: bytes | bytearray) -> None:
        # After a FATAL the client gets nothing more: the transport may still be flushing.
        if self._transport is not None and self.state is not State.CLOSED:
            self._transport.write(data)
            if backend is self._watch.backend:
                self._watch.relayed = True

    def backend_ready(self, backend: BackendConnection) -> None:
        watch = self._watch
        if backend is watch.backend and watch.frames:
            if backend.answering:
                assert self._loop is not None
                watch.since = self._loop.time()  # progress
            else:
                watch.frames.clear()
        routes = self._routes.get(backend)
        if routes:
            route = routes.popleft()
            idle = backend.tx_status is messages.TxStatus.IDLE
            if idle:
                self._tx_route = None
            elif self._tx_route is None:
                self._tx_route = route
            if self.ctx.topology is not None:
                self.consistency.after_ready(route, self.ctx.shard().index, idle=idle)
        if self._waiting_on is backend and not backend.pending:
            self._unblock()

    def backend_lost(self, backend: BackendConnection, exc: Exception | None) -> None:
        in_flight = backend.answering or backend.tx_status is not messages.TxStatus.IDLE
        waiting = self._waiting_on is backend
        self._forget(backend)
        if self.state is State.CLOSED:
            return
        if in_flight:
            self._fatal(
                SqlState.TRANSACTION_RESOLUTION_UNKNOWN,
                f"connection to server {backend.member_name} ({backend.address}) was lost "
                "while a statement or transaction was in progress; its outcome is unknown",
                hint="reconnect and check whether the transaction took effect",
            )
        elif waiting:
            self._unblock()

    def backend_paused(self, paused: bool) -> None:
        if paused:
            self._pause("backend")
        else:
            self._resume("backend")

    # --- a follower that stops answering (see follower_watch)

    def _sent_to_follower(self, b: BackendConnection, f: codec.Frame) -> None:
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
            session_busy=self._blocked and self._waiting_on is not b,
        )
        if decision.verdict is Verdict.IDLE:
            return
        if decision.verdict is Verdict.WAIT:
            watch.timer = self._loop.call_later(decision.recheck_in, self._check_follower)
            return
        frames = watch.frames
        b.attach(None)  # not one more byte of its answers reaches the client
        b.abort()
        if self._batch is b:
            self._batch_route = None
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
        self._frames.extendleft(reversed(frames))
        self._avoid_follower = True
        self._unblock()

    # --- topology

    def topology_changed(self) -> None:
        """Called by the context for every new topology: leave a primary of an old epoch.

        A request in flight there ends the session with 08007 now; waiting for an
        answer could take forever (a frozen node keeps its sockets open) and any
        answer would come from a member that is no longer the primary. An open
        transaction without a request in flight is ended on its next statement
        (``_backend_for``); an idle session lets go of the connection and gets one
        to the new primary on its next write.
        """
        b = self._backends.get(Role.PRIMARY)
        if b is None or self.state is not State.READY:
            return
        try:
            shard = self.ctx.shard()
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
        for b in self._backends.values():
            if b.pending:
                self._spawn(
                    send_cancel(b.address, b.pid, b.secret, self.ctx.settings.connect_timeout)
                )

    def _fatal(self, code: SqlState | str, message: str, hint: str | None = None) -> None:
        if self._transport is not None and self.state is not State.CLOSED:
            self._transport.write(error_response(code, message, hint=hint, severity=Severity.FATAL))
            self._transport.close()
        self.state = State.CLOSED
