"""Framing of the PostgreSQL v3 byte stream: bytes in, whole messages out.

The first packet a client sends has no type byte (StartupMessage, SSLRequest,
GSSENCRequest, CancelRequest: ``int32 length, int32 code, …``); every later
message is ``byte type, int32 length, body``. :class:`FrontendDecoder` handles
both and raises :class:`ProtocolViolation` on anything PostgreSQL itself would
refuse: a length below 4, a length beyond the limits below, an unknown message
type, an oversized or malformed startup packet.

Frames are returned as the message's own bytes (header included) so the session
can forward them unchanged; only the few messages the proxy must understand are
decoded further (see :mod:`.messages`). Used by ``server.session.client`` (client side)
and ``server.backend`` (which scans backend headers with :func:`backend_header`).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from . import messages
from .sqlstate import SqlState

MAX_STARTUP_PACKET = 10_000
"""PostgreSQL's MAX_STARTUP_PACKET_LENGTH: larger startup packets are refused."""

SMALL_MESSAGE_LIMIT = 10_000
"""PQ_SMALL_MESSAGE_LIMIT: messages that carry no user data never exceed this."""

DEFAULT_MAX_MESSAGE = (1 << 30) - 1
"""PQ_LARGE_MESSAGE_LIMIT (MaxAllocSize - 1): the largest Query/Bind/CopyData."""

MAX_AUTH_MESSAGE = 65_535
"""PG_MAX_AUTH_TOKEN_LENGTH: password and SASL messages."""

# Frontend message types after startup, with PostgreSQL's per-type size class.
_SMALL_TYPES = frozenset(b"SHXCDEcf")
_LARGE_TYPES = frozenset(b"QPBFd")
_AUTH_TYPES = frozenset(b"p")
FRONTEND_TYPES = _SMALL_TYPES | _LARGE_TYPES | _AUTH_TYPES

_HEADER = struct.Struct("!cI")
_INT32 = struct.Struct("!I")
_STARTUP_HEADER = struct.Struct("!II")


class ProtocolViolation(Exception):
    """Input that is not valid protocol: the connection is closed with ``sqlstate``."""

    def __init__(self, message: str, sqlstate: SqlState = SqlState.PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class Frame(NamedTuple):
    """One whole message: its type byte (an int) and its bytes, header included."""

    type: int
    data: bytes

    @property
    def body(self) -> bytes:
        return self.data[5:]


InitialPacket = (
    messages.Startup | messages.SSLRequest | messages.GSSENCRequest | messages.CancelRequest
)


def decode_initial(packet: bytes) -> InitialPacket:
    """Decode a whole type-less packet (length word included)."""
    if len(packet) < 8:
        raise ProtocolViolation(f"startup packet too short ({len(packet)} bytes)")
    length, code = _STARTUP_HEADER.unpack_from(packet)
    if length != len(packet):
        raise ProtocolViolation("startup packet length does not match its contents")
    if code == messages.SSL_REQUEST_CODE and length == 8:
        return messages.SSLRequest()
    if code == messages.GSSENC_REQUEST_CODE and length == 8:
        return messages.GSSENCRequest()
    if code == messages.CANCEL_REQUEST_CODE and length == 16:
        pid, secret = struct.unpack_from("!II", packet, 8)
        return messages.CancelRequest(pid=pid, secret=secret)
    major = code >> 16
    if major != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {major}.{code & 0xFFFF}: server supports 3.0 to 3.0",
            SqlState.FEATURE_NOT_SUPPORTED,
        )
    try:
        return messages.decode_startup(packet[8:], version=code)
    except messages.MalformedMessage as e:
        raise ProtocolViolation(str(e)) from None


class FrontendDecoder:
    """Split what a client sends into packets and frames.

    ``expect_initial`` is true while the next packet is a type-less one (at the
    start, and again after answering SSLRequest/GSSENCRequest); the session flips
    it off once the StartupMessage is read. ``max_message`` bounds Query, Bind,
    Parse, FunctionCall and CopyData messages.
    """

    __slots__ = ("_buf", "expect_initial", "max_message")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self.expect_initial = True
        self.max_message = max_message

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a whole packet or frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_initial(self) -> InitialPacket | None:
        """The next type-less packet, or None if it is not complete yet."""
        buf = self._buf
        if len(buf) < 4:
            return None
        (length,) = _INT32.unpack_from(buf)
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolViolation(f"invalid length of startup packet: {length}")
        if len(buf) < length:
            return None
        packet = bytes(buf[:length])
        del buf[:length]
        return decode_initial(packet)

    def auth_frame(self) -> Frame | None:
        """The next password message, or None if it is not complete yet.

        Before authentication only password messages (``p``, at most
        ``MAX_AUTH_MESSAGE`` bytes) are accepted, and anything else is refused at its
        header, as PostgreSQL does: an unauthenticated client cannot make the proxy
        buffer a large message. One frame at a time: what follows the last password
        message is read by :meth:`frames` once the session is authenticated."""
        buf = self._buf
        if len(buf) < 5:
            return None
        t = buf[0]
        (length,) = _INT32.unpack_from(buf, 1)
        if t not in _AUTH_TYPES:
            raise ProtocolViolation(f"expected a password response, got message type {chr(t)!r}")
        check_frontend(t, length)
        if len(buf) < 1 + length:
            return None
        frame = Frame(t, bytes(buf[: 1 + length]))
        del buf[: 1 + length]
        return frame

    def frames(self) -> list[Frame]:
        """Every complete regular frame received so far (possibly none)."""
        buf = self._buf
        n = len(buf)
        pos = 0
        out: list[Frame] = []
        while n - pos >= 5:
            t = buf[pos]
            (length,) = _INT32.unpack_from(buf, pos + 1)
            check_frontend(t, length, self.max_message)
            end = pos + 1 + length
            if end > n:
                break
            out.append(Frame(t, bytes(buf[pos:end])))
            pos = end
        if pos:
            del buf[:pos]
        return out


def check_frontend(type_: int, length: int, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
    """Raise :class:`ProtocolViolation` unless this header could start a valid message."""
    if type_ in _LARGE_TYPES:
        limit = max_message
    elif type_ in _SMALL_TYPES:
        limit = SMALL_MESSAGE_LIMIT
    elif type_ in _AUTH_TYPES:
        limit = MAX_AUTH_MESSAGE
    else:
        raise ProtocolViolation(f"invalid frontend message type {type_} ({chr(type_)!r})")
    if length < 4:
        raise ProtocolViolation(f"invalid message length {length} for message {chr(type_)!r}")
    if length > limit:
        raise ProtocolViolation(
            f"message {chr(type_)!r} of {length} bytes exceeds the limit of {limit} bytes"
        )


def backend_header(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """``(type, end)`` of the backend message starting at ``pos`` (end may exceed the buffer).

    PostgreSQL is trusted to frame correctly, but a length below 4 would make the
    scanner loop forever, so it is refused here.
    """
    t, length = _HEADER.unpack_from(buf, pos)
    if length < 4:
        raise ProtocolViolation(f"server sent a message with invalid length {length}")
    return t[0], pos + 1 + length
