"""The request loop's pure parts: a batch classified once, and who answers a request."""

from __future__ import annotations

import struct

import pytest

from pgshard_proxy.protocol import codec
from pgshard_proxy.routing import dispatch
from pgshard_proxy.routing.classify import Classified, Kind, classify
from pgshard_proxy.server.session import requests


def _frame(t: bytes, body: bytes) -> codec.Frame:
    return codec.Frame(t[0], t + struct.pack("!I", len(body) + 4) + body)


def _parse(sql: str, name: str = "") -> codec.Frame:
    return _frame(b"P", name.encode() + b"\0" + sql.encode() + b"\0\0\0")


def _bind(statement: str, portal: str = "") -> codec.Frame:
    return _frame(b"B", portal.encode() + b"\0" + statement.encode() + b"\0" + b"\0" * 6)


SYNC = _frame(b"S", b"")
EXECUTE = _frame(b"E", b"\0\0\0\0\0")


def _nothing(name: str) -> Classified | None:
    return None


def test_a_write_anywhere_before_the_sync_makes_the_batch_a_write() -> None:
    frames = [_parse("SELECT 1"), _bind(""), EXECUTE, _parse("UPDATE t SET a = 1"), SYNC]
    assert requests.batch_class(frames, _nothing).kind is Kind.WRITE


def test_what_follows_the_sync_is_another_request() -> None:
    frames = [_parse("SELECT 1"), SYNC, _parse("UPDATE t SET a = 1"), SYNC]
    assert requests.batch_class(frames, _nothing).kind is Kind.READ


def test_a_bind_of_a_prepared_write_counts_as_the_write() -> None:
    prepared = {"w": classify("DELETE FROM t")}
    frames = [_bind("w"), EXECUTE, SYNC]
    assert requests.batch_class(frames, prepared.get).kind is Kind.WRITE


def test_a_batch_of_only_execute_and_sync_may_go_anywhere() -> None:
    assert requests.batch_class([EXECUTE, SYNC], _nothing) is requests.SYNC_ONLY


def test_show_pgshard_first_is_answered_by_the_proxy_later_by_the_server() -> None:
    show = requests.batch_class([_parse("SHOW pgshard.consistency"), SYNC], _nothing)
    assert dispatch.extended(show) is dispatch.Dispatch.PROXY
    later = [_parse("SELECT 1"), _parse("SHOW pgshard.consistency"), SYNC]
    assert dispatch.extended(requests.batch_class(later, _nothing)) is dispatch.Dispatch.SERVERS


def test_refusals_and_proxy_settings_never_reach_a_server_in_a_simple_query() -> None:
    assert dispatch.simple(classify("SET pgshard.consistency = strong")) is dispatch.Dispatch.PROXY
    assert dispatch.simple(classify("SET pgshard.nonsense = 1")) is dispatch.Dispatch.REFUSE
    assert dispatch.simple(classify("SELECT 1")) is dispatch.Dispatch.SERVERS
    # In the extended protocol a SET pgshard.* also runs on the server (a placeholder there).
    assert dispatch.extended(classify("SET pgshard.consistency = strong")) is (
        dispatch.Dispatch.SERVERS
    )


FLUSH = _frame(b"H", b"")


def test_a_batch_is_classified_only_once_its_sync_or_flush_came() -> None:
    assert requests.batch_class([_parse("SELECT 1"), _bind(""), EXECUTE], _nothing) is None
    read = requests.batch_class([_parse("SELECT 1"), FLUSH], _nothing)
    assert read is not None and read.kind is Kind.READ


def test_a_long_batch_without_sync_goes_where_anything_may_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(requests, "INCOMPLETE_BATCH_BYTES", 100)
    assert requests.batch_class([_parse("SELECT 1")], _nothing) is None
    big = _parse("SELECT '" + "x" * 100 + "'")
    assert requests.batch_class([big], _nothing) is requests.LONG_BATCH
