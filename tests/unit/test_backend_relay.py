"""The relay's bookkeeping: answers to injected requests are swallowed, order is kept.

Feeds server bytes into a :class:`BackendConnection` (no socket) with a
recording sink, as PostgreSQL would answer a mix of client and hidden requests.
"""

from __future__ import annotations

import struct

from pgshard_proxy.pool.backend import BackendConnection, Marker


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


PARSE_COMPLETE = msg(b"1")
BIND_COMPLETE = msg(b"2")
CLOSE_COMPLETE = msg(b"3")
ROW = msg(b"D", b"\0\1\0\0\0\1x")
DONE = msg(b"C", b"SELECT 1\0")
ERROR = msg(b"E", b"SERROR\0C42P01\0Mno such table\0\0")
READY_IDLE = msg(b"Z", b"I")
READY_IN_TX = msg(b"Z", b"T")


class Sink:
    def __init__(self) -> None:
        self.data = b""
        self.ready = 0

    def backend_data(self, backend: BackendConnection, data: bytes | bytearray) -> None:
        self.data += bytes(data)

    def backend_ready(self, backend: BackendConnection) -> None:
        self.ready += 1

    def backend_lost(self, backend: BackendConnection, exc: Exception | None) -> None:
        raise AssertionError("not expected")

    def backend_paused(self, paused: bool) -> None:
        pass


def relay(markers: list[Marker], answer: bytes, chunk: int = 0) -> tuple[BackendConnection, Sink]:
    b = BackendConnection("m", "127.0.0.1:1", "db")
    sink = Sink()
    b.attach(sink)
    for m in markers:
        b.send(b"", m)
    step = chunk or len(answer)
    for i in range(0, len(answer), step):
        b.data_received(answer[i : i + step])
    return b, sink


async def test_hidden_parse_and_close_are_swallowed_in_any_chunking() -> None:
    # hidden Close + hidden Parse, then the client's Bind/Execute/Sync
    answer = CLOSE_COMPLETE + PARSE_COMPLETE + BIND_COMPLETE + ROW + DONE + READY_IDLE
    for chunk in (0, 1, 3, 7):
        b, sink = relay([Marker.HIDDEN_CLOSE, Marker.HIDDEN_PARSE, Marker.SYNC], answer, chunk)
        assert sink.data == BIND_COMPLETE + ROW + DONE + READY_IDLE
        assert sink.ready == 1 and not b.pending and b.idle


async def test_client_parse_before_hidden_parse_keeps_its_answer() -> None:
    answer = PARSE_COMPLETE + PARSE_COMPLETE + BIND_COMPLETE + READY_IDLE
    _, sink = relay([Marker.PARSE, Marker.HIDDEN_PARSE, Marker.SYNC], answer)
    assert sink.data == PARSE_COMPLETE + BIND_COMPLETE + READY_IDLE


async def test_error_skips_the_rest_of_the_batch_but_not_the_next() -> None:
    # batch 1: hidden Parse fails -> the server skips to Sync; batch 2: client Parse works
    answer = ERROR + READY_IDLE + PARSE_COMPLETE + READY_IDLE
    b, sink = relay(
        [Marker.HIDDEN_PARSE, Marker.PARSE, Marker.SYNC, Marker.PARSE, Marker.SYNC], answer
    )
    assert sink.data == ERROR + READY_IDLE + PARSE_COMPLETE + READY_IDLE
    assert not b.pending


async def test_hidden_query_answer_is_swallowed_whole_and_tracks_settings() -> None:
    status = msg(b"S", b"application_name\0probe\0")
    answer = status + msg(b"C", b"SET\0") + READY_IDLE + DONE + READY_IN_TX
    b, sink = relay([Marker.HIDDEN_QUERY, Marker.SYNC], answer, 4)
    assert sink.data == DONE + READY_IN_TX
    assert b.params["application_name"] == "probe"
    assert not b.idle  # inside the client's transaction now


FATAL = msg(b"E", b"SFATAL\0C57P01\0Mterminating connection due to administrator command\0\0")
NOTICE = msg(b"N", b"SNOTICE\0C00000\0Mhello\0\0")


async def test_fatal_on_an_idle_connection_never_reaches_the_client() -> None:
    # A server shutting down tells its idle connections; a client with nothing
    # outstanding (asyncpg) would fail its next request on an unexpected message.
    status = msg(b"S", b"TimeZone\0UTC\0")
    b, sink = relay([Marker.SYNC], DONE + READY_IDLE + NOTICE + FATAL + status + READY_IDLE)
    assert sink.data == DONE + READY_IDLE + NOTICE + status
    assert sink.ready == 1 and not b.answering


async def test_answers_without_markers_reach_the_client_until_ready() -> None:
    # asyncpg prepares with Parse/Describe/Flush: only the Parse has a marker, yet
    # ParameterDescription, RowDescription and a later error belong to the client.
    describe = msg(b"t", b"\0\0") + msg(b"T", b"\0\0")
    b, sink = relay([Marker.PARSE], PARSE_COMPLETE + describe)
    assert sink.data == PARSE_COMPLETE + describe
    assert b.answering and not b.idle
    b.send(b"")  # Bind, Execute (no marker)
    b.send(b"", Marker.SYNC)
    b.data_received(ERROR + READY_IDLE + FATAL)
    assert sink.data == PARSE_COMPLETE + describe + ERROR + READY_IDLE
    assert not b.answering and b.idle
