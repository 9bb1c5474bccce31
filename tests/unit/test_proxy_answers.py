"""SHOW pgshard.* answered by the proxy in the extended protocol (server/proxy_answers.py)."""

from __future__ import annotations

import struct

from pgshard_proxy.protocol import codec, messages
from pgshard_proxy.routing.classify import Classified, classify
from pgshard_proxy.server.session.proxy_answers import Mixed, Parsed, ProxyPortals


def _frame(t: bytes, body: bytes) -> codec.Frame:
    return codec.Frame(t[0], t + struct.pack("!I", len(body) + 4) + body)


def _bind(portal: str, statement: str, result_format: int | None) -> codec.Frame:
    formats = b"\0\0" if result_format is None else struct.pack("!hh", 1, result_format)
    return _frame(b"B", f"{portal}\0{statement}\0".encode() + b"\0\0\0\0" + formats)


def test_a_prepared_show_is_answered_like_the_simple_protocol() -> None:
    portals = ProxyPortals()
    statements: dict[str, Classified] = {}
    parsed = portals.answer(
        _frame(b"P", b"s1\0SHOW pgshard.consistency\0\0\0"), statements.get, str.upper
    )
    assert isinstance(parsed, Parsed) and parsed.answer == messages.parse_complete()
    statements[parsed.name] = parsed.classified
    describe = portals.answer(_frame(b"D", b"Ss1\0"), statements.get, str.upper)
    assert describe == messages.no_parameters() + messages.text_row_description(
        "pgshard.consistency"
    )
    assert portals.answer(_bind("", "s1", 1), statements.get, str.upper) == (
        messages.bind_complete()
    )
    assert portals.answer(_frame(b"D", b"P\0"), statements.get, str.upper) == (
        messages.text_row_description("pgshard.consistency", 1)
    )
    simple = messages.text_result("pgshard.consistency", "CONSISTENCY", "SHOW")
    execute = portals.answer(_frame(b"E", b"\0\0\0\0\0"), statements.get, str.upper)
    assert isinstance(execute, bytes) and simple.endswith(execute)
    assert portals.answer(_frame(b"H", b""), statements.get, str.upper) == b""
    portals.transaction_ended()
    assert isinstance(portals.answer(_frame(b"E", b"\0\0\0\0\0"), statements.get, str.upper), Mixed)


def test_other_statements_in_the_same_batch_are_refused() -> None:
    portals = ProxyPortals()
    statements = {"other": classify("select 1")}
    for frame in (
        _frame(b"P", b"\0select 1\0\0\0"),
        _bind("", "other", None),
        _frame(b"D", b"Sother\0"),
        _frame(b"E", b"p\0\0\0\0\0"),
    ):
        out = portals.answer(frame, statements.get, str)
        assert isinstance(out, Mixed) and "send a Sync between them" in out.message


def test_bind_result_format() -> None:
    assert messages.bind_result_format(_bind("", "s", None).data[5:]) == 0
    assert messages.bind_result_format(_bind("", "s", 1).data[5:]) == 1
    with_param = b"p\0s\0" + struct.pack("!hh", 1, 0) + struct.pack("!hi", 1, 2) + b"ab"
    assert messages.bind_result_format(with_param + struct.pack("!hh", 1, 1)) == 1
