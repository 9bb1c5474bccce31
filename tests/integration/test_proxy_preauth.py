"""Before a client has authenticated it costs the proxy little and not for long.

PostgreSQL's own bounds: a startup packet of at most 10,000 bytes, password messages of
at most 65,535, nothing else accepted before authentication, and
``authentication_timeout`` (60 s) to finish logging in. Connections still logging in
are counted apart from ``max_clients``, so idle connects cannot lock real clients out.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgshard_proxy.protocol import messages
from tests.support import pgserver
from tests.support import proxy as proxy_support

pytestmark = [pytest.mark.integration, pytest.mark.pool_modes]


@pytest.fixture(scope="module")
def strict_proxy(
    pg_module_server: pgserver.PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[proxy_support.ProxyProc]:
    d: Path = tmp_path_factory.mktemp("preauth")
    config = d / "proxy.yaml"
    config.write_text("authentication_timeout: 1\nmax_clients: 5\nmax_pending_logins: 5\n")
    server = pg_module_server
    topo = proxy_support.single_primary_topology("pg-0", server.host, server.port, server.dsn)
    p = proxy_support.start_proxy(d, topo, "--config", str(config))
    try:
        yield p
    finally:
        p.stop()


def _read_until_closed(s: socket.socket, limit: float) -> tuple[bytes, float]:
    """What the proxy sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    s.settimeout(limit)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {limit} s; got {out[:200]!r}") from None
    except ConnectionResetError:
        pass
    return out, time.monotonic() - start


def _startup(p: proxy_support.ProxyProc) -> bytes:
    return messages.startup_message({"user": p.user, "database": "postgres"})


@pytest.mark.parametrize("kind", [b"Q", b"P", b"d", b"B"])
def test_a_large_message_before_authentication_is_refused_at_its_header(
    strict_proxy: proxy_support.ProxyProc, kind: bytes
) -> None:
    with socket.create_connection((strict_proxy.host, strict_proxy.port), timeout=5) as s:
        s.sendall(_startup(strict_proxy) + kind + struct.pack("!I", 500_000_000) + b"x" * 65536)
        out, _ = _read_until_closed(s, 5)
    assert b"08P01" in out
    assert b"expected a password response" in out


def test_an_oversized_password_message_is_refused(strict_proxy: proxy_support.ProxyProc) -> None:
    with socket.create_connection((strict_proxy.host, strict_proxy.port), timeout=5) as s:
        s.sendall(_startup(strict_proxy) + b"p" + struct.pack("!I", 70_000) + b"x" * 1000)
        out, _ = _read_until_closed(s, 5)
    assert b"08P01" in out


@pytest.mark.parametrize("send_startup", [False, True], ids=["silent", "no-password"])
def test_a_login_that_does_not_finish_is_closed_after_authentication_timeout(
    strict_proxy: proxy_support.ProxyProc, send_startup: bool
) -> None:
    with socket.create_connection((strict_proxy.host, strict_proxy.port), timeout=5) as s:
        if send_startup:
            s.sendall(_startup(strict_proxy))
        out, took = _read_until_closed(s, 10)
    assert 0.5 < took < 5, took
    if send_startup:
        assert b"canceling authentication due to timeout" in out


def test_idle_connects_do_not_lock_out_real_clients(strict_proxy: proxy_support.ProxyProc) -> None:
    idle = [
        socket.create_connection((strict_proxy.host, strict_proxy.port), timeout=5)
        for _ in range(20)  # four times max_clients and max_pending_logins
    ]
    try:
        with psycopg.connect(strict_proxy.dsn, autocommit=True, connect_timeout=5) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        for s in idle:
            s.close()
    assert strict_proxy.proc.poll() is None
