"""One raw protocol connection from the proxy to a PostgreSQL server.

Owned by a :class:`.pool.Pool` and lent to one client
session at a time. :meth:`BackendConnection.connect` performs the startup and
authentication (SCRAM via ``scramp``, or trust; a server asking for the password in
clear text or as md5, or reporting success before SCRAM's proof, is refused) with the
member's credentials; afterwards the connection relays: the session writes client
frames with :meth:`send` and the connection forwards every server message to
the attached :class:`Sink` untouched, in byte ranges, looking only at headers.

Requests are tracked in a FIFO of markers so that responses to messages the
proxy injected itself (a Parse to prepare a statement transparently, a Close of
a stale copy, a query replaying session SETs) are swallowed, while everything
the client asked for reaches it in order. After an ErrorResponse PostgreSQL
skips to the next Sync, so markers up to the Sync are dropped.

A message that answers nothing (nothing sent since the last ReadyForQuery
answered everything) never reaches the client,
except the asynchronous ones clients accept at any time (ParameterStatus,
NoticeResponse, NotificationResponse): above all the FATAL ErrorResponse a
server sends to its idle connections when it shuts down (a failover, a pod
deleted). A client with no request outstanding does not expect it (asyncpg
then fails its next request with InternalClientError); the connection's loss
that follows is handled by the session.

A connection lent for a primary role watches for one error: 25006, "cannot
execute … in a read-only transaction", means the member is not (or no longer)
a writable primary. The sink decides (:meth:`Sink.backend_read_only`) whether
the request is run again elsewhere (the error and its ReadyForQuery are then
swallowed) or what the client gets instead. :func:`not_writable` tells from the
ParameterStatus values the server reports (PostgreSQL >= 14 reports
``in_hot_standby`` and ``default_transaction_read_only``) whether a member can
take writes at all, without a round trip.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import logging
import socket
import ssl
import struct
import urllib.parse
from collections.abc import Coroutine
from typing import Protocol, cast

from ..protocol import auth, codec, messages
from ..protocol.sqlstate import parse_error_fields
from . import server_tls

log = logging.getLogger(__name__)

_INT32 = struct.Struct("!I")


class BackendError(Exception):
    """The server could not be reached or refused us (message names the member)."""


READ_ONLY_SQL_TRANSACTION = "25006"
FEATURE_NOT_SUPPORTED = "0A000"
"""With "… during recovery": a follower cannot read a temporary or unlogged relation."""


def not_writable(params: dict[str, str]) -> str | None:
    """Why a server with these reported parameters cannot take writes; None if it can."""
    if params.get("in_hot_standby") == "on":
        return "it is a standby (in recovery)"
    if params.get("default_transaction_read_only") == "on":
        return "it is read-only (default_transaction_read_only is on)"
    return None


@dataclasses.dataclass(frozen=True)
class Credentials:
    """How the proxy logs in to a member: from the member's DSN in the topology."""

    user: str
    password: str | None
    tls: server_tls.ServerTls = dataclasses.field(default_factory=server_tls.ServerTls)
    """The DSN's ``sslmode``/``sslrootcert``."""

    @classmethod
    def from_dsn(cls, dsn: str) -> Credentials:
        url = urllib.parse.urlsplit(dsn)
        return cls(
            user=urllib.parse.unquote(url.username or "postgres"),
            password=urllib.parse.unquote(url.password) if url.password else None,
            tls=server_tls.ServerTls.from_dsn(dsn),
        )


class Sink(Protocol):
    """The session side of a lent connection."""

    def backend_data(self, backend: BackendConnection, data: bytes | bytearray) -> None: ...
    def backend_ready(self, backend: BackendConnection) -> None: ...
    def backend_lost(self, backend: BackendConnection, exc: Exception | None) -> None: ...
    def backend_paused(self, paused: bool) -> None: ...
    def backend_read_only(
        self, backend: BackendConnection, retry: bool, error: bytes
    ) -> bytes | None:
        """A primary connection answered 25006 (``error``, the whole ErrorResponse).
        ``retry``: nothing of the request's answer reached the client and no transaction
        is open. None: the request will run again elsewhere (swallow the error and its
        ReadyForQuery); else the message to relay in place of the error."""
        ...

    def backend_needs_primary(self, backend: BackendConnection, retry: bool) -> bool:
        """A follower connection refused the request: it reads a temporary or unlogged
        relation (0A000 "… during recovery"). ``retry``: no transaction is open and only
        this request is outstanding. True: the request runs again on the primary (the
        error, its ReadyForQuery and what the chunk held of the answer are dropped; the
        sink checks nothing of it was relayed before)."""
        ...


