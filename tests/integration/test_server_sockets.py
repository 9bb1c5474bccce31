"""The proxy's connections to servers notice a vanished host (no FIN, no RST).

A member whose node is lost or whose network is cut keeps its sockets "open": without
keepalive and TCP_USER_TIMEOUT a request in flight to it waits for ever (seen in pod
deletion failovers). Checked here on real connections to a real server; the kernel does
the rest.
"""

from __future__ import annotations

import socket

import pytest

from pgshard_proxy.pool import backend
from tests.support import pgserver

pytestmark = pytest.mark.integration


async def test_server_connections_detect_a_dead_peer(pg_server: pgserver.PgServer) -> None:
    conn = await backend.BackendConnection.connect(
        member_name="m",
        address=f"{pg_server.host}:{pg_server.port}",
        database="postgres",
        credentials=backend.Credentials(pg_server.user, None),
        timeout=10,
    )
    try:
        assert conn._transport is not None
        sock = conn._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == backend.KEEPALIVE_IDLE
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == backend.KEEPALIVE_COUNT
        assert (
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == backend.USER_TIMEOUT_MS
        )
    finally:
        conn.close()
