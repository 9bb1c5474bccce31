"""Framing of the client byte stream: startup packets, regular frames, violations, fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgshard_proxy.protocol import codec, messages


def _frame(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def test_startup_round_trip_in_small_pieces() -> None:
    packet = messages.startup_message({"user": "alice", "database": "app", "options": "-c x=1"})
    dec = codec.FrontendDecoder()
    for i in range(len(packet) - 1):
        dec.feed(packet[i : i + 1])
        assert dec.next_initial() is None
    dec.feed(packet[-1:])
    got = dec.next_initial()
    assert isinstance(got, messages.Startup)
    assert got.user == "alice" and got.database == "app" and got.params["options"] == "-c x=1"


def test_database_defaults_to_user() -> None:
    got = codec.decode_initial(messages.startup_message({"user": "bob"}))
    assert isinstance(got, messages.Startup) and got.database == "bob"


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (messages.ssl_request(), messages.SSLRequest()),
        (struct.pack("!II", 8, messages.GSSENC_REQUEST_CODE), messages.GSSENCRequest()),
        (messages.cancel_request(42, 7), messages.CancelRequest(pid=42, secret=7)),
    ],
)
def test_special_requests(packet: bytes, expected: object) -> None:
    assert codec.decode_initial(packet) == expected


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (struct.pack("!I", 3), "invalid length of startup packet"),
        (struct.pack("!I", 20_000) + b"\0" * 4, "invalid length of startup packet"),
        (struct.pack("!II", 8, 2 << 16), "unsupported frontend protocol 2.0"),
        (struct.pack("!II", 13, messages.PROTOCOL_V3) + b"a\0b\0\0", "no PostgreSQL user name"),
        (struct.pack("!II", 12, messages.PROTOCOL_V3) + b"user", "terminating NUL"),
    ],
)
def test_bad_startup_packets(packet: bytes, message: str) -> None:
    dec = codec.FrontendDecoder()
    dec.feed(packet)
    with pytest.raises(codec.ProtocolViolation, match=message):
        dec.next_initial()


def test_frames_split_across_feeds() -> None:
    q = _frame(b"Q", b"select 1\0")
    s = _frame(b"S", b"")
    stream = q + s + q
    dec = codec.FrontendDecoder()
    dec.expect_initial = False
    got: list[codec.Frame] = []
    for i in range(0, len(stream), 3):
        dec.feed(stream[i : i + 3])
        got += dec.frames()
    assert [chr(f.type) for f in got] == ["Q", "S", "Q"]
    assert got[0].data == q and messages.query_sql(got[0].body) == "select 1"
    assert dec.pending == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"Z\0\0\0\4", "invalid frontend message type"),
        (b"Q\0\0\0\3", "invalid message length 3"),
        (b"S\x00\x01\x00\x00", "exceeds the limit of 10000"),
        (b"Q\x7f\xff\xff\xff", "exceeds the limit"),
    ],
)
def test_frame_violations(data: bytes, message: str) -> None:
    dec = codec.FrontendDecoder()
    dec.feed(data)
    with pytest.raises(codec.ProtocolViolation, match=message):
        dec.frames()


def test_configured_message_limit() -> None:
    dec = codec.FrontendDecoder(max_message=100)
    dec.feed(_frame(b"Q", b"x" * 200))
    with pytest.raises(codec.ProtocolViolation, match="exceeds the limit of 100"):
        dec.frames()


def test_decoders_of_extended_messages() -> None:
    assert messages.parse_fields(b"s1\0select $1\0\0\0") == ("s1", "select $1")
    assert messages.bind_names(b"p\0s1\0\0\0\0\0\0\0") == ("p", "s1")
    assert messages.target(b"Sst\0") == (ord("S"), "st")
    with pytest.raises(messages.MalformedMessage):
        messages.parse_fields(b"no-terminator")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_fuzz_random_bytes_never_crash(data: bytes, chunk: int) -> None:
    """Whatever arrives, the decoder returns packets/frames or raises ProtocolViolation."""
    dec = codec.FrontendDecoder(max_message=1 << 16)
    try:
        for i in range(0, len(data), chunk):
            dec.feed(data[i : i + chunk])
            if dec.expect_initial and dec.next_initial() is not None:
                dec.expect_initial = False
            if not dec.expect_initial:
                for f in dec.frames():
                    assert len(f.data) >= 5
    except codec.ProtocolViolation:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(b"QPBEDCSH"), st.binary(max_size=60)), max_size=12))
def test_fuzz_valid_frames_round_trip(items: list[tuple[int, bytes]]) -> None:
    stream = b"".join(_frame(bytes((t,)), body) for t, body in items)
    dec = codec.FrontendDecoder()
    dec.expect_initial = False
    dec.feed(stream)
    frames = dec.frames()
    assert [(f.type, f.body) for f in frames] == items
    assert b"".join(f.data for f in frames) == stream


def test_before_authentication_only_small_password_messages_are_read() -> None:
    d = codec.FrontendDecoder()
    d.expect_initial = False
    d.feed(b"Q" + struct.pack("!I", 1 << 29))  # only the header: refused before any body
    with pytest.raises(codec.ProtocolViolation, match="expected a password response"):
        d.auth_frame()
    d = codec.FrontendDecoder()
    d.feed(b"p" + struct.pack("!I", 70_000))
    with pytest.raises(codec.ProtocolViolation, match="exceeds the limit of 65535"):
        d.auth_frame()
    d = codec.FrontendDecoder()
    first, then = b"p\0\0\0\x08abcd", b"Q\0\0\0\x0dselect 1\0"
    d.feed(first + then)
    assert d.auth_frame() == codec.Frame(ord("p"), first)  # one at a time:
    assert [f.data for f in d.frames()] == [then]  # the rest is read once authenticated
