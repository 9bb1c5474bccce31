"""One raw protocol connection from the proxy to a PostgreSQL server.

Owned by a :class:`.pool.Pool` and lent to one client
session at a time. :meth:`BackendConnection.connect` performs the startup and
authentication (SCRAM via ``scramp``, md5, cleartext, trust) with the member's
credentials; afterwards the connection relays: the session writes client
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
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import logging
import struct
import urllib.parse
from typing import Protocol, cast

from ..protocol import auth, codec, messages
from ..protocol.sqlstate import parse_error_fields

log = logging.getLogger(__name__)

_INT32 = struct.Struct("!I")


class BackendError(Exception):
    """The server could not be reached or refused us (message names the member)."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    """How the proxy logs in to a member: from the member's DSN in the topology."""

    user: str
    password: str | None

    @classmethod
    def from_dsn(cls, dsn: str) -> Credentials:
        url = urllib.parse.urlsplit(dsn)
        return cls(
            user=urllib.parse.unquote(url.username or "postgres"),
            password=urllib.parse.unquote(url.password) if url.password else None,
        )


class Sink(Protocol):
    """The session side of a lent connection."""

    def backend_data(self, backend: BackendConnection, data: bytes | bytearray) -> None: ...
    def backend_ready(self, backend: BackendConnection) -> None: ...
    def backend_lost(self, backend: BackendConnection, exc: Exception | None) -> None: ...
    def backend_paused(self, paused: bool) -> None: ...


class Marker(enum.IntEnum):
    """What a request sent to the server will be answered with."""

    PARSE = 1  # ParseComplete for the client
    HIDDEN_PARSE = 2  # ParseComplete to swallow
    CLOSE = 3  # CloseComplete for the client
    HIDDEN_CLOSE = 4  # CloseComplete to swallow
    SYNC = 5  # a ReadyForQuery for the client (Sync, Query, FunctionCall)
    HIDDEN_QUERY = 6  # a whole simple-query response to swallow


# Server message types the relay must look at; everything else is forwarded blindly.
_SPECIAL = frozenset(b"Z123ESA")
# Asynchronous server messages a client accepts even with no request outstanding.
_ASYNCHRONOUS = frozenset(b"SNA")


class BackendConnection(asyncio.Protocol):
    """A server connection. Not thread-safe; lives on the loop that made it."""

    def __init__(self, member_name: str, address: str, database: str) -> None:
        self.member_name = member_name
        self.address = address
        self.database = database
        self.params: dict[str, str] = {}
        """ParameterStatus values as the server last reported them."""
        self.pid = 0
        self.secret = 0
        self.tx_status = messages.TxStatus.IDLE
        self.statements: dict[str, int] = {}
        """Prepared statements on this server: client name -> the session's version of it."""
        self.settings_applied = 0
        """How many entries of the session's SET log this server has executed."""
        self.broken = False
        self.epoch = -1
        """Shard epoch this connection was lent for as a primary (-1: as a follower)."""
        self.pending: collections.deque[Marker] = collections.deque()
        self._open = False
        """Something was sent since the ReadyForQuery that answered everything before it.

        Not the same as ``pending``: Bind, Describe, Execute and Flush have no
        marker, yet their answers (asyncpg's Parse/Describe/Flush) are expected."""
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._sink: Sink | None = None
        self._startup: asyncio.Future[None] | None = None
        self._hidden_error: str | None = None
        self._hidden_done: asyncio.Future[str | None] | None = None
        self._auth_user = ""
        self._auth_password: str | None = None
        self._scram: auth.ScramClientExchange | None = None

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
                await conn._login(credentials, application_name)
        except (OSError, TimeoutError) as e:
            raise BackendError(f"cannot connect to {member_name} ({address}): {e}") from None
        return conn

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
            return
        if password is None:
            self._fail_startup("server asks for a password but the member's DSN has none")
            return
        if code == 3:
            self._transport.write(messages.password(password))
        elif code == 5:
            self._transport.write(
                messages.password(auth.md5_password(self._auth_user, password, data[:4]))
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
            except auth.AuthFailed as e:
                self._fail_startup(str(e))
        else:
            self._fail_startup(f"unsupported authentication request {code}")

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=256 * 1024)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        self._transport = None
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
                elif t in _SPECIAL and not self._relay_special(t, buf, pos, end):
                    # Swallowed: forward what came before it, skip it.
                    if pos > start and sink is not None:
                        sink.backend_data(self, buf[start:pos])
                    start = end
                pos = end
        except codec.ProtocolViolation as e:
            log.error("%s: %s; closing the connection", self.member_name, e)
            self.abort()
            return
        if pos > start and sink is not None:
            sink.backend_data(self, buf[start:pos])
        if buf is data:
            if pos < n:
                self._buf += data[pos:]
        else:
            del self._buf[:pos]

    def _unsolicited(self, t: int, buf: bytes | bytearray, pos: int, end: int) -> None:
        """A message with no request outstanding: logged, never relayed (module docstring)."""
        if t == 0x45:  # 'E': typically FATAL 57P01 before the server closes the connection
            fields = parse_error_fields(bytes(buf[pos + 5 : end]))
            log.info(
                "%s: %s %s (SQLSTATE %s) on an idle connection",
                self.member_name, fields.get("S", "ERROR"), fields.get("M", "error"),
                fields.get("C", "?"),
            )  # fmt: skip
        else:
            log.warning("%s: unexpected message %r on an idle connection", self.member_name,
                        chr(t))  # fmt: skip

    def _relay_special(self, t: int, buf: bytes | bytearray, pos: int, end: int) -> bool:
        """Book-keeping for a message the relay looks at; False means swallow it."""
        pending = self.pending
        if t == 0x5A:  # 'Z' ReadyForQuery
            self.tx_status = messages.TxStatus(buf[pos + 5])
            if pending:
                pending.popleft()
            if not pending:
                self._open = False
            if self._sink is not None:
                self._sink.backend_ready(self)
            return True
        if t == 0x31:  # '1' ParseComplete
            return not (pending and pending.popleft() is Marker.HIDDEN_PARSE)
        if t == 0x33:  # '3' CloseComplete
            return not (pending and pending.popleft() is Marker.HIDDEN_CLOSE)
        if t == 0x45:  # 'E' ErrorResponse: the server now skips to the next Sync
            while pending and pending[0] is not Marker.SYNC:
                pending.popleft()
            return True
        if t == 0x53:  # 'S' ParameterStatus
            name, value = messages.decode_parameter_status(bytes(buf[pos + 5 : end]))
            self.params[name] = value
        return True

    def _hidden_message(self, t: int, buf: bytes | bytearray, pos: int, end: int) -> None:
        if t == 0x45 and self._hidden_error is None:
            fields = parse_error_fields(bytes(buf[pos + 5 : end]))
            self._hidden_error = f"{fields.get('M', 'error')} (SQLSTATE {fields.get('C', '?')})"
        elif t == 0x53:
            name, value = messages.decode_parameter_status(bytes(buf[pos + 5 : end]))
            self.params[name] = value
        elif t == 0x5A:
            self.tx_status = messages.TxStatus(buf[pos + 5])
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

    def pause_reading(self, paused: bool) -> None:
        if self._transport is None:
            return
        if paused:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

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