class Marker(enum.IntEnum):
    """What a request sent to the server will be answered with."""

    PARSE = 1  # ParseComplete for the client
    HIDDEN_PARSE = 2  # ParseComplete to swallow
    CLOSE = 3  # CloseComplete for the client
    HIDDEN_CLOSE = 4  # CloseComplete to swallow
    SYNC = 5  # a ReadyForQuery for the client (Sync, Query, FunctionCall)
    HIDDEN_QUERY = 6  # a whole simple-query response to swallow
    HIDDEN_SYNC = 7  # a ReadyForQuery to swallow (a batch cut short by the proxy)


# Server message types the relay must look at; everything else is forwarded blindly.
_SPECIAL = frozenset(b"Z123ESA")
# Asynchronous server messages a client accepts even with no request outstanding.
_ASYNCHRONOUS = frozenset(b"SNA")
_ENDS_SESSION = frozenset(("FATAL", "PANIC"))


def _ends_session(buf: bytes | bytearray, pos: int, end: int) -> bool:
    """The ErrorResponse at ``pos`` is FATAL or PANIC (the untranslated severity ``V``)."""
    fields = parse_error_fields(bytes(buf[pos + 5 : end]))
    return fields.get("V", fields.get("S")) in _ENDS_SESSION


class BackendConnection(asyncio.Protocol):
    """A server connection. Not thread-safe; lives on the loop that made it."""

    def __init__(self, member_name: str, address: str, database: str) -> None:
        self.member_name = member_name
        self.address = address
        self.database = database
        self.params: dict[str, str] = {}
        """ParameterStatus values as the server last reported them."""
        self._paused_for: set[str] = set()
        self.pid = 0
        self.secret = 0
        self.tx_status = messages.TxStatus.IDLE
        self.statements: dict[str, int] = {}
        """Prepared statements on this server: client name -> the version of it (versions
        are unique in the process, so a copy another session prepared never matches)."""
        self.settings: tuple[str, ...] = ()
        """The SET log (``session.replicated``) this server has executed since its reset."""
        self.broken = False
        self.cancelled = False
        """A CancelRequest was sent for it: its pool closes it rather than lend it again."""
        self.epoch = -1
        """Shard epoch this connection was lent for as a primary (-1: as a follower)."""
        self.pending: collections.deque[Marker] = collections.deque()
        self._relayed = False
        """Bytes of the answers to the requests now outstanding reached the client."""
        self._swallow_ready = False
        self._failing = False
        self.batch_failed = False
        """The last request answered up to its ReadyForQuery had an ErrorResponse."""
        self._substitute: bytes | None = None
        self._answer_from = 0
        """Offset in the chunk being read where the answer to the oldest request begins."""
        self._drop_answer = False
        self.farewell: bytes | None = None
        """The FATAL (or PANIC) ErrorResponse the server sent before closing, whole."""
        self.farewell_relayed = False
        """``farewell`` answered a request and reached the client."""
        self._open = False
        """Something was sent since the ReadyForQuery that answered everything before it.

        Not the same as ``pending``: Bind, Describe, Execute and Flush have no
        marker, yet their answers (asyncpg's Parse/Describe/Flush) are expected."""
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._sink: Sink | None = None
        self._startup: asyncio.Future[None] | None = None
        self._ssl_answer: asyncio.Future[bytes] | None = None
        """Waiting for the server's one-byte answer to our SSLRequest."""
        self._hidden_error: str | None = None
        self._hidden_done: asyncio.Future[str | None] | None = None
        self._auth_user = ""
        self._auth_password: str | None = None
        self._scram: auth.ScramClientExchange | None = None
        self._scram_verified = False

    # --- connecting

    @classmethod
    async def connect(
        cls,
        *,
        member_name: str,
        address: str,
        database: str,
        credentials: Credentials,
        timeout: float,
        application_name: str = "pgshard-proxy",
    ) -> BackendConnection:
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: cls(member_name, address, database), host.strip("[]"), int(port)
                )
                try:
                    if credentials.tls.wanted:
                        await conn._start_tls(
                            credentials.tls, credentials.tls.server_name or host.strip("[]")
                        )
                except BaseException:
                    conn.abort()
                    raise
                await conn._login(credentials, application_name)
        except (OSError, TimeoutError, ssl.SSLError, server_tls.TlsConfigError) as e:
            raise BackendError(f"cannot connect to {member_name} ({address}): {e}") from None
        return conn

    async def _start_tls(self, tls: server_tls.ServerTls, host: str) -> None:
        """SSLRequest; on 'S' wrap the connection in TLS, on 'N' go on in clear text
        unless ``tls`` requires it (then fail, as libpq does)."""
        assert self._transport is not None
        self._ssl_answer = asyncio.get_running_loop().create_future()
        self._transport.write(messages.ssl_request())
        try:
            answer = await self._ssl_answer
        finally:
            self._ssl_answer = None
        if answer == b"N":
            if tls.required:
                raise BackendError(
                    f"{self.member_name}: the server does not support TLS, "
                    f"but the member's DSN has sslmode={tls.mode.value}"
                )
            return
        if answer != b"S":
            raise BackendError(f"{self.member_name}: unexpected answer {answer!r} to SSLRequest")
        raw, self._transport = self._transport, None  # start_tls closes it if it fails
        transport = await asyncio.get_running_loop().start_tls(
            raw, self, tls.context(), server_hostname=host
        )
        if transport is None:
            raise BackendError(f"{self.member_name}: connection closed during the TLS handshake")
        self._transport = transport

    async def _login(self, credentials: Credentials, application_name: str) -> None:
        assert self._transport is not None
        self._auth_user = credentials.user
        self._auth_password = credentials.password
        self._startup = asyncio.get_running_loop().create_future()
        self._transport.write(
            messages.startup_message(
                {
                    "user": credentials.user,
                    "database": self.database,
                    "application_name": application_name,
                }
            )
        )
        try:
            await self._startup
        except BaseException:
            self.close()
            raise
        finally:
            self._startup = None

    def _fail_startup(self, message: str) -> None:
        if self._startup is not None and not self._startup.done():
            self._startup.set_exception(BackendError(f"{self.member_name}: {message}"))

    def _startup_message(self, t: int, body: bytes) -> None:
        assert self._transport is not None and self._startup is not None
        if t == ord("R"):
            (code,) = _INT32.unpack_from(body)
            self._auth_request(code, body[4:])
        elif t == ord("S"):
            name, value = messages.decode_parameter_status(body)
            self.params[name] = value
        elif t == ord("K"):
            self.pid, self.secret = struct.unpack_from("!II", body)
        elif t == ord("E"):
            fields = parse_error_fields(body)
            self._fail_startup(f"{fields.get('M', 'error')} (SQLSTATE {fields.get('C', '?')})")
        elif t == ord("Z") and not self._startup.done():
            self._startup.set_result(None)
        # NoticeResponse and NegotiateProtocolVersion during startup are ignored.

    def _auth_request(self, code: int, data: bytes) -> None:
        assert self._transport is not None
        password = self._auth_password
        if code == 0:
            if self._scram is not None and not self._scram_verified:
                # Only a server that knows the password can end SCRAM with its proof.
                self._fail_startup(
                    "the server reported success before proving it knows the password "
                    "(SCRAM not completed): refusing it"
                )
            return
        if password is None:
            self._fail_startup("server asks for a password but the member's DSN has none")
            return
        if code in (3, 5):
            # Never hand a member's password (or its md5 equivalent) to whoever asks.
            kind = "in clear text" if code == 3 else "as an md5 hash"
            self._fail_startup(
                f"server asks for the password {kind}; pgshard-proxy logs in to members "
                "only with SCRAM-SHA-256 (use scram-sha-256 in the member's pg_hba.conf)"
            )
        elif code == 10:
            mechanisms = data.split(b"\0")
            if auth.SCRAM_MECHANISM.encode() not in mechanisms:
                self._fail_startup(f"unsupported SASL mechanisms {mechanisms!r}")
                return
            self._scram = auth.ScramClientExchange(self._auth_user, password)
            self._transport.write(
                messages.sasl_initial_response(auth.SCRAM_MECHANISM, self._scram.first())
            )
        elif code == 11 and self._scram is not None:
            self._transport.write(messages.sasl_response(self._scram.final(data)))
        elif code == 12 and self._scram is not None:
            try:
                self._scram.verify(data)
                self._scram_verified = True
            except auth.AuthFailed as e:
                self._fail_startup(str(e))
        else:
            self._fail_startup(f"unsupported authentication request {code}")

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=256 * 1024)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            detect_dead_peer(sock)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        self._transport = None
        if self._ssl_answer is not None and not self._ssl_answer.done():
            self._ssl_answer.set_exception(
                BackendError(f"{self.member_name}: connection closed after SSLRequest")
            )
        self._fail_startup(f"connection closed during startup ({exc or 'EOF'})")
        if self._hidden_done is not None and not self._hidden_done.done():
            self._hidden_done.set_exception(BackendError(f"{self.member_name}: connection lost"))
        if self._sink is not None:
            self._sink.backend_lost(self, exc)

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.backend_paused(True)

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.backend_paused(False)

    def data_received(self, data: bytes) -> None:
        if self._ssl_answer is not None:
            # A server answers an SSLRequest with one byte and then waits for us.
            if not self._ssl_answer.done():
                self._ssl_answer.set_result(data[:1])
            return
        # Work on the received bytes directly unless a partial message is waiting:
        # then forwarding a whole chunk costs no copy at all.
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        n = len(buf)
        pos = 0
        start = 0  # first byte not yet forwarded or dropped
        self._answer_from = 0
        sink = self._sink
        pending = self.pending
        header = codec.backend_header
        try:
            while n - pos >= 5:
                t, end = header(buf, pos)
                if end > n:
                    break
                if self._startup is not None:
                    self._startup_message(t, bytes(buf[pos + 5 : end]))
                    pos = start = end
                    continue
                if pending and pending[0] is Marker.HIDDEN_QUERY:
                    self._hidden_message(t, buf, pos, end)
                    pos = start = end
                    continue
                if not pending and not self._open and t not in _ASYNCHRONOUS:
                    self._unsolicited(t, buf, pos, end)
                    if pos > start and sink is not None:
                        sink.backend_data(self, buf[start:pos])
                    start = end
                elif t in _SPECIAL and not self._relay_special(t, buf, pos, end, pos > start):
                    # Swallowed: forward what came before it, skip it.
                    upto = pos
                    if self._drop_answer:  # a request run again elsewhere: none of it
                        self._drop_answer = False
                        upto = max(start, self._answer_from)
                    if upto > start and sink is not None:
                        sink.backend_data(self, buf[start:upto])
                        self._relayed = True
                    if self._substitute is not None:
                        if sink is not None:
                            sink.backend_data(self, self._substitute)
                        self._substitute = None
                    start = end
                pos = end
        except codec.ProtocolViolation as e:
            log.error("%s: %s; closing the connection", self.member_name, e)
            self.abort()
            return
        if pos > start and sink is not None:
            sink.backend_data(self, buf[start:pos])
            self._relayed = self._open
        if buf is data:
            if pos < n:
                self._buf += data[pos:]
        else:
            del self._buf[:pos]

    def _unsolicited(self, t: int, buf: bytes | bytearray, pos: int, end: int) -> None:
        """A message with no request outstanding: logged, never relayed (module docstring)."""
        if t == 0x45:  # 'E': typically FATAL 57P01 before the server closes the connection
            fields = parse_error_fields(bytes(buf[pos + 5 : end]))
            if _ends_session(buf, pos, end):
                self.farewell = bytes(buf[pos:end])  # the session decides (backend_lost)
            log.info(
                "%s: %s %s (SQLSTATE %s) on an idle connection",
                self.member_name, fields.get("S", "ERROR"), fields.get("M", "error"),
                fields.get("C", "?"),
            )  # fmt: skip
        else:
            log.warning("%s: unexpected message %r on an idle connection", self.member_name,
                        chr(t))  # fmt: skip

    def _relay_special(
        self, t: int, buf: bytes | bytearray, pos: int, end: int, after_others: bool
    ) -> bool:
        """Book-keeping for a message the relay looks at; False means swallow it.
        ``after_others``: messages before it in this chunk are still to be forwarded."""
        pending = self.pending
        if t == 0x5A:  # 'Z' ReadyForQuery
            self._answer_from = end
            self.tx_status = messages.TX_STATUS[buf[pos + 5]]
            hidden = bool(pending) and pending.popleft() is Marker.HIDDEN_SYNC
            if not pending:
                self._open = False
            self.batch_failed, self._failing = self._failing, False
            swallow, self._swallow_ready = self._swallow_ready or hidden, False
            if self._sink is not None:
                self._sink.backend_ready(self)
            return not swallow
        if t == 0x31:  # '1' ParseComplete
            return not (pending and pending.popleft() is Marker.HIDDEN_PARSE)
        if t == 0x33:  # '3' CloseComplete
            return not (pending and pending.popleft() is Marker.HIDDEN_CLOSE)
        if t == 0x45:  # 'E' ErrorResponse: the server now skips to the next Sync
            self._failing = True
            if _ends_session(buf, pos, end):
                self.farewell = bytes(buf[pos:end])
                self.farewell_relayed = True
            while (
                pending and pending[0] is not Marker.SYNC and pending[0] is not Marker.HIDDEN_SYNC
            ):
                pending.popleft()
            if self.epoch >= 0 and self._sink is not None:  # lent for a primary role
                return self._primary_error(buf, pos, end, after_others)
            if self._sink is not None:  # a follower
                return self._follower_error(buf, pos, end)
            return True
        if t == 0x53:  # 'S' ParameterStatus
            name, value = messages.decode_parameter_status(bytes(buf[pos + 5 : end]))
            self.params[name] = value
        return True

    def _primary_error(
        self, buf: bytes | bytearray, pos: int, end: int, after_others: bool
    ) -> bool:
        """An error on a primary connection: a read-only one goes to the sink (module
        docstring); False means it is not relayed as it is."""
        fields = parse_error_fields(bytes(buf[pos + 5 : end]))
        if fields.get("C") != READ_ONLY_SQL_TRANSACTION or self._sink is None:
            return True
        retry = (
            not (self._relayed or after_others)
            and self.tx_status is messages.TxStatus.IDLE
            and list(self.pending) == [Marker.SYNC]
        )
        instead = self._sink.backend_read_only(self, retry, bytes(buf[pos:end]))
        if instead is None:
            self._swallow_ready = True
        else:
            self._substitute = instead
        return False

    def _follower_error(self, buf: bytes | bytearray, pos: int, end: int) -> bool:
        """An error on a follower connection: one only the primary avoids goes to the sink;
        False means it is not relayed."""
        fields = parse_error_fields(bytes(buf[pos + 5 : end]))
        if fields.get("C") != FEATURE_NOT_SUPPORTED or "during recovery" not in fields.get("M", ""):
            return True
        assert self._sink is not None
        retry = self.tx_status is messages.TxStatus.IDLE and list(self.pending) == [Marker.SYNC]
        if self._sink.backend_needs_primary(self, retry):
            self._swallow_ready = True
            self._drop_answer = True  # nor what this chunk holds of its answer so far
            return False
        return True

    def _hidden_message(self, t: int, buf: bytes | bytearray, pos: int, end: int) -> None:
        if t == 0x45 and self._hidden_error is None:
            fields = parse_error_fields(bytes(buf[pos + 5 : end]))
            self._hidden_error = f"{fields.get('M', 'error')} (SQLSTATE {fields.get('C', '?')})"
        elif t == 0x53:
            name, value = messages.decode_parameter_status(bytes(buf[pos + 5 : end]))
            self.params[name] = value
        elif t == 0x5A:
            self.tx_status = messages.TX_STATUS[buf[pos + 5]]
            self.pending.popleft()
            if not self.pending:
                self._open = False
            done, self._hidden_done = self._hidden_done, None
            error, self._hidden_error = self._hidden_error, None
            if done is not None and not done.done():
                done.set_result(error)
            elif error is not None:
                log.warning("%s: replaying session settings failed: %s", self.member_name, error)

    # --- used by the session and the pool

    @property
    def idle(self) -> bool:
        """No response outstanding and not inside a transaction."""
        return not self.answering and self.tx_status is messages.TxStatus.IDLE

    @property
    def answering(self) -> bool:
        """A request was sent that the server has not finished answering (up to its Sync)."""
        return self._open or bool(self.pending)

    def attach(self, sink: Sink | None) -> None:
        self._sink = sink

    def send(self, data: bytes, marker: Marker | None = None) -> None:
        """Queue client bytes; ``marker`` when the message gets a tracked answer.

        Nothing is written until :meth:`flush`: the session flushes once per batch
        of received frames, so a Parse/Bind/Describe/Execute/Sync group costs one
        write (one TCP segment) instead of five.
        """
        if not self.answering:
            self._relayed = False  # a new request: nothing of its answer relayed yet
        if marker is not None:
            self.pending.append(marker)
        self._open = True
        self._out.append(data)

    def flush(self) -> None:
        out = self._out
        if out:
            if self._transport is not None:
                self._transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    async def run_hidden(self, sql: str, timeout: float) -> str | None:
        """Run a simple query whose response nobody sees; returns its error text, if any.

        Only when nothing is outstanding: responses arrive in order, so a hidden
        query behind client requests would hold them up until it is answered.
        """
        if self._transport is None:
            raise BackendError(f"{self.member_name}: connection closed")
        self.flush()
        self._hidden_done = asyncio.get_running_loop().create_future()
        self.pending.append(Marker.HIDDEN_QUERY)
        self._open = True
        self._transport.write(messages.query(sql))
        async with asyncio.timeout(timeout):
            return await self._hidden_done

    def pause_reading(self, paused: bool, why: str = "client") -> None:
        """Stop (or resume) reading for ``why``: the session's slow client, or a merge
        whose other shards lag; reading resumes only once no reason is left."""
        if paused:
            self._paused_for.add(why)
        else:
            self._paused_for.discard(why)
        if self._transport is None:
            return
        if self._paused_for:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    def cancel(self, timeout: float) -> Coroutine[object, object, None]:
        """Cancel what the server is running. The request travels on a connection of its
        own and is delivered as a signal, so it may land after the query ended; the
        connection is therefore never lent again (``cancelled``), or a later session's
        statement could be the one cancelled."""
        self.cancelled = True  # at once, though the request is sent by the coroutine
        return send_cancel(self.address, self.pid, self.secret, timeout)

    def close(self) -> None:
        """Terminate politely and drop the connection."""
        if self._transport is not None:
            self._transport.write(messages.terminate())
            self._transport.close()
        self.broken = True

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self.broken = True


async def send_cancel(address: str, pid: int, secret: int, timeout: float) -> None:
    """Forward a CancelRequest to the server that runs ``pid`` (new connection, no auth)."""
    host, _, port = address.rpartition(":")
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(messages.cancel_request(pid, secret))
            await writer.drain()
            writer.close()
            await writer.wait_closed()
    except (OSError, TimeoutError) as e:
        log.warning("cancel request to %s failed: %s", address, e)


KEEPALIVE_IDLE = 5
"""Seconds a server connection may be silent before the kernel probes its peer."""
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 10_000
"""Milliseconds data sent to a server may stay unacknowledged (TCP_USER_TIMEOUT)."""


def detect_dead_peer(sock: socket.socket) -> None:
    """Make the kernel drop a connection whose server host vanished (node lost, network
    cut, no FIN/RST): unacknowledged data for ``USER_TIMEOUT_MS``, or no answer to
    keepalive probes after ``KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT``
    seconds of silence. The session then sees the connection lost (08007 for a request
    in flight) instead of waiting forever."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
    ):
        option = getattr(socket, name, None)  # Linux names; absent elsewhere
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
