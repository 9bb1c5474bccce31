"""Malformed input closes only the offending connection; the proxy and others carry on."""

from __future__ import annotations

import socket
import struct

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgshard_proxy.protocol import messages
from tests.support.proxy import ProxyProc

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""


def _exchange(p: ProxyProc, data: bytes) -> bytes:
    """Send ``data``, return what the proxy answers until it closes or goes quiet."""
    with socket.create_connection((p.host, p.port), timeout=5) as s:
        s.settimeout(2)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            return b""
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def _startup_then(p: ProxyProc, tail: bytes) -> bytes:
    return messages.startup_message({"user": p.user, "database": "postgres"}) + tail


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (struct.pack("!I", 1 << 30), b"08P01"),  # absurd startup length
        (struct.pack("!I", 50_000) + b"\0" * 50_000, b"08P01"),  # startup packet too large
        (struct.pack("!II", 8, 9 << 16), b"0A000"),  # unknown protocol version
        (b"p\0\0\0\3", b"08P01"),  # password message with a length below 4
    ],
)
def test_bad_startup_gets_a_protocol_error(
    module_proxy: ProxyProc, data: bytes, expected: bytes
) -> None:
    if data.startswith(b"p"):
        data = _startup_then(module_proxy, data)
    assert expected in _exchange(module_proxy, data)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.binary(min_size=1, max_size=200), st.booleans())
def test_fuzzed_bytes_never_hurt_the_proxy(
    module_proxy: ProxyProc, junk: bytes, after: bool
) -> None:
    data = _startup_then(module_proxy, junk) if after else junk
    _exchange(module_proxy, data)
    assert module_proxy.proc.poll() is None


def test_other_sessions_are_unaffected(module_proxy: ProxyProc) -> None:
    with psycopg.connect(module_proxy.dsn, autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        for junk in (b"\xff" * 64, struct.pack("!I", 0x7FFFFFFF), b"Q\x7f\xff\xff\xff"):
            _exchange(module_proxy, junk)
        assert conn.execute("select 2").fetchone() == (2,)
    assert module_proxy.proc.poll() is None
    assert "Traceback" not in module_proxy.log_text()
